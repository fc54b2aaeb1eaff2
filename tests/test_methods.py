import contextlib

import pytest
import torch
from timm.data.mixup import mixup_target

from conftest import tiny_model
from scalavit.losses import full_network_loss, kl_divergence, sub_network_loss, transfer_head
from scalavit.methods import Scala, Separate, USNet
from scalavit.train import SubNetworkPasses
from scalavit.widths import WidthGrid


def accumulated_step(method, model, images, target, epoch=5, seed=0):
    model.zero_grad(set_to_none=True)
    calls = []
    run = SubNetworkPasses(model, images, contextlib.nullcontext, torch.amp.GradScaler('cuda', enabled=False))

    def recording_run(width, loss_fn, last):
        calls.append((width, last))
        return run(width, loss_fn, last)

    losses = method.step(recording_run, target, epoch, torch.Generator().manual_seed(seed))
    return {n: p.grad.clone() for n, p in model.named_parameters()}, calls, losses


def gradient_of_summed_losses(model, images, widths, loss_fns):
    """One backward through the sum of the sub-networks' losses, teachers detached."""
    model.zero_grad(set_to_none=True)
    outputs, total = [], 0
    for width, loss_fn in zip(widths, loss_fns):
        outputs.append(model(images, width))
        total = total + loss_fn(outputs, outputs[-1])
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def detached(logits):
    return tuple(x.detach() for x in logits) if isinstance(logits, tuple) else logits.detach()


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(6, 3, 32, 32, generator=generator)
    target = mixup_target(torch.randint(0, 7, (6,), generator=generator), 7, smoothing=0.1)
    return images, target


@pytest.mark.parametrize('distilled', [False, True])
@pytest.mark.parametrize('transfer', ['progressive', 'full'])
def test_scala_step_accumulates_the_gradient_of_the_sum_of_its_four_losses(batch, distilled, transfer):
    images, target = batch
    model = tiny_model(distilled=distilled).train()
    method = Scala(model.grid, transfer=transfer, full_warmup_epochs=1)
    grads, calls, losses = accumulated_step(method, model, images, target)

    upper, lower = model.grid.sample(torch.Generator().manual_seed(0))
    assert calls == [(1.0, False), (upper, False), (lower, False), (0.25, True)]
    assert (losses['width_upper'], losses['width_lower'], losses['width_smallest']) == (upper, lower, 0.25)
    teacher_index = (lambda i: i - 1) if transfer == 'progressive' else (lambda i: 0)
    loss_fns = [lambda outs, out: full_network_loss(out, target)] + [
        (lambda i: lambda outs, out: sub_network_loss(out, detached(outs[teacher_index(i)]), target))(i)
        for i in (1, 2, 3)]
    expected = gradient_of_summed_losses(model, images, [1.0, upper, lower, 0.25], loss_fns)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_scala_warmup_trains_only_the_full_width_at_half_the_learning_rate(batch):
    images, target = batch
    model = tiny_model().train()
    method = Scala(model.grid, full_warmup_epochs=2)
    _, calls, losses = accumulated_step(method, model, images, target, epoch=1)
    assert calls == [(1.0, True)] and set(losses) == {'loss_full'}
    assert method.lr_scale(1) == 0.5 and method.lr_scale(2) == 1.0


def test_scala_without_noise_calibration_uses_only_the_kl(batch):
    images, target = batch
    model = tiny_model().train()
    _, _, with_nc = accumulated_step(Scala(model.grid, full_warmup_epochs=0), model, images, target)
    _, _, without = accumulated_step(Scala(model.grid, noise_calibration=False, full_warmup_epochs=0), model, images,
                                     target)
    assert with_nc['loss_full'] == without['loss_full']
    assert float(without['loss_smallest']) < float(with_nc['loss_smallest'])


def test_usnet_is_the_sandwich_rule_with_in_place_distillation(batch):
    images, target = batch
    model = tiny_model(isolated_activation=False).train()
    grads, calls, _ = accumulated_step(USNet(model.grid), model, images, target)
    assert [width for width, _ in calls][0::3] == [1.0, 0.25] and calls[-1][1] is True
    widths = [width for width, _ in calls]
    loss_fns = [lambda outs, out: full_network_loss(out, target)] + [
        lambda outs, out: kl_divergence(transfer_head(out), transfer_head(outs[0]).detach())] * 3
    expected = gradient_of_summed_losses(model, images, widths, loss_fns)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_separate_trains_its_one_width_with_deits_loss(batch):
    images, target = batch
    model = tiny_model(smallest=1.0, largest=1.0).train()
    grads, calls, _ = accumulated_step(Separate(), model, images, target)
    assert calls == [(None, True)]
    expected = gradient_of_summed_losses(model, images, [None], [lambda outs, out: full_network_loss(out, target)])
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('method_class', [Scala, USNet])
def test_without_always_smallest_the_narrowest_width_is_drawn_from_below_the_largest(batch, method_class):
    images, target = batch
    model = tiny_model(isolated_activation=method_class is Scala).train()
    options = dict(full_warmup_epochs=0) if method_class is Scala else {}
    narrowest = set()
    for seed in range(12):
        grads, calls, _ = accumulated_step(method_class(model.grid, always_smallest=False, **options), model, images,
                                           target, seed=seed)
        widths = [width for width, _ in calls]
        assert widths[0] == 1.0 and widths[1:] == sorted(widths[1:], reverse=True) and widths[-1] < 1.0
        narrowest.add(widths[-1])
    assert len(narrowest) > 1 and 0.25 in narrowest  # the smallest is drawn sometimes, not always
    if method_class is Scala:  # the last step's gradient: the chain runs from wide to narrow
        loss_fns = [lambda outs, out: full_network_loss(out, target)] + [
            (lambda i: lambda outs, out: sub_network_loss(out, detached(outs[i - 1]), target))(i) for i in (1, 2, 3)]
        expected = gradient_of_summed_losses(model, images, widths, loss_fns)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_bad_switches_are_refused():
    with pytest.raises(ValueError, match="transfer must be"):
        Scala(WidthGrid(), transfer='chain')
    with pytest.raises(ValueError, match='no intermediate width'):
        Scala(WidthGrid(granularity=0.75))
