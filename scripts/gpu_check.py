"""The CUDA path, run on a real GPU: one line per check, exit status 1 if any check failed.

Mixed-precision training (fp32, fp16 with the gradient scaler, bf16) of the default model on real Fashion-MNIST images
and of DeiT-S at 224 on random images; fp16 with --clip-grad clipping the norm; a resumed run against an uninterrupted
one; the Scala training step of DeiT-S at batch 128 in bf16, eager and compiled; `scalavit eval` and `pick` timing
every width with CUDA synchronisation; `scalavit serve` on CUDA answering a burst of requests; and `--compile` on
CUDA: every width of the default model compiled in process (plain and as CUDA graphs) against eager, compiled
training runs (whole, with CUDA graphs, block by block) against the eager one, the default main job eager and
compiled, and `eval`, `pick` and `serve` of compiled widths. Without a CUDA device it says
so in one line and exits 0.
Results are recorded in docs/gpu.md.

    bash scripts/gpu_check.sh
    bash scripts/gpu_check.sh --fashion-mnist DIR --workdir /tmp/gpu-check
    bash scripts/gpu_check.sh --only compile          # the checks whose name holds 'compile'

The checks are functions that tests/test_gpu_check.py also runs on the CPU where they mean something.
"""
import os

os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # read when cuBLAS starts: deterministic resume check

import argparse  # noqa: E402
import asyncio
import contextlib
import dataclasses
import math
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
import timm
import torch
from PIL import Image

import scalavit  # noqa: F401  (registers the scala_* models)
from scalavit.compiled import JitCompiledWidths
from scalavit.compiled_training import compile_for_training
from scalavit.config import TrainConfig
from scalavit.data import FASHION_MNIST_ROOT, FashionMNIST
from scalavit.evaluate import time_alternately
from scalavit.model import FASHION_MODEL
from scalavit.report import read_report
from scalavit.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / 'benchmarks'), str(ROOT / 'studies')]  # the speed measurements it repeats on CUDA
from loader_speed import images_per_second  # noqa: E402
from study import fashion_subset  # noqa: E402
from train_step import make_batch, scala_step_fn, step_widths  # noqa: E402

DEIT_S = 'scala_deit_small_patch16_224'
AUTOCAST = {'none': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


# Data


def random_folder(root: Path, size: int, classes: int = 2, per_class: int = 48, val_per_class: int = 8) -> Path:
    """An image folder of random RGB images: the speed and numerics of a 224x224 model without its data."""
    rng = np.random.default_rng(0)
    for split, count in (('train', per_class), ('val', val_per_class)):
        for label in range(classes):
            folder = root / split / f'class{label}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    return root


# Training


def train_config(data: Path, output: Path, model: str, device: str, amp: str, **options) -> TrainConfig:
    settings = dict(model=model, data=str(data), output=str(output), device=device, amp=amp, epochs=1,
                    batch_size=64, lr=1e-3, warmup_epochs=0, full_warmup_epochs=0, mixup=0.0, reprob=0.0, workers=2)
    return TrainConfig(**{**settings, **options})


def check_training(data: Path, output: Path, model: str, device: str, amp: str, **options) -> str:
    """A short run through the trainer (steps, evaluation of every width, checkpoints): every loss finite."""
    trainer = Trainer(train_config(data, output, model, device, amp, **options))
    row = trainer.fit()
    losses = {k: v for k, v in row.items() if k.startswith('loss_')}
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise AssertionError(f"losses not finite: {bad}")
    missing = [w for w in trainer.model.widths if f'top1@{w:g}' not in row]
    if missing or not (output / 'last.pt').is_file():
        raise AssertionError(f"widths {missing} not evaluated or no last.pt written")
    images = next(iter(trainer.eval_loader))[0][:2].to(trainer.device)
    with torch.no_grad(), trainer.autocast():
        dtype = trainer.model(images).dtype
    if dtype != (AUTOCAST[amp] or torch.float32):
        raise AssertionError(f"--amp {amp}: the trainer's forward gives {dtype} logits")
    widths = trainer.model.widths
    return (f"{row['step']} steps, {str(dtype)[6:]} logits, loss_full {losses['loss_full']:.4f} loss_smallest "
            f"{losses.get('loss_smallest', float('nan')):.4f}, top-1 {row[f'top1@{widths[-1]:g}']:.1f}% at "
            f"{widths[-1]:g} / {row[f'top1@{widths[0]:g}']:.1f}% at {widths[0]:g}, {row['images_per_s']:.0f} img/s")


def gradient_norm(model: torch.nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad.float()) for p in model.parameters() if p.grad is not None])))


