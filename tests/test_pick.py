import json
import shutil

import pytest

import torch

from scalavit.checkpoint import weights_digest
from scalavit.cli import main
from scalavit.pick import choose

ROWS = [dict(width=0.25, top1=80.0, macs=100, params=10, latency_ms_median=1.0),
        dict(width=0.5, top1=84.0, macs=300, params=30, latency_ms_median=2.0),
        dict(width=0.75, top1=83.0, macs=600, params=60, latency_ms_median=3.0),
        dict(width=1.0, top1=86.0, macs=900, params=90, latency_ms_median=4.0)]


def test_choose_takes_the_most_accurate_width_within_the_budget():
    assert choose(ROWS, 'macs', 700)[0]['width'] == 0.5  # 0.75 fits too but is less accurate
    assert choose(ROWS, 'latency_ms_median', 4.0)[0]['width'] == 1.0
    best, cheapest = choose(ROWS, 'params', 5)
    assert best is None and cheapest['width'] == 0.25


def test_pick_reads_the_saved_evaluation_and_explains_its_choice(trained, tmp_path, capsys):
    run = tmp_path / 'run'
    shutil.copytree(trained / 'scala', run)
    (run / 'results.json').unlink(missing_ok=True)
    assert main(['pick', str(run), '--macs', '1e12', '--repeats', '2']) == 0  # no report yet: evaluates first
    report = json.loads((run / 'results.json').read_text())
    assert len(report['rows']) == 13 and capsys.readouterr().out.count('yes') == 13
    # The accuracies it decides from are the saved ones: mark width 0.5 best there and it is chosen.
    for row in report['rows']:
        row['top1'] = 99.0 if row['width'] == 0.5 else 1.0
    (run / 'results.json').write_text(json.dumps(report))
    assert main(['pick', str(run), '--macs', '1e12']) == 0
    out = capsys.readouterr().out
    assert 'width 0.5: the most accurate width within the budget (top-1 99.00%' in out
    assert 'measured by `scalavit eval`' in out


def test_pick_measures_latency_at_another_batch_and_says_when_nothing_fits(trained, capsys):
    assert main(['pick', str(trained / 'scala'), '--latency-ms', '1e-6', '--batch', '4', '--repeats', '2']) == 2
    captured = capsys.readouterr()
    assert 'measured now' in captured.out and 'batch 4' in captured.out
    assert 'no width fits' in captured.err and 'the cheapest is width' in captured.err


def test_pick_needs_exactly_one_budget(trained):
    with pytest.raises(SystemExit):
        main(['pick', str(trained / 'scala')])


def test_a_report_of_other_weights_is_not_used(trained, tmp_path, capsys):
    """results.json measured an earlier checkpoint of the run (e.g. `eval` while it trained): pick evaluates again."""
    run = tmp_path / 'run'
    shutil.copytree(trained / 'scala', run)
    assert main(['eval', str(run), '--latency-repeats', '2']) == 0
    report = json.loads((run / 'results.json').read_text())
    for row in report['rows']:
        row['top1'] = 99.0 if row['width'] == 0.5 else 1.0
    (run / 'results.json').write_text(json.dumps(report))
    checkpoint = torch.load(run / 'last.pt', weights_only=True)
    checkpoint['model']['head.bias'] += 1.0  # the run trained on: other weights, the same shapes
    checkpoint['step'] += 1
    torch.save(checkpoint, run / 'last.pt')
    capsys.readouterr()
    assert main(['pick', str(run), '--macs', '1e12', '--repeats', '2']) == 0
    out = capsys.readouterr().out
    assert f"measured other weights than {run} (step {checkpoint['step'] - 1}); evaluating again" in out
    assert 'top-1 99.00%' not in out
    saved = json.loads((run / 'results.json').read_text())
    assert saved['meta']['step'] == checkpoint['step']
    assert saved['meta']['weights_sha256'] == weights_digest(checkpoint['model'])
    assert main(['pick', str(run), '--macs', '1e12']) == 0  # the new report is of these weights: used as it is
    assert 'evaluating again' not in capsys.readouterr().out


def test_budgets_take_the_suffixes_people_write(trained, capsys):
    assert main(['pick', str(trained / 'scala'), '--macs', '3M', '--repeats', '2']) == 0
    assert 'within the budget' in capsys.readouterr().out
    assert main(['pick', str(trained / 'scala'), '--params', '0.2K', '--repeats', '2']) == 2  # 200 parameters: none
    assert 'no width fits' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['pick', str(trained / 'scala'), '--macs', '3Q'])


def test_pick_chooses_a_cascade_when_it_beats_every_width_within_a_macs_budget(trained, tmp_path, capsys):
    run = tmp_path / 'run'
    shutil.copytree(trained / 'scala', run)
    assert main(['eval', str(run), '--cascade', '0.25,1.0', '--latency-repeats', '2']) == 0
    report, cascade = (json.loads((run / name).read_text()) for name in ('results.json', 'cascade.json'))
    macs = {row['width']: row['macs'] for row in report['rows']}
    for row in report['rows']:
        row['top1'] = 50.0
    (run / 'results.json').write_text(json.dumps(report))
    # Thresholds are chosen on the calibration images: the one most accurate there within the budget, whatever
    # the evaluation set says of the others.
    budget = macs[0.25] + macs[1.0] // 2
    steps = list(zip(cascade['calibration']['sweep'], cascade['evaluation']['sweep']))
    for i, (on_calibration, on_evaluation) in enumerate(steps):
        on_calibration['top1'] = on_evaluation['top1'] = 60.0 + i
        on_evaluation['mean_macs'] = on_calibration['mean_macs'] = macs[0.25] + i * macs[1.0] // len(steps)
    fitting = [i for i, (c, _) in enumerate(steps) if c['mean_macs'] <= budget]
    steps[fitting[-1]][1]['top1'] = 55.0  # it scores worse on evaluation: still the choice, reported as it is
    (run / 'cascade.json').write_text(json.dumps(cascade))
    capsys.readouterr()
    assert main(['pick', str(run), '--macs', str(budget)]) == 0
    out = capsys.readouterr().out
    threshold = steps[fitting[-1]][0]['thresholds'][0]
    assert f"cascade 0.25 -> 1 at threshold {threshold:.4f}: more accurate than any width" in out
    assert 'top-1 55.00%' in out
    # A budget that no threshold fits, or a cascade.json of other weights: the widths alone.
    assert main(['pick', str(run), '--macs', str(macs[0.25] - 1)]) == 2
    cascade['weights_sha256'] = 'other'
    (run / 'cascade.json').write_text(json.dumps(cascade))
    assert main(['pick', str(run), '--macs', str(budget)]) == 0
    out = capsys.readouterr().out
    assert 'cascade.json measured other weights' in out and 'width ' in out.splitlines()[-1]
