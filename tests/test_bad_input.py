"""Every command's bad input ends in one line naming the problem, exit status 2, no traceback, nothing lost."""
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import FAST, make_image_folder
from scalavit.cli import main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')


def renamed_classes(root, names=('ankle', 'bag', 'coat')):
    """The test image folder with as many classes as the trained runs, under other names."""
    folder = make_image_folder(root)
    for split in ('train', 'val'):
        for i, name in enumerate(names):
            (folder / split / f'class{i}').rename(folder / split / name)
    return folder


def with_extra_train_class(root):
    folder = make_image_folder(root)
    shutil.copytree(folder / 'train' / 'class0', folder / 'train' / 'sandal')
    return folder


def write(path, text):
    path.write_text(text)
    return path


class _RunsCommand:
    """Unpickling this runs a shell command: what a .pth from anywhere can hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(self.marker)}',)


def code_running_pickle(folder, name='evil.pth'):
    """A checkpoint whose loading, if it unpickled arbitrary objects, would create ``folder/pwned``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({'model': {'weight': torch.zeros(1)}, 'config': {}, 'payload': _RunsCommand(folder / 'pwned')},
               folder / name)
    return folder / name


RUNS_CODE = 'that loading would have to run as code'

# (arguments given the trained runs T and a scratch folder S, what the message must say)
CASES = {
    'eval a pickle that runs code': (lambda T, S: ['eval', code_running_pickle(S)], RUNS_CODE),
    'export a pickle that runs code': (lambda T, S: ['export', code_running_pickle(S), '--width', '0.5',
                                                     '--output', S / 'out'], RUNS_CODE),
    'pick a pickle that runs code': (lambda T, S: ['pick', code_running_pickle(S), '--macs', '1e6'], RUNS_CODE),
    'serve a pickle that runs code': (lambda T, S: ['serve', code_running_pickle(S)], RUNS_CODE),
    'train --init a pickle that runs code': (lambda T, S: ['train', '--output', S / 'run', '--init',
                                                           code_running_pickle(S)], RUNS_CODE),
    'train --teacher a pickle that runs code': (
        lambda T, S: ['train', '--output', S / 'run', '--teacher', code_running_pickle(S),
                      '--model', 'scala_vit_mini_distilled_patch7_28'], RUNS_CODE),
    'train --resume a pickle that runs code': (lambda T, S: ['train', '--resume', code_running_pickle(S / 'evil',
                                                                                                      'last.pt')],
                                               RUNS_CODE),
    'train --init a corrupt safetensors file': (lambda T, S: ['train', '--output', S / 'run', '--init',
                                                              write(S / 'w.safetensors', 'not safetensors')],
                                                'is not a readable safetensors file'),
    'train off-grid eval width': (lambda T, S: ['train', '--output', S / 'run', '--eval-widths', '0.3'],
                                  '--eval-widths 0.3 is not a width of the model trained here'),
    'train zero epochs': (lambda T, S: ['train', '--output', S / 'run', '--epochs', '0'],
                          '--epochs must be at least 1, got 0'),
    'train YAML of the wrong type': (lambda T, S: ['train', '--config', write(S / 'c.yaml', 'batch_size: four')],
                                     "c.yaml: batch_size must be a whole number, got 'four'"),
    'train invalid YAML': (lambda T, S: ['train', '--config', write(S / 'c.yaml', 'lr: [1, 2\nepochs: 3')],
                           'c.yaml is not valid YAML at line'),
    'train unknown model': (lambda T, S: ['train', '--model', 'scala_vit_huge'],
                            'not a known model; slimmable models: scala_deit_base_distilled_patch16_224'),
    'train plain timm model': (lambda T, S: ['train', '--model', 'deit_tiny_patch16_224'],
                               'not a slimmable one; its slimmable equivalent is scala_deit_tiny_patch16_224'),
    'train on CUDA without CUDA': (lambda T, S: ['train', '--device', 'cuda'], 'no CUDA device is available here'),
    'train CUDA graphs on the CPU': (lambda T, S: ['train', '--compile', '--compile-mode', 'reduce-overhead',
                                                   '--device', 'cpu'],
                                     '--compile-mode reduce-overhead replays CUDA graphs and needs a CUDA device'),
    'train unknown compile mode': (lambda T, S: ['train', '--compile', '--compile-mode', 'max-speed'],
                                   "--compile-mode must be one of default, reduce-overhead, got 'max-speed'"),
    'train regional without compile': (lambda T, S: ['train', '--compile-regional'],
                                       'say how --compile compiles; add --compile'),
    'train output under a file': (lambda T, S: ['train', '--output', write(S / 'notes.txt', 'x') / 'run'],
                                  'notes.txt/run: cannot create'),
    'train output is a file': (lambda T, S: ['train', '--output', write(S / 'notes.txt', 'x')],
                               'notes.txt is an existing file, not a folder'),
    'train teacher of other classes': (
        lambda T, S: ['train', '--data', renamed_classes(S / 'other'), '--output', S / 'run', *FAST, '--teacher',
                      T / 'st_full' / 'last.pt', '--model', 'scala_vit_mini_distilled_patch7_28'],
        "has other classes than the training data: 0: 'ankle' vs 'class0'"),
    'train classes that differ between splits': (
        lambda T, S: ['train', '--data', with_extra_train_class(S / 'data'), '--output', S / 'run'],
        "must hold the same class folders: 'sandal' only in"),
    'export to a path named like a file': (
        lambda T, S: ['export', T / 'scala', '--width', '0.5', '--format', 'onnx', '--output', S / 'w50.onnx'],
        'names a file, but an export is a folder holding model.onnx, config.json and export.json; give a folder '
        'such as --output'),
    'eval a cascade calibrated on other classes': (
        lambda T, S: ['eval', T / 'scala', '--output', S / 'report', '--latency-repeats', '1', '--cascade', '0.25,1.0',
                      '--calibration', renamed_classes(S / 'other') / 'val'],
        "has other classes than --data"),
    'export into its run': (lambda T, S: ['export', T / 'scala', '--width', '0.5', '--output', T / 'scala', '--force'],
                            'is or contains the checkpoint being exported'),
    'export output is a file': (lambda T, S: ['export', T / 'scala', '--width', '0.5', '--output',
                                              write(S / 'w.txt', 'x')], 'w.txt is an existing file'),
    'export off-grid width': (lambda T, S: ['export', T / 'scala', '--width', '0.3', '--output', S / 'out'],
                              "width 0.3 is not on this model's grid"),
    'eval data of other classes': (lambda T, S: ['eval', T / 'scala', '--data', renamed_classes(S / 'other'),
                                                 '--output', S / 'report'],
                                   "has other classes than " ),
    'eval on CUDA without CUDA': (lambda T, S: ['eval', T / 'scala', '--device', 'cuda'], 'no CUDA device'),
    'eval output is a file': (lambda T, S: ['eval', T / 'scala', '--output', write(S / 'r.txt', 'x')],
                              'r.txt is an existing file'),
    'pick on CUDA without CUDA': (lambda T, S: ['pick', T / 'scala', '--macs', '1e6', '--device', 'cuda:0'],
                                  'no CUDA device'),
    'widths of an unknown model': (lambda T, S: ['widths', '--model', 'vit_nope'], 'not a known model'),
    'serve no replicas': (lambda T, S: ['serve', T / 'scala', '--replicas', '0'], 'replicas must be at least 1'),
    'serve no pixels': (lambda T, S: ['serve', T / 'scala', '--max-pixels', '0'], '--max-pixels must be positive'),
    'serve no keep-alive': (lambda T, S: ['serve', T / 'scala', '--keep-alive-timeout', '0'],
                            '--keep-alive-timeout must be positive'),
    'serve an SLO of an hour': (lambda T, S: ['serve', T / 'scala', '--slo-ms', '3600000'],
                                '--slo-ms must be at most 60000'),
    'serve a model name with a slash': (lambda T, S: ['serve', T / 'scala', '--served-model-name', 'a/b'],
                                        "--served-model-name 'a/b': use letters, digits"),
    'serve a cascade to a fixed width': (lambda T, S: ['serve', T / 'scala', '--cascade', '0.25,1', '--policy',
                                                       'fixed:1'], '--cascade is one more choice for the slackfit'),
    'serve a cascade on Ray': (lambda T, S: ['serve', T / 'scala', '--cascade', '0.25,1', '--replicas', '2'],
                               '--cascade is served by the plain server for now'),
    'serve a cascade off the grid': (lambda T, S: ['serve', T / 'scala', '--cascade', '0.3,1'],
                                     'is not on this model'),
}


