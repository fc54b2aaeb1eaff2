"""Confidence cascades: each image answered at the first width sure enough of it, as running every width apart says."""
import math

import pytest
import torch

from conftest import tiny_model
from scalavit.cascade import Cascade


@pytest.fixture(scope='module')
def model():
    return tiny_model(smallest=0.25, largest=1.0, granularity=0.25)


@pytest.fixture(scope='module')
def images():
    return torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def reference(model, images, widths, thresholds, confidence):
    """Every width on every image, then the cascade's rule applied image by image."""
    with torch.no_grad():
        outputs = [model(images, w) for w in widths]
    logits, answered = [], []
    for i in range(len(images)):
        for step, (width, output) in enumerate(zip(widths, outputs)):
            p = output[i].softmax(-1).double()
            top = p.sort(descending=True).values
            sure = {'probability': top[0], 'margin': top[0] - top[1],
                    'entropy': 1 + (p * p.log()).sum() / math.log(len(p))}[confidence]
            if step == len(widths) - 1 or sure >= thresholds[step]:
                logits.append(output[i])
                answered.append(width)
                break
    return torch.stack(logits), torch.tensor(answered)


@pytest.mark.parametrize('confidence', ['probability', 'margin', 'entropy'])
def test_each_image_is_answered_where_the_rule_says(model, images, confidence):
    widths = [0.25, 0.5, 1.0]
    with torch.no_grad():
        first = model(images, 0.25).softmax(-1).amax(-1)
    thresholds = [float(first.median()), 0.5]  # about half go on after the first stage
    if confidence != 'probability':
        thresholds = [0.3, 0.2]
    logits, answered = Cascade(model, widths, thresholds, confidence)(images)
    expected_logits, expected_widths = reference(model, images, widths, thresholds, confidence)
    assert torch.equal(answered, expected_widths.float())
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
    assert len(set(answered.tolist())) >= 2  # the case under test: images answered at different widths


def test_a_threshold_of_zero_answers_all_at_the_first_width_and_above_one_all_at_the_last(model, images):
    with torch.no_grad():
        small, full = model(images, 0.25), model(images, 1.0)
    logits, answered = Cascade(model, [0.25, 1.0], [0.0])(images)
    assert torch.equal(logits, small) and set(answered.tolist()) == {0.25}
    logits, answered = Cascade(model, [0.25, 1.0], [1.01])(images)
    torch.testing.assert_close(logits, full)
    assert set(answered.tolist()) == {1.0}


@pytest.mark.parametrize('widths, thresholds, message', [
    ([0.3, 1.0], [0.5], "width 0.3 is not on this model's grid"),
    ([1.0, 0.25], [0.5], 'increasing order'),
    ([0.25], [], 'two or more widths'),
    ([0.25, 0.5, 1.0], [0.5], 'needs 2 threshold'),
    ([0.25, 1.0], [float('nan')], 'finite numbers'),
])
def test_a_cascade_that_cannot_be_is_refused_by_name(model, widths, thresholds, message):
    with pytest.raises(ValueError, match=message):
        Cascade(model, widths, thresholds)


def test_an_unknown_confidence_is_refused(model):
    with pytest.raises(ValueError, match='confidence must be one of probability, margin, entropy'):
        Cascade(model, [0.25, 1.0], [0.5], confidence='energy')


def test_an_image_costs_the_macs_of_every_stage_it_ran(model, images):
    from scalavit.evaluate import count_macs
    cascade = Cascade(model, [0.25, 0.5, 1.0], [0.3, 0.3], confidence='margin')
    _, answered = cascade(images)
    macs = {w: count_macs(model, w, (3, 32, 32)) for w in cascade.widths}
    spent = cascade.macs(answered, macs)
    expected = {0.25: macs[0.25], 0.5: macs[0.25] + macs[0.5], 1.0: macs[0.25] + macs[0.5] + macs[1.0]}
    assert spent.tolist() == [expected[w] for w in answered.tolist()]
    assert macs[0.25] < macs[0.5] < macs[1.0]
