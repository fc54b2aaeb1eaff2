"""Training killed with SIGKILL at many points (mid-step, mid-save, between a save and its log) always resumes, and
ends bit for bit where an uninterrupted run ends."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import FAST, make_image_folder, read_log
from scalavit.cli import main

# Runs `scalavit train ARGS` and SIGKILLs itself at one point, given as KIND:NAME:N:
#   pass::N          during the N-th sub-network pass (forward + backward) of this process
#   half-save:F:N    while the N-th checkpoint save to F is half written
#   rename:F:N       just before the N-th atomic rename onto F (the new file complete, the old one still in place)
KILLED_TRAIN = r"""
import io, os, signal, sys
import torch
from scalavit import train
from scalavit.cli import main

kind, name, count = sys.argv[1].split(':')
calls = 0

def reached():
    global calls
    calls += 1
    return calls == int(count)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if kind == 'pass':
    real_pass = train.SubNetworkPasses.__call__
    def killing_pass(self, *args, **kwargs):
        if reached():
            die()
        return real_pass(self, *args, **kwargs)
    train.SubNetworkPasses.__call__ = killing_pass
elif kind == 'half-save':
    real_save = torch.save
    def killing_save(obj, f, *args, **kwargs):
        if os.path.basename(str(f)).startswith(f'.{name}.') and reached():
            buffer = io.BytesIO()
            real_save(obj, buffer)
            with open(f, 'wb') as out:
                out.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            die()
        return real_save(obj, f, *args, **kwargs)
    torch.save = killing_save
elif kind == 'rename':
    real_replace = os.replace
    def killing_replace(source, destination):
        if os.path.basename(str(destination)) == name and reached():
            die()
        return real_replace(source, destination)
    os.replace = killing_replace
sys.exit(main(['train', *sys.argv[2:]]))
"""

# Three epochs of three steps (24 images, batches of 8); epoch 1 is the full-width warm-up (one pass a step), epochs
# 2 and 3 run four sub-networks a step. Each kill, and the epoch last.pt holds afterwards (None: no checkpoint yet).
KILLS = [
    ('pass::2', None),                  # during the second step, before any checkpoint
    ('half-save:best.pt:1', None),      # the first checkpoint half written
    ('rename:log.jsonl:2', 1),          # last.pt of epoch 1 saved, its log row not yet written
    ('pass::7', 1),                     # epoch 2, step 2, third sub-network: gradients half accumulated
    ('half-save:last.pt:1', 1),         # epoch 2's last.pt half written (its best.pt may be complete)
    ('rename:last.pt:1', 1),            # epoch 2's last.pt complete but not yet renamed into place
    ('pass::14', 2),                    # epoch 3, first step
]
VOLATILE = {'time_s', 'images_per_s'}


def deterministic(rows):
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


@pytest.mark.slow  # kills and resumes a training many times
def test_training_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path):
    folder = make_image_folder(tmp_path / 'data')
    options = ['--data', str(folder), *FAST, '--epochs', '3']
    assert main(['train', *options, '--output', str(tmp_path / 'straight')]) == 0

    run = tmp_path / 'killed'
    for i, (kill, epoch_saved) in enumerate(KILLS):
        args = ['--output', str(run), *options] if i == 0 else ['--resume', str(run)]
        result = subprocess.run([sys.executable, '-c', KILLED_TRAIN, kill, *args], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == -signal.SIGKILL, (kill, result.stderr[-2000:])
        if epoch_saved is None:
            assert not (run / 'last.pt').exists(), kill
        else:
            assert torch.load(run / 'last.pt', weights_only=False)['epoch'] == epoch_saved, kill
        assert all(row['epoch'] <= (epoch_saved or 0) for row in read_log(run)), kill
    assert main(['train', '--resume', str(run)]) == 0

    for name in ('last.pt', 'best.pt'):
        straight = torch.load(tmp_path / 'straight' / name, weights_only=False)
        resumed = torch.load(run / name, weights_only=False)
        assert (resumed['epoch'], resumed['step']) == (straight['epoch'], straight['step'])
        for key in straight['model']:
            assert torch.equal(straight['model'][key], resumed['model'][key]), (name, key)
        for key, state in straight['optimizer']['state'].items():
            for field, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed['optimizer']['state'][key][field]))
    assert torch.load(run / 'last.pt', weights_only=False)['step'] == 9
    assert deterministic(read_log(run)) == deterministic(read_log(tmp_path / 'straight'))
    assert (run / 'log.csv').read_text().count('\n') == 4  # header and three epochs, once each
    assert not [p.name for p in run.iterdir() if p.name.endswith('.tmp')]


def test_a_run_stopped_before_its_first_checkpoint_starts_again_with_resume(tmp_path):
    folder = make_image_folder(tmp_path / 'data')
    run = tmp_path / 'run'
    result = subprocess.run([sys.executable, '-c', KILLED_TRAIN, 'pass::1', '--output', str(run), '--data',
                             str(folder), *FAST, '--epochs', '1'], capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL and (run / 'config.json').is_file()
    assert main(['train', '--data', str(folder), '--output', str(run), *FAST]) == 2  # not over the stopped run
    assert main(['train', '--resume', str(run)]) == 0
    assert [row['epoch'] for row in read_log(run)] == [1]