def one_line_error(stderr: str, command: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in stderr, stderr
    assert lines[0].startswith(f'scalavit {command}: error: '), lines[0]
    return lines[0]


@pytest.mark.parametrize('case', CASES)
def test_bad_input_is_one_line_naming_the_problem(case, trained, tmp_path, capsys):
    make_args, message = CASES[case]
    if 'CUDA' in case and torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    before = {p: p.stat().st_mtime_ns for p in trained.rglob('*') if p.is_file()}
    argv = list(map(str, make_args(trained, tmp_path)))
    assert main(argv) == 2
    assert message in one_line_error(capsys.readouterr().err, argv[0])
    assert {p: p.stat().st_mtime_ns for p in trained.rglob('*') if p.is_file()} == before
    assert not (tmp_path / 'run' / 'last.pt').exists()
    assert not list(tmp_path.rglob('pwned')), 'a checkpoint ran code when loaded'


def test_trust_checkpoint_is_what_lets_a_pickle_run(tmp_path, capsys):
    """The refusal above comes from loading with weights_only, not from the file being unusable: trusted, it runs."""
    evil = code_running_pickle(tmp_path)
    assert main(['eval', str(evil), '--trust-checkpoint']) == 2
    assert (tmp_path / 'pwned').exists()
    assert RUNS_CODE not in one_line_error(capsys.readouterr().err, 'eval')


def test_resuming_over_another_run_is_refused_and_loses_nothing(trained, tmp_path, capsys):
    a, b = shutil.copytree(trained / 'scala', tmp_path / 'a'), shutil.copytree(trained / 'st_half', tmp_path / 'b')
    before = {p.name: p.read_bytes() for p in b.iterdir()}
    assert main(['train', '--resume', str(a), '--output', str(b), '--epochs', '3']) == 2
    assert 'is not the run being resumed' in one_line_error(capsys.readouterr().err, 'train')
    assert {p.name: p.read_bytes() for p in b.iterdir()} == before


@NO_CUDA
def test_the_installed_command_answers_bad_input_in_one_line(trained, tmp_path):
    """The same through the real `python -m scalavit` process (a few cases, run side by side)."""
    cases = ['train plain timm model', 'export into its run', 'eval on CUDA without CUDA', 'train invalid YAML']
    processes = {}
    for case in cases:
        argv = list(map(str, CASES[case][0](trained, tmp_path)))
        processes[case] = subprocess.Popen([sys.executable, '-m', 'scalavit', *argv], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
    for case, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, (case, stderr)
        assert CASES[case][1] in one_line_error(stderr, case.split()[0]), case
