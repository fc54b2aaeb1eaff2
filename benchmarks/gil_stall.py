"""How long a forward keeps the other Python threads waiting, per serving backend.

`scalavit serve` answers HTTP on one thread while the model runs batches on another: a backend that holds Python's
GIL for a whole forward makes every request wait behind the batch in progress. This runs forwards of one width on a
second thread, the way the server's model thread does, while the main thread wakes every millisecond, and prints the
longest and the 99th-percentile gap between its wake-ups (eager; AOTInductor's package, which `eval` and `pick` run;
the in-process inductor build with its C++ wrapper, which `serve --compile` runs on the CPU; ONNX Runtime), beside
the forward's time, the time of one image alone, and the time each backend took to build (or load from its cache).

    python benchmarks/gil_stall.py --checkpoint runs/serve-tiny56 --threads 1
"""
import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from scalavit.checkpoint import load_model
from scalavit.compiled import CompiledWidths, JitCompiledWidths
from scalavit.serve.runner import OnnxRuntimeWidths


def stalls(forward, x: torch.Tensor, width: float, calls: int) -> tuple[float, float, float]:
    """The mean forward, and the longest and the p99 gap between the main thread's 1 ms wake-ups, in ms, while
    another thread runs ``calls`` forwards."""
    with torch.inference_mode():
        forward(x, width)  # warm
    done = threading.Event()

    def model_thread():
        with torch.inference_mode():
            for _ in range(calls):
                forward(x, width)
        done.set()

    thread = threading.Thread(target=model_thread)
    gaps, start = [], time.perf_counter()
    thread.start()
    last = time.perf_counter()
    while not done.is_set():
        time.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    thread.join()
    elapsed = time.perf_counter() - start
    return 1e3 * elapsed / calls, 1e3 * max(gaps), 1e3 * float(np.percentile(gaps, 99))


def batch_one(forward, x: torch.Tensor, width: float, calls: int) -> float:
    """The mean ms of a forward of ``x`` (one image) on this thread."""
    with torch.inference_mode():
        for _ in range(10):
            forward(x, width)
        start = time.perf_counter()
        for _ in range(calls):
            forward(x, width)
    return 1e3 * (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True)
    parser.add_argument('--width', type=float, default=1.0)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--calls', type=int, default=20)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)[0].eval()
    x = torch.randn(args.batch_size, model.in_chans, *model.patch_embed.img_size)
    with tempfile.TemporaryDirectory() as folder:
        makers = {'eager': lambda: model,
                  'compiled (AOTInductor)': lambda: CompiledWidths(model, widths=[args.width], progress=False),
                  'compiled (torch.compile, C++ wrapper)': lambda: JitCompiledWidths(model, widths=[args.width],
                                                                                     progress=False),
                  'onnxruntime': lambda: OnnxRuntimeWidths(model, Path(folder), args.threads, widths=[args.width])}
        backends, built = {}, {}
        for name, make in makers.items():
            start = time.perf_counter()
            backends[name] = make()
            built[name] = time.perf_counter() - start
        print(f"{args.checkpoint}, width {args.width:g}, batch {args.batch_size}, {args.threads} thread(s), "
              f"{args.calls} forwards a run, {args.repeats} runs in rotated order: median [min, max]")
        rows = {name: [] for name in backends}
        for repeat in range(args.repeats):
            names = list(backends)[repeat % len(backends):] + list(backends)[:repeat % len(backends)]
            for name in names:
                rows[name].append((batch_one(backends[name], x[:1], args.width, 10 * args.calls),
                                   *stalls(backends[name], x, args.width, args.calls)))
    print(f'| backend | built or loaded s | batch-1 ms | batch-{args.batch_size} ms | longest stall ms | p99 stall ms |')
    print('|---|---|---|---|---|---|')
    for name, runs in rows.items():
        columns = [np.array(column) for column in zip(*runs)]  # batch 1, forward, longest, p99
        print(f'| {name} | {built[name]:.1f} | '
              + ' | '.join(f'{np.median(c):.2f} [{c.min():.2f}, {c.max():.2f}]' for c in columns) + ' |')


if __name__ == '__main__':
    main()
