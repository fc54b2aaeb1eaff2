import json

import pytest
import torch
import timm

from scalavit.cli import main
from scalavit.evaluate import count_macs, count_params
from conftest import make_image_folder, read_log


def analytic_macs(d, h, depth, tokens, patch_pixels, classes):
    """Patch embedding, then per block qkv, attention scores, attention-weighted values, projection, MLP; the head."""
    patches = tokens - 1
    per_block = tokens * (3 * d * d) + 2 * tokens * tokens * d + tokens * d * d + 2 * tokens * d * h
    return patches * d * patch_pixels + depth * per_block + d * classes


@pytest.mark.parametrize('width, expected_giga', [(1.0, 4.6), (0.25, 0.37)])
def test_deit_small_macs_agree_with_the_analytic_count(width, expected_giga):
    model = timm.create_model('scala_deit_small_patch16_224')
    macs = count_macs(model, width, (3, 224, 224))
    d, h = int(width * 384), int(width * 1536)
    assert macs == pytest.approx(analytic_macs(d, h, 12, 197, 3 * 16 * 16, 1000), rel=1e-6)
    assert macs / 1e9 == pytest.approx(expected_giga, rel=0.03)
    if width == 1.0:
        assert count_params(model, width) == sum(p.numel() for p in model.parameters()) == 22_050_664


def test_eval_reports_every_width_and_agrees_with_the_training_log(trained, capsys):
    run = trained / 'scala'
    assert main(['eval', str(run / 'last.pt'), '--latency-repeats', '3']) == 0
    report = json.loads((run / 'results.json').read_text())
    rows = report['rows']
    assert [r['width'] for r in rows] == [0.25 + i / 16 for i in range(13)]
    final = read_log(run)[-1]
    for row in rows:
        assert row['top1'] == pytest.approx(final[f"top1@{row['width']:g}"], abs=1e-6)
        assert row['top1'] <= row['top5']  # top-5 contains top-1: swapped columns would show here
    assert [r['macs'] for r in rows] == sorted(r['macs'] for r in rows)
    assert report['meta']['threads'] >= 1 and report['meta']['torch'].startswith('2.')
    assert (run / 'results.csv').read_text().splitlines()[0].startswith('width,top1,top5,params,macs')
    for png in ('accuracy_vs_macs.png', 'accuracy_vs_latency.png'):
        assert (run / png).read_bytes()[:4] == b'\x89PNG'
    assert 'MACs' in capsys.readouterr().out


def test_a_separately_trained_family_is_one_set_and_compares_with_scala(trained, tmp_path, capsys):
    family = tmp_path / 'separate'
    assert main(['eval', str(trained / 'st_full'), str(trained / 'st_half'), '--output', str(family),
                 '--latency-repeats', '3']) == 0
    rows = json.loads((family / 'results.json').read_text())['rows']
    assert [r['width'] for r in rows] == [0.5, 1.0]
    assert rows[0]['params'] < rows[1]['params']
    assert main(['eval', str(trained / 'scala'), '--latency-repeats', '3']) == 0
    capsys.readouterr()
    assert main(['compare', str(trained / 'scala'), str(family), '--output', str(tmp_path / 'cmp')]) == 0
    out = capsys.readouterr().out
    assert out.count('separate ') == 2 and out.count('scala ') == 13
    assert (tmp_path / 'cmp' / 'accuracy_vs_macs.png').is_file()


def test_eval_and_compare_refuse_bad_input(trained, tmp_path, capsys):
    assert main(['eval', str(trained / 'st_half'), str(trained / 'st_half'), '--output', str(tmp_path / 'x')]) == 2
    assert 'repeat' in capsys.readouterr().err
    assert main(['compare', str(tmp_path / 'nothing')]) == 2
    assert 'evaluate the run first' in capsys.readouterr().err
    folder = make_image_folder(tmp_path / 'four', classes=4)
    assert main(['eval', str(trained / 'scala'), '--data', str(folder)]) == 2
    assert 'has 4 classes, the checkpoint predicts 3' in capsys.readouterr().err


def test_eval_takes_a_checkpoint_in_the_authors_format(trained, tmp_path, capsys):
    state = torch.load(trained / 'scala' / 'last.pt', weights_only=True)['model']
    torch.save({'model': state}, tmp_path / 'authors.pth')
    folder = trained / 'data'
    assert main(['eval', str(tmp_path / 'authors.pth'), '--data', str(folder), '--latency-repeats', '2']) == 2
    assert 'name it with --model' in capsys.readouterr().err
    assert main(['eval', str(tmp_path / 'authors.pth'), '--data', str(folder), '--model', 'scala_vit_mini_patch7_28',
                 '--latency-repeats', '2']) == 0
    rows = json.loads((tmp_path / 'results.json').read_text())['rows']
    # the same weights as the run it was made from, with LayerNorm eps 1e-5 instead of 1e-6: at most one of the 12
    # images changes its class at any width
    final = read_log(trained / 'scala')[-1]
    assert len(rows) == 13 and all(abs(r['top1'] - final[f"top1@{r['width']:g}"]) <= 100 / 12 + 0.01 for r in rows)


def test_eval_reports_the_images_it_scored_and_those_it_skipped(trained, tmp_path, capsys):
    folder = make_image_folder(tmp_path / 'data')  # 3 classes of 4 validation images
    broken = folder / 'val' / 'class1' / '0.png'
    broken.write_bytes(broken.read_bytes()[:60])  # the header survives, the pixel data does not
    assert main(['eval', str(trained / 'scala'), '--data', str(folder), '--output', str(tmp_path / 'report'),
                 '--latency-repeats', '2']) == 0
    assert '11 images scored (1 unreadable, skipped)' in capsys.readouterr().out
    meta = json.loads((tmp_path / 'report' / 'results.json').read_text())['meta']
    assert (meta['images'], meta['skipped_images']) == (11, 1)
