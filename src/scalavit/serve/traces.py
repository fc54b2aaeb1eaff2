"""Offered load and the machine's speed over time, as the simulator and the load benchmark replay them.

A ``Trace`` is a sequence of phases, each with a rate (constant, or a linear ramp) and a burstiness (the squared
coefficient of variation of the gaps between requests: 1 for Poisson arrivals, more for gamma bursts). Its arrivals
are drawn by time-rescaling a renewal process of unit rate, deterministic from a seed. Rates are given relative to two
rates of the profile at hand: the full width's capacity one request at a time (``full``) and the smallest width's
ceiling at its most efficient batch (``ceiling``), so one trace means the same on any machine.

A ``Slowdown`` is the factor every forward takes longer than profiled, over time: a co-located job, thermal
throttling, a step speed-up, a replica with half the cores.
"""
import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    rate: float  # requests a second at its start
    end_rate: Optional[float] = None  # a linear ramp to this rate by its end; None: constant
    cv2: float = 1.0  # burstiness: 1 Poisson, above 1 gamma bursts and lulls

    @property
    def final_rate(self) -> float:
        return self.rate if self.end_rate is None else self.end_rate

    def offset(self, work: np.ndarray) -> np.ndarray:
        """Seconds into the phase at which its cumulative intensity reaches ``work`` (the inverse of
        r0 t + (r1 - r0) t^2 / 2T)."""
        r0, r1, length = self.rate, self.final_rate, self.seconds
        slope = (r1 - r0) / length
        if abs(slope) < 1e-12:
            return work / r0
        return (-r0 + np.sqrt(np.maximum(r0 * r0 + 2 * slope * work, 0.0))) / slope


@dataclass(frozen=True)
class Trace:
    name: str
    phases: tuple[Phase, ...]

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def scaled(self, factor: float) -> 'Trace':
        return replace(self, phases=tuple(replace(p, rate=p.rate * factor, end_rate=None if p.end_rate is None
                                                  else p.end_rate * factor) for p in self.phases))

    def arrivals(self, seed: int) -> tuple[np.ndarray, list[str]]:
        """Arrival times (seconds from the start) and the phase of each."""
        rng = np.random.default_rng(seed)
        times, phases, start = [], [], 0.0
        for phase in self.phases:
            total = (phase.rate + phase.final_rate) / 2 * phase.seconds  # requests the phase expects
            if total <= 0:
                start += phase.seconds
                continue
            count = int(total + 6 * math.sqrt(total * max(phase.cv2, 1.0)) + 20)
            if phase.cv2 == 1.0:
                gaps = rng.exponential(1.0, count)
            else:  # gamma with shape 1 / CV^2 and mean 1
                gaps = rng.gamma(1 / phase.cv2, phase.cv2, count)
            work = np.cumsum(gaps)
            work = work[work < total]
            times.append(start + phase.offset(work))
            phases.extend([phase.name] * len(work))
            start += phase.seconds
        return (np.concatenate(times) if times else np.zeros(0)), phases


def project_load(full: float, ceiling: float, seconds: float = 15.0) -> Trace:
    """The load benchmark's schedule: 0.5x, 4x and 0.5x the full width's capacity, then gamma bursts at 1x."""
    return Trace('load', (Phase('low', seconds, 0.5 * full), Phase('high', seconds, 4 * full),
                          Phase('low again', seconds, 0.5 * full), Phase('bursty', seconds, full, cv2=4.0)))


def flash_crowd(full: float, ceiling: float, peak: float = 0.9, seconds: float = 10.0) -> Trace:
    """From quiet (0.3x the full width's capacity) to ``peak`` times the smallest width's ceiling within a fifth of a
    second, held, then quiet again."""
    quiet = 0.3 * full
    return Trace(f'flash {peak:g}', (Phase('quiet', seconds, quiet),
                                      Phase('flash', 0.2, quiet, peak * ceiling),
                                      Phase('flash', 1.5 * seconds, peak * ceiling),
                                      Phase('after', seconds, quiet)))


