"""Compiled training (torch.compile, whole or block by block, alone and under torchrun with DDP): the eager steps.
A file of its own, so that the suite's workers compile these beside the compiled widths of tests/test_compiled.py."""
import json
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import FAST, make_image_folder
from scalavit.cli import main

pytestmark = pytest.mark.slow  # compiles every width (minutes): scripts/test.sh --fast skips it


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('compiled-training') / 'data')


def two_scala_steps(data, output, *flags):
    """Two Scala steps (four sub-networks each, Mixup, distillation from the full width): the last log row and the
    weights after."""
    assert main(['train', '--data', str(data), '--smallest', '0.5', '--granularity', '1/4', *FAST,
                 '--epochs', '1', '--max-steps', '2', '--full-warmup-epochs', '0', '--eval-widths', '1.0',
                 '--output', str(output), *flags]) == 0
    return (json.loads((output / 'log.jsonl').read_text().splitlines()[-1]),
            torch.load(output / 'last.pt', weights_only=True)['model'])


def test_compiled_training_takes_the_eager_steps(data, tmp_path):
    """The two steps compiled give the eager losses and the eager weights after, so the same gradients; one graph a
    width, and none for the evaluation, which runs eager. (Block by block: tests/test_gpu_check.py.)"""
    eager_log, eager_weights = two_scala_steps(data, tmp_path / 'eager')
    counters.clear()
    log, weights = two_scala_steps(data, tmp_path / 'compiled', '--compile')
    assert counters['stats']['unique_graphs'] == 3
    for key in ('loss_full', 'loss_upper', 'loss_lower', 'loss_smallest'):
        assert log[key] == pytest.approx(eager_log[key], rel=1e-4, abs=1e-5), key
    assert weights.keys() == eager_weights.keys()
    for name, tensor in eager_weights.items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_training_under_torchrun_takes_the_eager_steps(data, tmp_path):
    """Two gloo processes, DDP inside torch.compile or around blocks compiled in place: the ranks stay in sync and the
    losses are the eager run's."""
    logs = {}
    for mode, flags in (('eager', []), ('compiled', ['--compile']), ('regional', ['--compile', '--compile-regional'])):
        command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m',
                   'scalavit', 'train', '--data', str(data), '--output', str(tmp_path / mode), '--smallest', '0.5',
                   '--granularity', '1/4', *FAST, '--batch-size', '4', '--epochs', '1', '--max-steps', '2',
                   '--full-warmup-epochs', '0', '--eval-widths', '1.0', *flags]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        logs[mode] = json.loads((tmp_path / mode / 'log.jsonl').read_text().splitlines()[-1])
    for mode in ('compiled', 'regional'):
        assert logs[mode]['ranks_in_sync'], mode
        for key in ('loss_full', 'loss_upper', 'loss_lower', 'loss_smallest'):
            assert logs[mode][key] == pytest.approx(logs['eager'][key], rel=1e-4, abs=1e-5), (mode, key)
