import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from conftest import FAST, make_image_folder, read_log
from scalavit.cli import main



@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / 'data')


def run_cli(*args):
    assert main(['train', *map(str, args)]) == 0


def test_training_writes_config_logs_and_checkpoints(folder, tmp_path, capsys):
    run = tmp_path / 'run'
    run_cli('--data', folder, '--output', run, *FAST)
    rows = read_log(run)
    assert [row['epoch'] for row in rows] == [1, 2]
    assert 'loss_upper' not in rows[0] and rows[1]['loss_upper'] > 0  # epoch 1 is the full-width warm-up
    widths = [k for k in rows[1] if k.startswith('top1@')]
    # 12 evaluation images: every top-1 is a whole number of them
    assert len(widths) == 13 and all(abs(rows[1][k] * 12 / 100 - round(rows[1][k] * 12 / 100)) < 1e-3 for k in widths)
    csv_lines = (run / 'log.csv').read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith('epoch,step,lr,loss_full,loss_upper')
    config = json.loads((run / 'config.json').read_text())
    assert config['data'] == str(folder) and config['batch_size'] == 8
    checkpoint = torch.load(run / 'last.pt', weights_only=True)
    assert set(checkpoint) >= {'model', 'optimizer', 'scheduler', 'scaler', 'epoch', 'random_states', 'config'}
    assert checkpoint['epoch'] == 2 and checkpoint['classes'] == ['class0', 'class1', 'class2']
    assert (run / 'best.pt').is_file() and not list(run.glob('.*.tmp'))
    assert re.search(r'width +0\.25 +\d+\.\d\d%', capsys.readouterr().out)


def test_resume_gives_the_weights_of_an_uninterrupted_run(folder, tmp_path, capsys):
    run_cli('--data', folder, '--output', tmp_path / 'straight', *FAST)
    # 24 images in batches of 8: stopping after 3 steps is stopping after the first of the two epochs.
    run_cli('--data', folder, '--output', tmp_path / 'halves', *FAST, '--max-steps', '3')
    assert torch.load(tmp_path / 'halves' / 'last.pt', weights_only=True)['epoch'] == 1
    capsys.readouterr()
    run_cli('--resume', tmp_path / 'halves', '--max-steps', '1000')
    assert f"resuming {tmp_path / 'halves'} after epoch 1 (step 3), towards 2 epochs" in capsys.readouterr().out
    straight = torch.load(tmp_path / 'straight' / 'last.pt', weights_only=True)
    resumed = torch.load(tmp_path / 'halves' / 'last.pt', weights_only=True)
    assert resumed['epoch'] == 2 and resumed['step'] == straight['step']
    for name, tensor in straight['model'].items():
        assert torch.equal(tensor, resumed['model'][name]), name
    assert [row['epoch'] for row in read_log(tmp_path / 'halves')] == [1, 2]


def test_a_checkpoint_of_an_earlier_version_resumes_without_trusting_it(folder, tmp_path):
    """Checkpoints used to keep NumPy's random state as an array: they still load as data and resume exactly."""
    run_cli('--data', folder, '--output', tmp_path / 'straight', *FAST)
    run_cli('--data', folder, '--output', tmp_path / 'halves', *FAST, '--max-steps', '3')
    checkpoint = torch.load(tmp_path / 'halves' / 'last.pt', weights_only=True)
    state = checkpoint['random_states']['numpy']
    checkpoint['random_states']['numpy'] = ('MT19937', state['keys'].numpy().astype(np.uint32), state['position'],
                                            state['has_gauss'], state['gauss'])
    torch.save(checkpoint, tmp_path / 'halves' / 'last.pt')
    run_cli('--resume', tmp_path / 'halves', '--max-steps', '1000')
    straight = torch.load(tmp_path / 'straight' / 'last.pt', weights_only=True)['model']
    resumed = torch.load(tmp_path / 'halves' / 'last.pt', weights_only=True)['model']
    assert all(torch.equal(tensor, resumed[name]) for name, tensor in straight.items())


def test_a_run_resumed_into_an_empty_directory_continues_there_with_its_logs(folder, tmp_path):
    run_cli('--data', folder, '--output', tmp_path / 'first', *FAST, '--max-steps', '3')
    original = {p.name: p.read_bytes() for p in (tmp_path / 'first').iterdir()}
    (tmp_path / 'second').mkdir()
    run_cli('--resume', tmp_path / 'first', '--output', tmp_path / 'second', '--max-steps', '1000')
    assert [row['epoch'] for row in read_log(tmp_path / 'second')] == [1, 2]
    assert json.loads((tmp_path / 'second' / 'config.json').read_text())['output'] == str(tmp_path / 'second')
    assert {p.name: p.read_bytes() for p in (tmp_path / 'first').iterdir()} == original


