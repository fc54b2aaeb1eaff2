import contextlib
import json

import pytest
import torch
from timm.data.mixup import mixup_target

from conftest import tiny_model
from scalavit.gradstats import GradientStats, weight_group
from scalavit.losses import full_network_loss, sub_network_loss
from scalavit.train import SubNetworkPasses


def own_gradient(model, images, target, width, teacher=None):
    model.zero_grad(set_to_none=True)
    output = model(images, width)
    loss = full_network_loss(output, target) if teacher is None else sub_network_loss(output, teacher, target)
    loss.backward()
    return output.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                             for p in model.parameters()]


def test_each_pass_gets_its_own_gradient_and_pairs_compare_the_weights_both_use(tmp_path):
    model = tiny_model().train()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = mixup_target(torch.tensor([0, 1, 2, 3]), 7, smoothing=0.1)
    full, full_grads = own_gradient(model, images, target, 1.0)
    _, small_grads = own_gradient(model, images, target, 0.25, teacher=full)

    stats = GradientStats(model, tmp_path / 'grad_stats.jsonl')
    model.zero_grad(set_to_none=True)
    run = stats.recording(SubNetworkPasses(model, images, contextlib.nullcontext,
                                           torch.amp.GradScaler('cuda', enabled=False)), ['full', 'smallest'])
    teacher, _ = run(1.0, lambda out: full_network_loss(out, target), False)
    run(0.25, lambda out: sub_network_loss(out, teacher, target), True)
    row = stats.record(step=7, epoch=2)

    norm = lambda grads: float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads)))  # noqa: E731
    assert row['step'] == 7 and row['widths'] == {'full': 1.0, 'smallest': 0.25}
    for parameter, a, b in zip(model.parameters(), full_grads, small_grads):  # the step's gradient is unchanged
        torch.testing.assert_close(parameter.grad, a + b, rtol=0, atol=0)
    assert abs(row['norm']['full'] - norm(full_grads)) < 1e-5 * norm(full_grads)
    assert abs(row['norm']['smallest'] - norm(small_grads)) < 1e-5 * norm(small_grads)
    # Isolated Activation: the smallest width's weights are the last channels, so it shares only part of the full
    # width's; the cosine is taken where both gradients live.
    both = [(a != 0) & (b != 0) for a, b in zip(full_grads, small_grads)]
    a = torch.cat([g[m].double() for g, m in zip(full_grads, both)])
    b = torch.cat([g[m].double() for g, m in zip(small_grads, both)])
    pair = row['pairs']['full|smallest']['all']
    assert abs(pair['cosine'] - float(a @ b / (a.norm() * b.norm()))) < 1e-9
    assert abs(pair['norm_b'] - float(b.norm())) < 1e-6 * float(b.norm())
    assert pair['norm_b'] <= row['norm']['smallest'] * (1 + 1e-9)  # a part of its whole gradient
    groups = row['pairs']['full|smallest']['groups']
    assert list(groups) == ['embed', 'block0', 'block1', 'head']
    # the groups split the shared weights: their parts make up the whole pair's norms
    for side in ('norm_a', 'norm_b'):
        assert sum(g[side] ** 2 for g in groups.values()) == pytest.approx(pair[side] ** 2, rel=1e-6)


def test_rows_are_written_whole_and_a_resumed_run_keeps_those_up_to_its_checkpoint(tmp_path):
    model = tiny_model().train()
    path = tmp_path / 'grad_stats.jsonl'
    stats = GradientStats(model, path)
    stats.rows = [dict(step=s, epoch=0) for s in (1, 11, 21)]
    stats.save()
    assert [json.loads(line)['step'] for line in path.read_text().splitlines()] == [1, 11, 21]
    resumed = GradientStats(model, path)
    resumed.resume(step=15)
    assert [row['step'] for row in resumed.rows] == [1, 11]


def test_parameters_are_grouped_by_where_they_sit():
    model = tiny_model()
    groups = {weight_group(name) for name, _ in model.named_parameters()}
    assert groups == {'embed', 'block0', 'block1', 'head'}
    assert weight_group('blocks.1.mlp.fc1.weight') == 'block1' and weight_group('head.bias') == 'head'
    assert weight_group('pos_embed') == 'embed' and weight_group('norm.weight') == 'head'