def check_clipping(data: Path, output: Path, device: str, amp: str, clip: float = 0.05, steps: int = 8) -> str:
    """--clip-grad under the gradient scaler: the norm the trainer reports is the unscaled one before clipping, and
    the gradients the optimizer stepped with have a norm of at most ``clip``."""
    trainer = Trainer(train_config(data, output, FASHION_MODEL, device, amp, clip_grad=clip, max_steps=steps))
    trainer.model.train()
    before, after = [], []
    for images, targets, _ in trainer.train_loader:
        norm = float(trainer._train_step(images, targets)['grad_norm'])
        if math.isfinite(norm):  # an overflowed fp16 step is skipped by the scaler, not clipped
            before.append(norm)
            after.append(gradient_norm(trainer.model))
        if trainer._out_of_steps():
            break
    if not before:
        raise AssertionError(f"all {steps} steps overflowed")
    if max(after) > clip * 1.001:
        raise AssertionError(f"gradient norm {max(after):.4g} after clipping to {clip}")
    if not max(before) > clip:
        raise AssertionError(f"no step had a norm above {clip}: clipping never acted")
    return (f"{len(before)}/{steps} steps stepped, norm before clipping {statistics.median(before):.3g} (median), "
            f"after {max(after):.4g} <= {clip}; loss scale now {trainer.scaler.get_scale():g}")