def test_an_existing_run_is_never_overwritten(folder, tmp_path, capsys):
    run = tmp_path / 'run'
    run_cli('--data', folder, '--output', run, *FAST[:4], '--epochs', '1', '--max-steps', '1')
    before = (run / 'last.pt').read_bytes()
    assert main(['train', '--data', str(folder), '--output', str(run), *FAST]) == 2
    assert 'already holds a run' in capsys.readouterr().err
    assert (run / 'last.pt').read_bytes() == before


@pytest.mark.parametrize('method, extra', [
    ('usnet', []),
    ('separate', ['--width', '0.5']),
    ('scala', ['--granularity', '1/4', '--transfer', 'full', '--sampling', 'uniform', '--no-noise-calibration',
               '--no-isolated-activation', '--no-always-smallest', '--grad-stats', '3']),
])
def test_every_method_and_ablation_trains(folder, tmp_path, method, extra):
    run = tmp_path / method
    run_cli('--data', folder, '--output', run, '--method', method, *FAST, '--max-steps', '4', *extra)
    checkpoint = torch.load(run / 'last.pt', weights_only=True)
    if method == 'separate':
        assert checkpoint['model']['cls_token'].shape[-1] == 48  # an ordinary model of half the width
    if method == 'usnet':  # the sandwich rule's four networks, first-channel slicing at every width
        assert {'loss_full', 'loss_random1', 'loss_random2', 'loss_smallest'} <= set(read_log(run)[-1])
        assert checkpoint['model_kwargs']['isolated_activation'] is False
    if '1/4' in extra:
        assert [k for k in read_log(run)[-1] if k.startswith('top1@')] == [
            'top1@0.25', 'top1@0.5', 'top1@0.75', 'top1@1']
        assert checkpoint['config']['always_smallest'] is False
        # steps 1 and 4 of 3 an epoch: the warm-up epoch's one network, then the four of a step
        rows = [json.loads(line) for line in (run / 'grad_stats.jsonl').read_text().splitlines()]
        assert [row['step'] for row in rows] == [1, 4] and list(rows[0]['norm']) == ['full']
        assert list(rows[1]['norm']) == ['full', 'upper', 'lower', 'smallest'] and len(rows[1]['pairs']) == 6


def test_scala_with_a_separately_trained_teacher_on_a_distilled_model(folder, tmp_path):
    run_cli('--data', folder, '--output', tmp_path / 'teacher', '--method', 'separate', *FAST, '--max-steps', '1',
            '--model', 'scala_deit_tiny_patch16_224', '--eval-widths', '1.0')
    run_cli('--data', folder, '--output', tmp_path / 'student', *FAST, '--max-steps', '4',
            '--teacher', tmp_path / 'teacher' / 'last.pt', '--model', 'scala_deit_tiny_distilled_patch16_224',
            '--eval-widths', '0.25', '1.0')
    assert read_log(tmp_path / 'student')[-1]['loss_smallest'] > 0
    # the teacher's logits reach the loss: the same run without it (same seed, same data) has other losses
    run_cli('--data', folder, '--output', tmp_path / 'alone', *FAST, '--max-steps', '4',
            '--model', 'scala_deit_tiny_distilled_patch16_224', '--eval-widths', '0.25', '1.0')
    taught, alone = read_log(tmp_path / 'student')[-1], read_log(tmp_path / 'alone')[-1]
    assert taught['loss_full'] != alone['loss_full']


def test_config_file_sets_options_and_the_command_line_wins(folder, tmp_path):
    config = tmp_path / 'config.yaml'
    # PyYAML reads 5e-4 as a string and 1/8 is a fraction: each value is converted by its option's type.
    config.write_text(f"data: {folder}\nbatch-size: 4\nepochs: 1\nworkers: 0\nseed: 7\ngranularity: 1/8\n"
                      "lr: 5e-4\neval_widths: [0.25, 1]\n")
    run_cli('--config', config, '--output', tmp_path / 'run', '--seed', '3', '--max-steps', '1')
    saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert (saved['batch_size'], saved['seed'], saved['granularity'], saved['lr']) == (4, 3, 0.125, 5e-4)
    assert saved['eval_widths'] == [0.25, 1.0]


