"""Where the default model's batch-1 time goes on a GPU: eager calls at three widths against the dense timm model of
the same architecture, the kernels one call launches, and the same call replayed as a CUDA graph. Results: docs/gpu.md.

    PYTHONPATH=src python benchmarks/cuda_overhead.py          # needs a CUDA device
"""
import statistics
import time

import timm
import torch
from torch.profiler import ProfilerActivity, profile

from scalavit import to_timm
from scalavit.model import FASHION_MODEL


def median_ms(fn, calls: int = 200, warmup: int = 20) -> str:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return f"{statistics.median(times) * 1e3:.3f} ms"


def graph_of(model, x, width):
    """``model(x, width)`` captured as a CUDA graph (after warm-up on a side stream, as PyTorch's docs do)."""
    graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model(x, width)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        model(x, width)
    return graph


def main() -> None:
    model = timm.create_model(FASHION_MODEL).cuda().eval()
    x = torch.randn(1, *model.pretrained_cfg['input_size'], device='cuda')
    with torch.inference_mode():
        print('synchronize alone', median_ms(torch.cuda.synchronize))
        for width in (0.25, 0.5, 1.0):
            print(f'eager, width {width}', median_ms(lambda: model(x, width)))
        dense = to_timm(model, 1.0).cuda().eval()
        print('dense timm model, same architecture', median_ms(lambda: dense(x)))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
            model(x, 1.0)
            torch.cuda.synchronize()
        events = profiler.key_averages()
        kernels = sum(e.count for e in events if e.device_type.name == 'CUDA')
        gpu_us = sum(e.self_device_time_total for e in events)
        print(f'one call: {kernels} CUDA kernels, {gpu_us:.0f} us of GPU time')
        graph = graph_of(model, x, 1.0)
    print('CUDA graph replay, width 1.0', median_ms(graph.replay))


if __name__ == '__main__':
    main()
