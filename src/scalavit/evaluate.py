"""Cost of every width: parameters, multiply-accumulates, latency."""
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .export import dense_state_dict
from .model import SlimmableVisionTransformer


def count_params(model: SlimmableVisionTransformer, width: float) -> int:
    """Parameters the sub-network ``width`` uses (what its standalone export holds)."""
    return sum(t.numel() for t in dense_state_dict(model, width).values())


@torch.no_grad()
def count_macs(model: SlimmableVisionTransformer, width: float, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates for one image at ``width``: ``torch.utils.flop_counter`` FLOPs / 2."""
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    with counter:
        model(torch.zeros(1, *input_size, device=next(model.parameters()).device), width)
    model.train(was_training)
    return counter.get_total_flops() // 2


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls (CUDA synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)