@pytest.mark.parametrize('make_args, message', [
    (lambda f, t: ['--data', t / 'nowhere'], 'no such folder'),
    (lambda f, t: ['--data', (t / 'empty' / 'val').mkdir(parents=True) or t / 'empty'], 'no usable classes'),
    (lambda f, t: ['--data', (t / 'no_val' / 'train').mkdir(parents=True) or t / 'no_val'], 'val does not exist'),
    (lambda f, t: ['--data', f, '--amp', 'bf16', '--device', 'cpu'], 'needs a CUDA device'),
    (lambda f, t: ['--data', f, '--granularity', '0.1'], 'not a whole number of granularity steps'),
    (lambda f, t: ['--data', f, '--grad-stats', '0'], '--grad-stats must be at least 1'),
    (lambda f, t: ['--data', f, '--teacher', t / 'missing.pt'], 'does not exist'),
    (lambda f, t: ['--config', (t / 'c.yaml').write_text('epoch: 3') and t / 'c.yaml'], 'unknown option'),
])
def test_bad_input_is_a_clear_error_before_training(folder, tmp_path, capsys, make_args, message):
    assert main(['train', '--output', str(tmp_path / 'run'), *map(str, make_args(folder, tmp_path))]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'run' / 'last.pt').exists()


def test_a_file_that_is_not_an_image_is_refused_before_training(folder, tmp_path, capsys):
    (folder / 'train' / 'class1' / 'notes.png').write_text('not an image')
    assert main(['train', '--data', str(folder), '--output', str(tmp_path / 'run'), *FAST]) == 2
    assert 'notes.png' in capsys.readouterr().err


def test_an_image_that_fails_to_decode_mid_epoch_is_skipped_and_counted(folder, tmp_path):
    path = folder / 'train' / 'class0' / '0.png'
    path.write_bytes(path.read_bytes()[:60])  # the header survives, the pixel data does not
    run_cli('--data', folder, '--output', tmp_path / 'run', *FAST[:4], '--epochs', '1')
    assert read_log(tmp_path / 'run')[0]['skipped_images'] == 1


def test_a_checkpoint_of_another_architecture_is_refused_by_name(folder, tmp_path, capsys):
    run_cli('--data', folder, '--output', tmp_path / 'small', *FAST[:4], '--epochs', '1', '--max-steps', '1')
    checkpoint = torch.load(tmp_path / 'small' / 'last.pt', weights_only=True)
    checkpoint['model']['blocks.0.attn.qkv.weight'] = torch.zeros(3, 3)
    torch.save(checkpoint, tmp_path / 'bad.pt')
    assert main(['train', '--data', str(folder), '--output', str(tmp_path / 'b'), '--teacher',
                 str(tmp_path / 'bad.pt')]) == 2
    assert 'blocks.0.attn.qkv.weight has shape (3, 3)' in capsys.readouterr().err
    assert main(['train', '--resume', str(tmp_path / 'small'), '--model', 'scala_deit_tiny_patch16_224']) == 2
    assert 'trained with --model scala_vit_mini_patch7_28' in capsys.readouterr().err


@pytest.mark.slow  # torchrun
def test_two_processes_with_gloo_end_with_identical_weights(folder, tmp_path):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m', 'scalavit',
               'train', '--data', str(folder), '--output', str(tmp_path / 'ddp'), *FAST, '--batch-size', '4']
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_log(tmp_path / 'ddp')
    assert [row['ranks_in_sync'] for row in rows] == [True, True]
    assert rows[-1]['step'] == 2 * 3  # 24 images, 2 processes of 4: 3 steps an epoch
    assert result.stdout.count('checkpoints and logs in') == 1  # rank 0 alone reports


def test_two_trainings_started_at_once_into_one_folder_one_is_refused(folder, tmp_path):
    run = tmp_path / 'run'
    # long enough that the second is still starting (importing torch on a loaded machine) while the first trains:
    # with 3 epochs the first had once finished, and the second was refused for the finished run instead
    command = [sys.executable, '-m', 'scalavit', 'train', '--data', str(folder), '--output', str(run), *FAST,
               '--epochs', '8']
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = [(*process.communicate(timeout=600), process.returncode) for process in processes]
    assert sorted(code for _, _, code in results) == [0, 2], results
    refused = next(stderr for _, stderr, code in results if code == 2)
    assert 'is being written by another scalavit train (process' in refused.strip().splitlines()[-1]
    assert 'Traceback' not in refused
    assert [row['epoch'] for row in read_log(run)] == list(range(1, 9))
    assert not (run / '.scalavit.lock').exists()


