"""Compiled widths against eager ones, and against ONNX Runtime, measured side by side in one run.

For every width of the model: batch-1 and batch-64 latency of ``model(x, width)`` (eager), of the width compiled by
``scalavit.compiled.CompiledWidths`` (torch.export + AOTInductor) and of the width's ONNX export run by ONNX Runtime
(as many threads as torch, as ``scalavit serve --onnxruntime`` runs it). The three are called in turn (ABC ABC ...)
so that drift of a noisy machine hits all alike; each round gives a median per implementation, and the table shows
the median ratio over ``--rounds`` rounds with its range. Before that: what each width took to compile into an empty
cache, and to load on a second start.

    python benchmarks/compile_speed.py                                    # the default model, 13 widths
    python benchmarks/compile_speed.py --model scala_vit_tiny_patch7_56 --rounds 3
    python benchmarks/compile_speed.py --train                            # the default main job, eager then compiled
    python benchmarks/compile_speed.py --train --compile-args=--compile-regional   # ... compiled block by block
    python benchmarks/compile_speed.py --train --warm-cache               # ... on a later run: inductor's cache filled
    python benchmarks/compile_speed.py --training-compile                 # compiling for training, cold then cached
                                                                          # (whole model, then --compile-regional)

``--train`` runs ``scalavit train`` (the default main job on Fashion-MNIST, or with ``--train-args``) twice, eager
then with ``--compile`` into an empty inductor cache (``--warm-cache``: one that a compiled run of one step filled
first), and prints the wall times with compilation and each run's final top-1 at every width.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

import scalavit  # noqa: F401  (registers the scala_* models)
from scalavit.compiled import CompiledWidths
from scalavit.serve.runner import OnnxRuntimeWidths


def round_medians(fns: dict, calls: int) -> dict:
    """One round: the implementations called in turn ``calls`` times, the median seconds of each."""
    times = {name: [] for name in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def train_runs(extra: list[str], compile_flags: list[str], warm_cache: bool = False) -> None:
    """The main job eager and compiled (``--compile`` and ``compile_flags``), one after the other: wall time and final
    accuracies. ``warm_cache``: the compiled run is a later run, whose inductor cache a one-step compiled run (not
    timed) filled first."""
    results = {}
    cache = 'inductor cache warm' if warm_cache else 'empty inductor cache'
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / 'inductor'))
        if warm_cache:
            subprocess.run([sys.executable, '-m', 'scalavit', 'train', '--output', str(Path(tmp) / 'warm-up'),
                            *extra, '--compile', *compile_flags, '--max-steps', '1'],
                           check=True, env=env)
        for name, flags in (('eager', []), ('compiled', ['--compile', *compile_flags])):
            start = time.perf_counter()
            subprocess.run([sys.executable, '-m', 'scalavit', 'train', '--output', str(Path(tmp) / name), *extra,
                            *flags], check=True, env=env)
            seconds = time.perf_counter() - start
            rows = [json.loads(line) for line in (Path(tmp) / name / 'log.jsonl').read_text().splitlines()]
            print(f"{name}: {seconds:.0f} s; training seconds of each epoch {[row['time_s'] for row in rows]}")
            results[name] = seconds, {k[len('top1@'):]: v for k, v in rows[-1].items() if k.startswith('top1@')}
    (eager_s, eager_top1), (compiled_s, compiled_top1) = results['eager'], results['compiled']
    print(f"\nscalavit train {' '.join(extra)}: eager {eager_s / 60:.1f} min, "
          f"{' '.join(['--compile', *compile_flags])} {compiled_s / 60:.1f} min "
          f"(compilation included, {cache}): ratio {compiled_s / eager_s:.2f}")
    print("| width | eager top-1 | compiled top-1 |\n|---|---|---|")
    for width in eager_top1:
        print(f"| {width} | {eager_top1[width]:.2f} | {compiled_top1[width]:.2f} |")
    print(f"| mean | {statistics.mean(eager_top1.values()):.2f} | {statistics.mean(compiled_top1.values()):.2f} |")


_COMPILE_FOR_TRAINING = """
import contextlib, sys, time, timm, torch, scalavit
from scalavit.compiled_training import compile_for_training
model = timm.create_model(sys.argv[1]).train()
start = time.perf_counter()
compile_for_training(model, model.widths, torch.zeros(128, *model.pretrained_cfg['input_size']),
                     contextlib.nullcontext, progress=False, regional=sys.argv[2] == 'regional')