@contextlib.contextmanager
def deterministic():
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def check_resume(data: Path, workdir: Path, device: str, amp: str, steps_per_epoch: int = 10) -> str:
    """Two epochs straight against one epoch, stop, ``--resume`` for the second: the same weights and losses."""
    with deterministic():
        options = dict(epochs=2, batch_size=len(FashionMNIST.classes) * 64 // steps_per_epoch)
        straight = Trainer(train_config(data, workdir / 'straight', FASHION_MODEL, device, amp, **options))
        straight.fit()
        halves = train_config(data, workdir / 'halves', FASHION_MODEL, device, amp, max_steps=steps_per_epoch,
                              **options)
        Trainer(halves).fit()
        resumed = Trainer(dataclasses.replace(halves, max_steps=None), resume=str(workdir / 'halves'))
        resumed.fit()
    weight_diff = max(float((a - b).abs().max()) for a, b in zip(
        straight.model.state_dict().values(), resumed.model.state_dict().values()))
    loss_diff = max(abs(a[k] - b[k]) for a, b in zip(straight.log_rows, resumed.log_rows) for k in a
                    if k.startswith('loss_'))
    if resumed.step != straight.step or weight_diff > 1e-5 or loss_diff > 1e-5:
        raise AssertionError(f"resumed run differs: step {resumed.step} vs {straight.step}, weights by "
                             f"{weight_diff:.3g}, losses by {loss_diff:.3g}")
    same = 'bit for bit' if weight_diff == 0 and loss_diff == 0 else f'weights within {weight_diff:.2g}'
    return f"{straight.step} steps straight vs {steps_per_epoch} + resume: {same}, losses within {loss_diff:.2g}"


# The Scala step's speed


def check_step_speed(device: str, model_name: str = DEIT_S, batch_size: int = 128, amp: str = 'bf16',
                     calls: int = 10) -> str:
    """Images per second of one Scala step (four sub-networks' forward and backward, one AdamW step), eager and with
    the blocks compiled (``scalavit train --compile --compile-regional``), timed alternately after compiling."""
    torch.manual_seed(0)
    eager = timm.create_model(model_name).to(device).train()
    compiled = timm.create_model(model_name).to(device).train()
    compiled.load_state_dict(eager.state_dict())
    images, target = make_batch(eager, batch_size, device)
    dtype = AUTOCAST[amp]
    autocast = (lambda: torch.autocast('cuda', dtype=dtype)) if dtype else contextlib.nullcontext
    start = time.perf_counter()
    compile_for_training(compiled, tuple(step_widths(compiled, seed=0)), images, autocast, progress=False,
                         regional=True)
    compile_s = time.perf_counter() - start
    eager_step = scala_step_fn(eager, images, target, seed=0, autocast=autocast)
    compiled_step = scala_step_fn(compiled, images, target, seed=0, autocast=autocast)
    eager_s, compiled_s = time_alternately(eager_step, compiled_step, calls)
    return (f"{model_name} batch {batch_size} {amp}: eager {batch_size / eager_s:,.0f} img/s, compiled "
            f"{batch_size / compiled_s:,.0f} img/s ({eager_s / compiled_s:.2f}x), compiling its four widths "
            f"{compile_s:.0f} s")


# Evaluation, pick and serving through the command line


def run_cli(*args: str, timeout: float = 600) -> str:
    result = subprocess.run([sys.executable, '-m', 'scalavit', *args], capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"scalavit {' '.join(args)} exited {result.returncode}: "
                             f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    return result.stdout


def check_eval_and_pick(run: Path, device: str) -> str:
    """`scalavit eval` times every width on ``device``; `pick` chooses from that report on the same device."""
    run_cli('eval', str(run), '--device', device, '--latency-repeats', '20', '--workers', '2')
    report = read_report(run)
    rows, meta = report['rows'], report['meta']
    if not meta['device'].startswith(device) or any(not row['latency_ms_median'] > 0 for row in rows):
        raise AssertionError(f"report measured on {meta['device']}, latencies {[r['latency_ms_median'] for r in rows]}")
    budget = statistics.median(row['latency_ms_median'] for row in rows)
    chosen = [line for line in run_cli('pick', str(run), '--latency-ms', f'{budget:.4f}', '--device',
                                       device).splitlines() if line.startswith('width ')]
    if not chosen:
        raise AssertionError("pick chose no width")
    latencies = [row['latency_ms_median'] for row in rows]
    return (f"{len(rows)} widths on {meta['device_name']}, batch-1 median {min(latencies):.3f}-{max(latencies):.3f} "
            f"ms; pick --latency-ms {budget:.3f}: {chosen[0].split(':')[0]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


async def send_burst(url: str, body: bytes, count: int) -> tuple[list[httpx.Response], float]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=count)) as client:
        start = time.perf_counter()
        answers = await asyncio.gather(*(client.post('/predict', content=body, headers={
            'Content-Type': 'image/png'}) for _ in range(count)))
        return answers, time.perf_counter() - start


def check_serve(run: Path, image: Path, device: str, requests: int = 256, options: tuple[str, ...] = ()) -> str:
    """`scalavit serve` on ``device`` (with ``options``): ready after profiling, a burst of concurrent requests
    answered (200, or 503 with Retry-After when refused), a pinned width honoured, and the server still up."""
    url = f'http://127.0.0.1:{free_port()}'
    process = subprocess.Popen([sys.executable, '-m', 'scalavit', 'serve', str(run), '--device', device, '--port',
                                url.rsplit(':', 1)[1], '--max-batch-size', '16', '--profile-repeats', '10', *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited: {process.stdout.read()[-500:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f'{url}/health/ready', timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("the server was not ready after 5 minutes")
            time.sleep(0.5)
        body = image.read_bytes()
        answers, seconds = asyncio.run(send_burst(url, body, requests))
        statuses = [a.status_code for a in answers]
        unexpected = [a for a in answers if a.status_code != 200 and not (
            a.status_code == 503 and 'retry-after' in a.headers)]
        if unexpected or statuses.count(200) == 0:
            raise AssertionError(f"statuses {sorted(set(statuses))}: {unexpected[0].text if unexpected else ''}")
        served = [a.json() for a in answers if a.status_code == 200]
        width = httpx.get(f'{url}/widths').json()['profile'][0]['width']
        pinned = httpx.post(f'{url}/predict', content=body, headers={'Content-Type': 'image/png',
                                                                      'X-Width': str(width)}, timeout=30)
        if pinned.status_code != 200 or pinned.json()['width'] != width:
            raise AssertionError(f"X-Width {width} answered {pinned.status_code}: {pinned.text[:200]}")
        if process.poll() is not None:
            raise AssertionError("the server died during the burst")
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if process.poll() is None:
            process.kill()
    widths = sorted({s['width'] for s in served})
    batches = [s['batch_size'] for s in served]
    return (f"{requests} concurrent requests in {seconds:.2f} s: {len(served)} answered 200, "
            f"{statuses.count(503)} refused with 503; widths {widths}, batches up to {max(batches)}")


# --compile on CUDA


@contextlib.contextmanager
def exact_fp32():
    """fp32 matrix products and convolutions without TF32, so that compiled and eager numbers can be compared."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


CUDA_GRAPHS = dict(compile=True, compile_mode='reduce-overhead')
COMPILED_TRAINING = {'compiled': dict(compile=True), 'CUDA graphs': CUDA_GRAPHS,
                     'regional CUDA graphs': dict(CUDA_GRAPHS, compile_regional=True)}


def check_compiled_training(data: Path, workdir: Path, device: str, epochs: int = 5,
                            variants: dict = COMPILED_TRAINING) -> str:
    """The same run (4 widths, 50 steps, fp32) eager and compiled in each of ``variants`` (TrainConfig options): the
    losses of every epoch agree, and each reports its speed; a compiled trainer's start includes compiling every
    width's forward and backward. The first variant's run is what the eval, pick and serve checks use."""
    options = dict(granularity=0.25, epochs=epochs)
    runs = {}
    with exact_fp32():
        for name, variant in {'eager': {}, **variants}.items():
            start = time.perf_counter()
            output = workdir / ('train-compiled' if name == next(iter(variants)) else f"train-{slug(name)}")
            trainer = Trainer(train_config(data, output, FASHION_MODEL, device, 'none', **options, **variant))
            setup = time.perf_counter() - start
            trainer.fit()
            runs[name] = trainer.log_rows, setup, time.perf_counter() - start
    eager, eager_setup, eager_s = runs.pop('eager')
    keys = [k for k in eager[0] if k.startswith('loss_')]
    rate = lambda rows: statistics.median(row['images_per_s'] for row in rows[1:] or rows)  # noqa: E731
    parts = []
    for name, (rows, setup, seconds) in runs.items():
        worst = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for a, b in zip(eager, rows) for k in keys)
        if len(eager) != len(rows) or worst > 1e-3:
            raise AssertionError(f"{name}: losses differ from eager by up to {worst:.3g} (relative)")
        parts.append(f"{name}: losses within {worst:.2g} (relative), start {setup:.0f} s, whole run {seconds:.0f} s, "
                     f"{rate(rows):.0f} img/s after epoch 1")
    return (f"{eager[-1]['step']} steps, {len(keys)} losses an epoch against eager (start {eager_setup:.0f} s, "
            f"whole run {eager_s:.0f} s, {rate(eager):.0f} img/s after epoch 1); " + '; '.join(parts))


def slug(name: str) -> str:
    return name.lower().replace(' ', '-')


MAIN_JOB = {'eager': {}, 'regional CUDA graphs': dict(CUDA_GRAPHS, compile_regional=True), 'CUDA graphs': CUDA_GRAPHS}


def check_main_job(fashion: Path, workdir: Path, device: str, variants: dict = MAIN_JOB, scala_steps: int = 200,
                   **options) -> str:
    """The default main job (``scalavit train``'s defaults on all of Fashion-MNIST, or ``options``) eager and compiled
    in each of ``variants``: its first epoch (the full width alone) and ``scala_steps`` Scala steps of the second,
    timed whole, compilation included (into whatever inductor cache this machine has), in fp32.

    From each run, the 7-epoch job's wall time is estimated: start, epoch 1, six epochs at the second epoch's rate,
    and the evaluations scaled to the job's (each epoch's few widths, every width after the last). The ratio to the
    eager estimate is the compile issue's target (<= 0.75). A compiled run's epoch-1 loss must be eager's (1e-3);
    its Scala losses are reported. Last, what the training loader (one worker, as the job) delivers alone. Each run
    prints its line as it ends, so a run cut short by a time limit leaves the ones before it."""
    runs = {}
    with exact_fp32():
        for name, variant in variants.items():
            config = TrainConfig(data=str(fashion), device=device, output=str(workdir / f"main-{slug(name)}"),
                                 **{**options, **variant})
            config.max_steps = len(FashionMNIST('train', root=fashion)) // config.batch_size + scala_steps
            start = time.perf_counter()
            trainer = Trainer(config)
            setup = time.perf_counter() - start
            trainer.fit()
            runs[name] = estimate = main_job_estimate(trainer, setup, time.perf_counter() - start)
            print(f"     main job {name}: {estimate['line']}", flush=True)
    eager = runs[next(iter(variants))]
    parts = [f"{name} {run['minutes']:.1f} min ({run['minutes'] / eager['minutes']:.2f}x)"
             for name, run in runs.items()]
    for name, run in runs.items():
        difference = abs(run['epoch1_loss'] - eager['epoch1_loss']) / eager['epoch1_loss']
        if difference > 1e-3:
            raise AssertionError(f"{name}: epoch-1 loss {run['epoch1_loss']:.6f} against eager "
                                 f"{eager['epoch1_loss']:.6f}")
    loader_rate = images_per_second(trainer.train_loader, batches=100)
    return (f"{config.epochs}-epoch job estimated: {', '.join(parts)}; the loader alone (1 worker, {os.cpu_count()} CPUs) "
            f"{loader_rate:,.0f} img/s")


def main_job_estimate(trainer: Trainer, setup: float, wall: float) -> dict:
    """The whole job's wall time (minutes, all ``--epochs``) estimated from a run of one epoch and part of a second
    (see ``check_main_job``), with the figures it came from."""
    first, second = trainer.log_rows[0], trainer.log_rows[1]
    later = trainer.config.epochs - 1
    epoch_s = len(trainer.train_loader) * trainer.config.batch_size / second['images_per_s']
    few, every = len(trainer._eval_widths()), len(trainer.model.widths)
    evaluations = (wall - setup - first['time_s'] - second['time_s']) * (later * few + every) / (few + every)
    seconds = setup + first['time_s'] + later * epoch_s + evaluations
    scala = {k: round(v, 5) for k, v in second.items() if k.startswith('loss_')}
    line = (f"start {setup:.0f} s, epoch 1 {first['time_s']:.0f} s ({first['images_per_s']:.0f} img/s), epoch 2 at "
            f"{second['images_per_s']:.0f} img/s over {second['step'] - first['step']} Scala steps, measured "
            f"{wall:.0f} s; {later + 1} epochs about {seconds / 60:.1f} min; epoch-1 loss {first['loss_full']:.6f}, Scala "
            f"losses {scala}")
    return dict(minutes=seconds / 60, epoch1_loss=first['loss_full'], line=line)


def check_compiled_eval_and_pick(run: Path, device: str, cache: Path) -> str:
    """`scalavit eval --compile` scores every width as eager `eval` does (one image of the 200 at most) and times the
    compiled widths; `pick --compile` measures the compiled widths (loaded from the cache) and chooses one."""
    reports = {}
    for name, options in (('eager', ()), ('compiled', ('--compile', '--compile-cache', str(cache)))):
        output = run.parent / f'{run.name}-eval-{name}'
        output.mkdir(exist_ok=True)
        run_cli('eval', str(run), '--device', device, '--latency-repeats', '50', '--workers', '2', '--output',
                str(output), *options)
        reports[name] = read_report(output)
    eager, compiled = reports['eager']['rows'], reports['compiled']['rows']
    if not reports['compiled']['meta']['compiled'] or reports['eager']['meta']['compiled']:
        raise AssertionError("the reports do not say which was compiled")
    step = 100 / reports['eager']['meta']['images'] + 0.01  # one image, and the report's rounding
    differ = [(a['width'], a['top1'], b['top1']) for a, b in zip(eager, compiled) if abs(a['top1'] - b['top1']) > step]
    if len(eager) != len(compiled) or differ:
        raise AssertionError(f"compiled top-1 differs from eager by more than one image: {differ}")
    budget = statistics.median(row['latency_ms_median'] for row in compiled)
    chosen = [line for line in run_cli('pick', str(run), '--latency-ms', f'{budget:.4f}', '--device', device,
                                       '--compile', '--compile-cache', str(cache)).splitlines()
              if line.startswith('width ')]
    if not chosen:
        raise AssertionError("pick --compile chose no width")
    latencies = ', '.join(f"{a['width']:g}: {a['latency_ms_median']:.3f} / {b['latency_ms_median']:.3f}"
                          for a, b in zip(eager, compiled))
    return f"top-1 as eager at {len(compiled)} widths; batch-1 ms eager / compiled {latencies}; pick: {chosen[0]}"


def check_compiled_widths(device: str, cache: Path, calls: int = 200, **grid) -> str:
    """Every width of the default model (on ``grid``) compiled in process for the GPU, plain and replayed as CUDA
    graphs (``JitCompiledWidths``): logits within 1e-4 of eager (fp32, no TF32) at batch 1, 5 (padded), 64 and 100
    (past the captured sizes), also when called from another thread (a server's model thread); batch-1 and batch-64
    latency eager and compiled, called alternately; the build cold and again on a second start (inductor's cache)."""
    torch.manual_seed(0)
    model = timm.create_model(FASHION_MODEL, **grid).to(device).eval()
    x = torch.randn(100, *model.pretrained_cfg['input_size'], device=device)  # 100: past the captured sizes
    lines, worst_all = [], 0.0
    for cuda_graphs in (False, True):
        start = time.perf_counter()
        compiled = JitCompiledWidths(model, cache_dir=cache, progress=False, cuda_graphs=cuda_graphs)
        cold = time.perf_counter() - start
        with exact_fp32():
            worst, in_thread = largest_difference(model, compiled, x), {}
            thread = threading.Thread(target=lambda: in_thread.update(d=largest_difference(model, compiled, x)))
            thread.start()
            thread.join()
            with torch.inference_mode():
                times = {(w, n): time_alternately(lambda: model(x[:n], w), lambda: compiled(x[:n], w), calls)
                         for n in (1, 64) for w in model.widths}
        start = time.perf_counter()
        JitCompiledWidths(model, cache_dir=cache, progress=False, cuda_graphs=cuda_graphs).close()
        warm = time.perf_counter() - start
        compiled.close()
        worst_all = max(worst_all, worst, in_thread.get('d', math.inf))
        latencies = '; '.join(f"batch {n}: " + ', '.join(f"{w:g} {e * 1e3:.3f}/{c * 1e3:.3f} ({c / e:.2f}x)"
                                                         for (w, m), (e, c) in times.items() if m == n)
                              for n in (1, 64))
        lines.append(f"{'CUDA graphs' if cuda_graphs else 'plain'}: within {worst:.1g} of eager (another thread "
                     f"{in_thread.get('d', math.inf):.1g}), built in {cold:.0f} s, again in {warm:.0f} s; "
                     f"ms eager/compiled {latencies}")
    if worst_all > 1e-4:
        raise AssertionError(f"compiled logits differ from eager by {worst_all:.3g}: {' | '.join(lines)}")
    return f"{len(model.widths)} widths; " + ' | '.join(lines)


def largest_difference(model: torch.nn.Module, compiled: JitCompiledWidths, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return max(float((compiled(batch, w) - model(batch, w)).abs().max())
                   for w in model.widths for batch in (x[:1], x[:5], x[:64], x))  # 5: padded to 8


# The whole check


def environment_line(device: str) -> str:
    props = torch.cuda.get_device_properties(device)
    driver = 'unknown'
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        driver = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                capture_output=True, text=True, timeout=30).stdout.split('\n')[0].strip() or driver
    return (f"environment: {props.name}, {props.total_memory / 2 ** 30:.0f} GiB, {props.multi_processor_count} SMs, "
            f"driver {driver}, CUDA {torch.version.cuda}, torch {torch.__version__}, timm {timm.__version__}, "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")


def checks(workdir: Path, fashion: Path, device: str) -> list[tuple[str, Callable[[], str]]]:
    small = fashion_subset(workdir / 'fashion', per_class=64, val_per_class=20, source=fashion)
    large = random_folder(workdir / 'random224', 224)
    image = next((small / 'val').glob('*/*.png'))
    listed = []
    for amp in ('none', 'fp16', 'bf16'):
        listed.append((f'train default {amp}', lambda amp=amp: check_training(
            small, workdir / f'default-{amp}', FASHION_MODEL, device, amp)))
    for amp in ('none', 'fp16', 'bf16'):
        listed.append((f'train DeiT-S 224 {amp}', lambda amp=amp: check_training(
            large, workdir / f'deit-{amp}', DEIT_S, device, amp, batch_size=32, max_steps=3)))
    listed += [
        ('fp16 --clip-grad', lambda: check_clipping(small, workdir / 'clip', device, 'fp16')),
        ('resume fp16', lambda: check_resume(small, workdir / 'resume', device, 'fp16')),
        ('Scala step DeiT-S', lambda: check_step_speed(device)),
        ('eval and pick', lambda: check_eval_and_pick(workdir / 'default-bf16', device)),
        ('serve burst', lambda: check_serve(workdir / 'default-bf16', image, device)),
    ]
    cache = workdir / 'compiled-cache'
    compile_options = ('--compile', '--compile-cache', str(cache))
    listed += [
        ('compiled widths', lambda: check_compiled_widths(device, workdir / 'widths-cache', granularity=0.25)),
        ('train --compile', lambda: check_compiled_training(small, workdir, device)),
        ('main job --compile', lambda: check_main_job(fashion, workdir, device)),
        ('eval, pick --compile', lambda: check_compiled_eval_and_pick(workdir / 'train-compiled', device, cache)),
        ('serve --compile', lambda: check_serve(workdir / 'train-compiled', image, device, options=compile_options)),
    ]
    return listed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--fashion-mnist', type=Path, default=FASHION_MNIST_ROOT,
                        help='folder of the four Fashion-MNIST *-ubyte.gz files')
    parser.add_argument('--workdir', type=Path, help='where runs are written (default: a temporary folder)')
    parser.add_argument('--only', metavar='TEXT', help='run only the checks whose name holds TEXT')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} sees no GPU here, so nothing was checked")
        return 0
    device = 'cuda'
    print(environment_line(device), flush=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix='scalavit-gpu-check-'))
    listed, failed = checks(workdir, args.fashion_mnist, device), 0
    listed = [(name, check) for name, check in listed if args.only is None or args.only in name]
    for name, check in listed:
        start = time.perf_counter()
        try:
            detail, status = check(), 'ok  '
        except Exception as error:  # one failing check must not hide the others
            traceback.print_exc(file=sys.stderr)
            detail, status = f"{type(error).__name__}: {error}", 'FAIL'
            failed += 1
        print(f"{status} {name:<22} {detail} [{time.perf_counter() - start:.1f} s]", flush=True)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{len(listed) - failed} passed, {failed} failed")
    return 1 if failed else 0

if __name__ == '__main__':
    sys.exit(main())
