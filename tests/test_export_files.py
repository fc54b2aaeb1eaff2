import json
import os
import stat
import subprocess
import sys

import pytest
import timm
import torch

from conftest import randomize
from scalavit.cli import main
from scalavit.export import export_width

# Loads every exported folder with timm alone (scalavit is never imported) and saves its logits.
LOAD_WITH_TIMM_ALONE = """
import sys, timm, torch
inputs = torch.load(sys.argv[1])
for folder in sys.argv[2:]:
    model = timm.create_model('local-dir:' + folder, pretrained=True).eval()
    with torch.no_grad():
        torch.save(model(inputs), folder + '/logits.pt')
assert not any(name.startswith('scalavit') for name in sys.modules)
"""


@pytest.mark.parametrize('name, input_size', [('scala_deit_small_patch16_224', (3, 224, 224)),
                                              ('scala_vit_mini_patch7_28', (1, 28, 28))])
def test_every_width_exports_to_a_timm_folder_that_timm_alone_rebuilds_exactly(tmp_path, name, input_size):
    model = randomize(timm.create_model(name, **({'depth': 2} if 'deit' in name else {}))).eval()
    inputs = torch.randn(4, *input_size)
    torch.save(inputs, tmp_path / 'inputs.pt')
    folders = []
    for width in model.widths:
        folder = tmp_path / f'w{width}'
        check = export_width(model, width, folder, inputs=inputs)
        assert check['max_abs_logit_difference'] <= 1e-5
        config = json.loads((folder / 'config.json').read_text())
        assert config['architecture'].startswith('deit_') and config['model_args']['embed_dim'] == int(
            width * model.embed_dim)
        folders.append(folder)
    subprocess.run([sys.executable, '-c', LOAD_WITH_TIMM_ALONE, str(tmp_path / 'inputs.pt'), *map(str, folders)],
                   check=True, timeout=600)
    with torch.no_grad():
        for width, folder in zip(model.widths, folders):
            difference = (torch.load(folder / 'logits.pt') - model(inputs, width)).abs().max()
            assert difference <= 1e-5, (width, difference)


@pytest.mark.parametrize('fmt, file', [('onnx', 'model.onnx'), ('pt2', 'model.pt2'), ('torchscript', 'model.pt')])
def test_onnx_pt2_and_torchscript_exports_match(tmp_path, fmt, file):
    model = randomize(timm.create_model('scala_vit_mini_distilled_patch7_28')).eval()
    for width in (0.25, 0.625, 1.0):
        check = export_width(model, width, tmp_path / f'{fmt}{width}', fmt)
        assert (tmp_path / f'{fmt}{width}' / file).is_file()
        assert check['max_abs_logit_difference'] <= 1e-4 and check['top1_agreement'] == 1.0


def test_a_model_trained_with_eps_1e5_exports_with_its_measured_difference(tmp_path):
    model = randomize(timm.create_model('scala_vit_mini_patch7_28', norm_eps=1e-5)).eval()
    check = export_width(model, 0.5, tmp_path / 'out')
    assert 0 < check['max_abs_logit_difference'] < 1e-2 and check['top1_agreement'] > 0.9
    assert json.loads((tmp_path / 'out' / 'export.json').read_text())['norm_eps'] == 1e-5


def test_force_replaces_an_earlier_export_and_nothing_else(tmp_path):
    model = randomize(timm.create_model('scala_vit_mini_patch7_28')).eval()
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'mine.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='--force'):
        export_width(model, 0.5, tmp_path / 'out')
    with pytest.raises(FileExistsError, match='not an earlier export .it holds mine.txt'):
        export_width(model, 0.5, tmp_path / 'out', force=True)
    with pytest.raises(ValueError, match='not on this model'):
        export_width(model, 0.3, tmp_path / 'other', force=True)
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['mine.txt']
    export_width(model, 0.5, tmp_path / 'export')
    first = (tmp_path / 'export' / 'model.safetensors').read_bytes()
    export_width(model, 0.25, tmp_path / 'export', force=True)
    assert sorted(p.name for p in (tmp_path / 'export').iterdir()) == ['config.json', 'export.json',
                                                                        'model.safetensors']
    assert (tmp_path / 'export' / 'model.safetensors').read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ['export', 'out']  # no staging folder left behind


def test_an_export_into_its_own_run_directory_is_refused_and_loses_nothing(trained, capsys):
    run = trained / 'scala'
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    for output in (run, run.parent):
        assert main(['export', str(run), '--width', '0.5', '--output', str(output), '--force']) == 2
        assert 'is or contains the checkpoint being exported' in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_exports_are_readable_by_others_as_any_file_the_user_writes(tmp_path):
    model = randomize(timm.create_model('scala_vit_mini_patch7_28')).eval()
    old = os.umask(0o022)
    try:
        export_width(model, 0.5, tmp_path / 'out')
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / 'out').stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / 'out').iterdir()} == {0o644}


def test_an_authors_checkpoint_exports_and_evaluates_with_its_architecture_inferred(tmp_path, capsys):
    source = randomize(timm.create_model('scala_deit_tiny_distilled_patch16_224', norm_eps=1e-5, depth=12))
    torch.save({'model': source.state_dict(), 'epoch': 99}, tmp_path / 'deit_tiny_distilled_patch16_224_scala.pth')
    path = str(tmp_path / 'deit_tiny_distilled_patch16_224_scala.pth')
    assert main(['export', path, '--width', '0.25', '--output', str(tmp_path / 'out')]) == 0
    out = capsys.readouterr().out
    assert 'random inputs' in out and 'eps 1e-05' in out
    bad = dict(source.state_dict(), **{'blocks.3.mlp.fc1.weight': torch.zeros(10, 192)})
    torch.save({'model': bad}, tmp_path / 'bad.pth')
    assert main(['export', str(tmp_path / 'bad.pth'), '--width', '0.5', '--output', str(tmp_path / 'x')]) == 2
    assert 'blocks.3.mlp.fc1.weight has shape (10, 192)' in capsys.readouterr().err
    odd = {k: v for k, v in source.state_dict().items() if not k.startswith('blocks.11.')}
    torch.save(odd, tmp_path / 'odd.pth')
    assert main(['export', str(tmp_path / 'odd.pth'), '--width', '0.5', '--output', str(tmp_path / 'y')]) == 2
    assert 'name it with --model' in capsys.readouterr().err
