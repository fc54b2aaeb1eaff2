"""scripts/gpu_check.sh without a GPU, and the checks of benchmarks/gpu_check.py that mean something on the CPU."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU: the script would run its checks')
def test_without_cuda_the_script_says_so_in_one_line_and_stops():
    result = subprocess.run(['bash', str(ROOT / 'scripts' / 'gpu_check.sh')], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [result.stdout.strip()]
    assert result.stdout.startswith('no CUDA device')


def test_a_failing_check_is_one_line_and_the_exit_status_is_1(monkeypatch, tmp_path, capsys):
    def broken():
        raise AssertionError('norm 3.2 after clipping to 0.05')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(gpu_check, 'environment_line', lambda device: 'environment: test')
    monkeypatch.setattr(gpu_check, 'checks', lambda *args: [('good', lambda: 'fine'), ('broken', broken)])
    assert gpu_check.main(['--workdir', str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'environment: test'
    assert lines[1].startswith('ok   good') and 'fine' in lines[1]
    assert lines[2].startswith('FAIL broken') and 'norm 3.2 after clipping to 0.05' in lines[2]
    assert lines[3] == '1 passed, 1 failed'


def test_only_runs_the_checks_whose_name_holds_the_text(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(gpu_check, 'environment_line', lambda device: 'environment: test')
    monkeypatch.setattr(gpu_check, 'checks', lambda *args: [('train --compile', lambda: 'a'), ('serve', lambda: 'b'),
                                                             ('compiled widths', lambda: 'c')])
    assert gpu_check.main(['--workdir', str(tmp_path), '--only', 'compile']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[1:3]] == ['train', 'compiled'] and lines[3] == '2 passed, 0 failed'


@pytest.fixture(scope='module')
def fashion(tmp_path_factory):
    return gpu_check.fashion_subset(tmp_path_factory.mktemp('gpu-check') / 'fashion', per_class=64, val_per_class=20)


@pytest.fixture(scope='module')
def trained_check(fashion):
    output = fashion.parent / 'run'
    return output, gpu_check.check_training(fashion, output, gpu_check.FASHION_MODEL, 'cpu', 'none')


@pytest.fixture(scope='module')
def run(trained_check):
    return trained_check[0]


def test_training_check_runs_the_trainer_and_reports_its_losses(trained_check):
    run, detail = trained_check
    assert (run / 'last.pt').is_file() and (run / 'log.jsonl').is_file()
    last = json.loads((run / 'log.jsonl').read_text().splitlines()[-1])
    assert detail.startswith(f"{last['step']} steps, float32 logits, loss_full {last['loss_full']:.4f}")


def test_clipping_check_sees_the_norm_clipped(fashion):
    detail = gpu_check.check_clipping(fashion, fashion.parent / 'clip', 'cpu', 'none', clip=0.05, steps=3)
    assert '3/3 steps stepped' in detail and '<= 0.05' in detail


def test_clipping_check_fails_when_clipping_never_acts(fashion):
    with pytest.raises(AssertionError, match='clipping never acted'):
        gpu_check.check_clipping(fashion, fashion.parent / 'clip-large', 'cpu', 'none', clip=1e6, steps=2)


def test_resume_check_finds_the_resumed_run_equal(fashion):
    assert 'bit for bit' in gpu_check.check_resume(fashion, fashion.parent / 'resume', 'cpu', 'none')


def test_eval_pick_and_serve_checks_on_the_cpu(run, fashion):
    assert gpu_check.check_eval_and_pick(run, 'cpu').startswith('13 widths')
    image = next((fashion / 'val').glob('*/*.png'))
    assert 'answered 200' in gpu_check.check_serve(run, image, 'cpu', requests=16)
