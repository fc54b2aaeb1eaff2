"""Confidence cascades: each image answered at the first width sure enough of it, as running every width apart says."""
import json
import math
import shutil

import pytest
import torch

from conftest import make_image_folder, tiny_model
from scalavit.cascade import ESCALATE_ALL, Cascade, StageOutputs, calibrate, collect, sweep
from scalavit.cli import main
from scalavit.data import build_calibration_dataset


def same(image):
    return image


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


def test_stage_outputs_score_any_thresholds_as_the_cascade_answers(model, images):
    """The sweep's shortcut (every width run once, thresholds applied after) gives the cascade's own answers."""
    targets = model(images, 1.0).argmax(-1)  # the full width's classes as labels: some right, some wrong below
    stages = collect(model, [(images, targets)], [0.25, 0.5, 1.0], 'margin')
    macs = {0.25: 10, 0.5: 30, 1.0: 100}
    for thresholds in ([0.0, 0.0], [0.3, 0.3], [0.2, 0.6], [1.01, 1.01]):
        logits, answered = Cascade(model, [0.25, 0.5, 1.0], thresholds, 'margin')(images)
        score = stages.score(thresholds, macs)
        assert score['top1'] == round(100 * float((logits.argmax(-1) == targets).double().mean()), 2)
        assert score['mean_macs'] == round(float(Cascade(model, [0.25, 0.5, 1.0], thresholds).macs(
            answered, macs).mean()))
        assert score['answered'] == [round(float((answered == w).double().mean()), 4) for w in (0.25, 0.5, 1.0)]
    assert stages.score([1.01, 1.01], macs)['top1'] == 100.0  # everything at the last width: its own classes


def test_calibration_takes_the_cheapest_thresholds_within_the_budget():
    # 4 images, two widths: the small one is right on the two it is sure of (0.95, 0.9) and wrong on the others
    stages = StageOutputs([0.25, 1.0], torch.tensor([[0.95, 0.9, 0.6, 0.3], [1.0, 1.0, 1.0, 1.0]]),
                          torch.tensor([[True, True, False, False], [True, True, True, True]]))
    chosen = calibrate(stages, {0.25: 10, 1.0: 100}, within_points=0.0)
    # the sweep tries the first width's confidences: 0.6 or below answers a wrong image small; 0.9 keeps 100% at
    # 10 + 100 * 2/4 = 60 MACs (0.95 would escalate one more image)
    assert sweep(stages, points=4) == pytest.approx([0.0, 0.3, 0.6, 0.9, 0.95, ESCALATE_ALL])
    assert chosen['top1'] == 100.0 and chosen['mean_macs'] == 60 and chosen['thresholds'] == pytest.approx([0.9])
    loose = calibrate(stages, {0.25: 10, 1.0: 100}, within_points=50.0)
    assert loose['thresholds'] == [0.0] and loose['mean_macs'] == 10 and loose['top1'] == 50.0


def test_calibration_images_never_come_from_the_evaluation_split(tmp_path):
    root = make_image_folder(tmp_path / 'data')
    calibration = build_calibration_dataset(str(root), same, 1, count=10)
    paths = [calibration.dataset.samples[i][0] for i in calibration.indices]
    assert len(paths) == 10 and all(f'{root}/train/' in path for path in paths)
    assert len({*paths}) == 10  # spread over the split, not one image repeated


def test_eval_cascade_chooses_on_calibration_and_reproduces_the_static_widths_at_the_ends(trained, tmp_path, capsys):
    run = tmp_path / 'run'
    shutil.copytree(trained / 'scala', run)
    assert main(['eval', str(run), '--cascade', '0.25,1.0', '--latency-repeats', '2']) == 0
    out = capsys.readouterr().out
    assert 'chosen on calibration' in out and 'cascade.json, accuracy_vs_macs_cascade.png' in out
    assert 'calibration: 24 images' in out  # the training split of the test data, all 24 of it
    result = json.loads((run / 'cascade.json').read_text())
    static = {row['width']: row for row in json.loads((run / 'results.json').read_text())['rows']}
    sweep = result['evaluation']['sweep']
    assert sweep[0]['top1'] == static[0.25]['top1'] and sweep[0]['mean_macs'] == static[0.25]['macs']
    assert sweep[-1]['top1'] == static[1.0]['top1']
    assert sweep[-1]['mean_macs'] == static[0.25]['macs'] + static[1.0]['macs']
    assert result['calibration']['images'] == 24 and result['evaluation']['images'] == 12
    assert (run / 'accuracy_vs_macs_cascade.png').read_bytes()[:4] == b'\x89PNG'
