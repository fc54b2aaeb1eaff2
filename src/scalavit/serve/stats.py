"""The server's recent history, second by second (``GET /stats``): what a live page or a script reads to watch the
controller adapt. Plain bookkeeping under one short lock: it never waits on the model thread."""
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

WINDOW_S = 300


@dataclass
class Second:
    offered: int = 0        # inference requests that got any answer (200, 4xx, 503, ...)
    answered: int = 0       # of those, 200
    refused: int = 0        # refused or dropped with 503
    missed: int = 0         # answered, but after their deadline
    latencies_ms: list = field(default_factory=list)
    widths: Counter = field(default_factory=Counter)
    batch_sizes: Counter = field(default_factory=Counter)
    speeds: list = field(default_factory=list)  # each forward's time over its profiled median

    def summary(self, ago: int) -> dict:
        latencies = np.asarray(self.latencies_ms)
        percentile = (lambda q: round(float(np.percentile(latencies, q)), 2)) if len(latencies) else (lambda q: None)
        widths = sum(w * n for w, n in self.widths.items())
        return dict(ago_s=ago, offered=self.offered, answered=self.answered, refused=self.refused,
                    missed=self.missed, p50_ms=percentile(50), p95_ms=percentile(95), p99_ms=percentile(99),
                    mean_width=round(widths / sum(self.widths.values()), 4) if self.widths else None,
                    speed=round(float(np.exp(np.mean(np.log(self.speeds)))), 3) if self.speeds else None,
                    widths={f'{w:g}': n for w, n in sorted(self.widths.items())},
                    batch_sizes={str(b): n for b, n in sorted(self.batch_sizes.items())})


class LiveStats:
    """The last ``window_s`` seconds, one ``Second`` each (seconds without events are listed empty)."""

    def __init__(self, window_s: int = WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.window_s, self.clock = window_s, clock
        self.seconds: deque[tuple[int, Second]] = deque()
        self.lock = threading.Lock()

    def _now(self) -> Second:
        second = int(self.clock())
        if not self.seconds or self.seconds[-1][0] != second:
            self.seconds.append((second, Second()))
            while self.seconds[0][0] <= second - self.window_s:
                self.seconds.popleft()
        return self.seconds[-1][1]

    def responded(self, status: int) -> None:
        with self.lock:
            now = self._now()
            now.offered += 1
            now.answered += status == 200

    def answered(self, latency_s: float, width: float, missed: bool) -> None:
        with self.lock:
            now = self._now()
            now.latencies_ms.append(1e3 * latency_s)
            now.widths[width] += 1
            now.missed += missed

    def refused(self) -> None:
        with self.lock:
            self._now().refused += 1

    def batch(self, size: int, speed: float) -> None:
        with self.lock:
            now = self._now()
            now.batch_sizes[size] += 1
            now.speeds.append(speed)

    def snapshot(self, last_s: int) -> list[dict]:
        """The last ``last_s`` seconds, oldest first, the current (unfinished) second last."""
        with self.lock:
            now = int(self.clock())
            recorded = {second: record for second, record in self.seconds if second > now - last_s}
        return [recorded.get(second, Second()).summary(now - second) for second in range(now - last_s + 1, now + 1)]