print(time.perf_counter() - start)
"""


def training_compile_times(model_name: str) -> None:
    """What ``scalavit train --compile`` spends compiling (batch 128), whole model and ``--compile-regional``: each in
    a fresh process with an empty inductor cache, then in another fresh process with the cache the first one left."""
    for scope in ('whole', 'regional'):
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tmp)
            seconds = [float(subprocess.run([sys.executable, '-c', _COMPILE_FOR_TRAINING, model_name, scope], env=env,
                                            check=True, capture_output=True, text=True).stdout.split()[-1])
                       for _ in range(2)]
        print(f"{model_name}, {scope}: compiling every width's forward and backward for training: {seconds[0]:.1f} s "
              f"with an empty inductor cache, {seconds[1]:.1f} s on a second start", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='scala_vit_mini_patch7_28')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 64])
    parser.add_argument('--rounds', type=int, default=5, help='rounds per (width, batch size); the table shows the '
                                                              'median ratio and its range over them')
    parser.add_argument('--seconds', type=float, default=0.4, help='time per implementation in a round (about)')
    parser.add_argument('--train', action='store_true', help='time the main job eager and with --compile instead')
    parser.add_argument('--train-args', default='', help="options for both training runs, e.g. '--epochs 2'")
    parser.add_argument('--compile-args', default='', help="options for the compiled run, e.g. '--compile-regional'")
    parser.add_argument('--warm-cache', action='store_true', help='--train: fill the inductor cache first (a compiled '
                                                                  'run of one step, not timed), as on a later run')
    parser.add_argument('--training-compile', action='store_true',
                        help="time compiling for training instead, cold then from inductor's cache")
    args = parser.parse_args()
    if args.training_compile:
        return training_compile_times(args.model)
    if args.train:
        return train_runs(args.train_args.split(), args.compile_args.split(), args.warm_cache)

    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    input_size = model.pretrained_cfg['input_size']
    print(f"{args.model}, {len(model.widths)} widths, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"fp32, CPU")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / 'cache'
        cold = CompiledWidths(model, cache_dir=cache)
        compiled = CompiledWidths(model, cache_dir=cache)
        assert all(compiled.cached.values()) and not any(cold.cached.values())
        print(f"\ncompile, empty cache: {sum(cold.seconds.values()):.1f} s for {len(model.widths)} widths, "
              f"{spread(list(cold.seconds.values()))} s each; second start (cache): "
              f"{sum(compiled.seconds.values()):.1f} s, {spread(list(compiled.seconds.values()))} s each")
        onnxruntime_widths = OnnxRuntimeWidths(model, Path(tmp) / 'onnx', torch.get_num_threads())
        for batch_size in args.batch_sizes:
            x = torch.randn(batch_size, *input_size)
            print(f"\nbatch {batch_size}: median ms of each implementation (over its rounds), and the ratios' median "
                  f"(range) over {args.rounds} rounds")
            print("| width | eager ms | compiled ms | ONNX Runtime ms | compiled / eager | ONNX Runtime / eager |")
            print("|---|---|---|---|---|---|")
            for width in model.widths:
                fns = {'eager': lambda: model(x, width), 'compiled': lambda: compiled(x, width),
                       'ort': lambda: onnxruntime_widths(x, width)}
                with torch.inference_mode():
                    torch.testing.assert_close(compiled(x, width), model(x, width), atol=1e-5, rtol=1e-5)
                    probe = round_medians(fns, 3)
                    calls = max(5, min(400, int(args.seconds / max(probe.values()))))
                    rounds = [round_medians(fns, calls) for _ in range(args.rounds)]
                ms = {name: 1e3 * statistics.median(r[name] for r in rounds) for name in fns}
                print(f"| {width:g} | {ms['eager']:.3f} | {ms['compiled']:.3f} | {ms['ort']:.3f} | "
                      f"{spread([r['compiled'] / r['eager'] for r in rounds])} | "
                      f"{spread([r['ort'] / r['eager'] for r in rounds])} |", flush=True)


if __name__ == '__main__':
    main()