def test_resuming_a_run_that_is_still_training_is_refused(folder, tmp_path, capsys):
    run = tmp_path / 'run'
    training = subprocess.Popen([sys.executable, '-m', 'scalavit', 'train', '--data', str(folder), '--output',
                                 str(run), *FAST, '--epochs', '8'], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (run / 'last.pt').exists() and training.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert training.poll() is None, 'the training ended before it could be resumed over'
    assert main(['train', '--resume', str(run), '--epochs', '10']) == 2
    assert f'(process {training.pid} on ' in capsys.readouterr().err
    training.communicate(timeout=600)
    assert training.returncode == 0
    assert [row['epoch'] for row in read_log(run)] == list(range(1, 9))


def test_a_lock_left_by_a_killed_run_is_taken_over_and_said(folder, tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / '.scalavit.lock').write_text(json.dumps(dict(pid=4_000_000, host='elsewhere', since='2026-01-01T00:00:00')))
    assert main(['train', '--data', str(folder), '--output', str(run), *FAST]) == 0
    assert 'its lock names process 4000000 on elsewhere' in capsys.readouterr().out
    assert (run / 'last.pt').is_file() and not (run / '.scalavit.lock').exists()


def test_training_says_what_it_found_and_keeps_the_data_folder_from_anywhere(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(folder.parent)
    run_cli('--data', folder.name, '--output', tmp_path / 'run', *FAST)  # a relative --data
    assert f"{folder}: 3 classes; training: 24 images; evaluation: 12 images" in capsys.readouterr().out
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['data'] == str(folder)
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    assert main(['eval', str(tmp_path / 'run'), '--latency-repeats', '2']) == 0
    assert f"{folder}: 3 classes; evaluation: 12 images" in capsys.readouterr().out


def torchrun(*args, timeout=300):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # torchrun
def test_ranks_whose_batches_lose_unreadable_images_unevenly_stay_in_step(folder, tmp_path):
    """A batch left with fewer than 2 images on one rank only: every rank skips it, or DDP's all-reduces of
    different steps would pair up (a hang, or gradients of different steps summed)."""
    corrupt = sorted((folder / 'train' / 'class0').iterdir())  # the first 8 of the 24 samples, in ImageFolder order
    for path in corrupt:
        path.write_bytes(path.read_bytes()[:60])  # the header survives, the pixel data does not
    uneven = 0
    for epoch in range(2):  # the training's own shards: 12 samples a rank, batches of 2, seed 0
        shards = []
        for rank in range(2):
            sampler = DistributedSampler(range(24), 2, rank, shuffle=True, seed=0, drop_last=True)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        for step in range(6):
            readable = [sum(i >= 8 for i in shard[2 * step:2 * step + 2]) >= 2 for shard in shards]
            uneven += readable[0] != readable[1]
    assert uneven > 0, 'the case under test does not arise with this data'
    result = torchrun('-m', 'scalavit', 'train', '--data', folder, '--output', tmp_path / 'ddp', *FAST,
                      '--batch-size', '2', timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_log(tmp_path / 'ddp')
    assert [row['ranks_in_sync'] for row in rows] == [True, True]
    assert sum(row['skipped_images'] for row in rows) == 2 * 8  # every corrupt image, once an epoch


PROBE = '''
import os, sys, torch
from scalavit.config import TrainConfig
from scalavit.train import Trainer
data, output, probe = sys.argv[1:4]
trainer = Trainer(TrainConfig(data=data, output=output, batch_size=4, workers=0, device='cpu'))
images, _, _ = next(iter(trainer.train_loader))
torch.save(images, os.path.join(probe, f'rank{trainer.ddp.rank}.pt'))
trainer.close()
trainer.ddp.close()
'''


@pytest.mark.slow  # torchrun
def test_ranks_augment_their_images_differently(folder, tmp_path):
    """Every training image the same picture: the ranks' first batches differ only by their augmentations."""
    picture = folder / 'train' / 'class0' / '0.png'
    for path in (folder / 'train').rglob('*.png'):
        if path != picture:
            shutil.copy(picture, path)
    (tmp_path / 'probe').mkdir()
    (tmp_path / 'probe.py').write_text(PROBE)
    result = torchrun(tmp_path / 'probe.py', folder, tmp_path / 'run', tmp_path / 'probe')
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (torch.load(tmp_path / 'probe' / f'rank{rank}.pt', weights_only=True) for rank in (0, 1))
    assert first.shape == second.shape == (4, 1, 28, 28)
    assert not any(torch.equal(a, b) for a in first for b in second)