def square_wave(full: float, ceiling: float, cycles: int = 5, seconds: float = 3.0) -> Trace:
    """On and off: 0.8x the smallest width's ceiling, then 0.3x the full width's capacity, ``cycles`` times."""
    phases = []
    for _ in range(cycles):
        phases += [Phase('on', seconds, 0.8 * ceiling), Phase('off', seconds, 0.3 * full)]
    return Trace('square', tuple(phases))


def ramp(full: float, ceiling: float, seconds: float = 20.0) -> Trace:
    """Up from 0.3x the full width's capacity to 0.9x the smallest width's ceiling, and down again."""
    return Trace('ramp', (Phase('up', seconds, 0.3 * full, 0.9 * ceiling),
                          Phase('down', seconds, 0.9 * ceiling, 0.3 * full)))


def diurnal(full: float, ceiling: float, seconds: float = 40.0, steps: int = 8) -> Trace:
    """A day compressed into ``seconds``: a sine between 0.3x the full width's capacity and 0.8x the ceiling."""
    low, high = 0.3 * full, 0.8 * ceiling

    def rate(t):
        return low + (high - low) * (1 - math.cos(2 * math.pi * t)) / 2
    step = seconds / steps
    names = ('night', 'morning', 'noon', 'evening')
    return Trace('diurnal', tuple(Phase(names[i * len(names) // steps], step, rate(i / steps), rate((i + 1) / steps))
                                  for i in range(steps)))


def steady(full: float, ceiling: float, seconds: float = 30.0) -> Trace:
    """Poisson arrivals at twice the full width's capacity."""
    return Trace('poisson', (Phase('steady', seconds, 2 * full),))


def bursts(full: float, ceiling: float, seconds: float = 30.0) -> Trace:
    """Gamma bursts (CV^2 = 8) at half the smallest width's ceiling on average."""
    return Trace('gamma', (Phase('bursts', seconds, 0.5 * ceiling, cv2=8.0),))


TRACES: dict[str, Callable[[float, float], Trace]] = {
    'load': project_load, 'flash': flash_crowd, 'flash-past': lambda f, c: flash_crowd(f, c, peak=1.3),
    'square': square_wave, 'ramp': ramp, 'diurnal': diurnal, 'poisson': steady, 'gamma': bursts}


@dataclass(frozen=True)
class Slowdown:
    """How many times longer than profiled every forward takes, over time: linear between ``points`` (seconds,
    factor), constant before the first and after the last."""

    name: str
    points: tuple[tuple[float, float], ...]

    def at(self, t: float) -> float:
        times = [p[0] for p in self.points]
        return float(np.interp(t, times, [p[1] for p in self.points]))


def machine(name: str, seconds: float) -> Slowdown:
    """The resource patterns: ``steady``; ``colocated`` (a job halves the speed for the middle third);
    ``thermal`` (a gradual slowdown to 1.6x); ``speedup`` (from as profiled to 0.6x halfway, as when the job that
    shared the machine while it was profiled ends); ``halved`` (a replica with half the profiled cores)."""
    patterns = {
        'steady': ((0.0, 1.0),),
        'colocated': ((seconds / 3 - 1e-3, 1.0), (seconds / 3, 2.0), (2 * seconds / 3, 2.0),
                      (2 * seconds / 3 + 1e-3, 1.0)),
        'thermal': ((0.0, 1.0), (seconds, 1.6)),
        'speedup': ((seconds / 2 - 1e-3, 1.0), (seconds / 2, 0.6)),
        'halved': ((0.0, 2.0),),
    }
    if name not in patterns:
        raise ValueError(f"unknown resource pattern {name!r}; choose {', '.join(patterns)}")
    return Slowdown(name, patterns[name])


MACHINES = ('steady', 'colocated', 'thermal', 'speedup', 'halved')
