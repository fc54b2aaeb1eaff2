"""scripts/gpu_check.sh without a GPU, and the checks of scripts/gpu_check.py that mean something on the CPU."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import gpu_check  # noqa: E402
from scalavit.data import read_fashion_mnist  # noqa: E402
from test_data import write_idx  # noqa: E402

pytestmark = pytest.mark.slow  # runs the GPU checks' jobs: scripts/test.sh --fast skips it


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


@pytest.fixture(scope='module')
def fashion_files(tmp_path_factory):
    """A folder of Fashion-MNIST's four files holding its first 256 training and 64 test images."""
    root = tmp_path_factory.mktemp('fashion-files')
    for split, prefix, count in (('train', 'train', 256), ('test', 't10k', 64)):
        images, labels = read_fashion_mnist(split)
        write_idx(root / f'{prefix}-images-idx3-ubyte.gz', 2051, (count, 28, 28), images[:count].numpy().tobytes())
        write_idx(root / f'{prefix}-labels-idx1-ubyte.gz', 2049, (count,),
                  labels[:count].to(torch.uint8).numpy().tobytes())
    return root


def test_main_job_check_runs_the_job_eager_and_compiled_and_compares_them(fashion_files, tmp_path, capsys):
    """Here block by block (--compile-regional), which this also checks: the compiled run takes the eager run's
    steps (losses and weights), its blocks share one graph a width, and evaluation compiles nothing."""
    variants = {'eager': {}, 'regional': dict(compile=True, compile_regional=True)}
    counters.clear()
    detail = gpu_check.check_main_job(fashion_files, tmp_path, 'cpu', variants, scala_steps=2, smallest=0.5,
                                      granularity=0.25, batch_size=64)
    assert counters['stats']['unique_graphs'] == 3  # widths 0.5, 0.75 and 1
    lines = [line for line in capsys.readouterr().out.splitlines() if 'main job' in line]
    assert [line.split(':')[0].split()[-1] for line in lines] == ['eager', 'regional']
    assert all('over 2 Scala steps' in line and 'epoch-1 loss' in line for line in lines)
    assert detail.startswith('7-epoch job estimated: eager ') and '(1.00x), regional ' in detail
    logs, weights = {}, {}
    for name in variants:
        logs[name] = [json.loads(line) for line in (tmp_path / f'main-{name}' / 'log.jsonl').read_text().splitlines()]
        weights[name] = torch.load(tmp_path / f'main-{name}' / 'last.pt', weights_only=True)['model']
    assert [row['step'] for row in logs['eager']] == [4, 6]  # 256 images at 64: one epoch, then two Scala steps
    for key in ('loss_full', 'loss_upper', 'loss_lower', 'loss_smallest'):
        assert logs['regional'][1][key] == pytest.approx(logs['eager'][1][key], rel=1e-4, abs=1e-5), key
    assert weights['regional'].keys() == weights['eager'].keys()  # compiling blocks in place renames nothing
    # atol 1e-4: softmax ignores the key bias, so its gradient is rounding noise, which AdamW scales up
    for name, tensor in weights['eager'].items():
        torch.testing.assert_close(weights['regional'][name], tensor, atol=1e-4, rtol=1e-4, msg=name)


def test_the_main_job_estimate_scales_the_second_epoch_and_the_evaluations_to_seven_epochs():
    rows = [dict(time_s=30.0, images_per_s=2000.0, step=468, loss_full=1.5),
            dict(time_s=20.0, images_per_s=1280.0, step=668, loss_full=1.2, loss_smallest=1.6)]
    trainer = SimpleNamespace(log_rows=rows, train_loader=range(468), config=SimpleNamespace(batch_size=128, epochs=7),
                              _eval_widths=lambda: [0.25, 0.5, 0.75, 1.0], model=SimpleNamespace(widths=[0] * 13))
    estimate = gpu_check.main_job_estimate(trainer, setup=10.0, wall=77.0)
    # start 10 + epoch 1 30 + 6 epochs of 468 x 128 images at 1280 img/s (46.8 s) + evaluations 17 s x 37 / 17
    assert estimate['minutes'] * 60 == pytest.approx(10 + 30 + 6 * 46.8 + 37)
    assert estimate['epoch1_loss'] == 1.5 and "'loss_smallest': 1.6" in estimate['line']
