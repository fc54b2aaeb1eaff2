"""The controller on a simulated clock: the real ``Batcher``, planner and policy, fed a trace's arrivals, with
forwards that take what a measured profile says (its median, with the spread its p95 shows) times what the machine
does at that moment (``traces.Slowdown``). Deterministic from a seed; about 100 µs of CPU a simulated request.

What it leaves out, and the real server has: the HTTP side's time (``overhead_s`` stands for it), and the CPU that
the client and the HTTP side take from the forwards under load.

    outcomes = simulate(profile, SlackFit(), trace, machine('colocated', trace.seconds), slo_s=0.1, seed=0)
    figures = summarise(outcomes, profile.accuracy)
"""
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .batcher import Batcher, Missed, Refused
from .policy import Fixed, Policy, Profile, SlackFit
from .traces import Slowdown, Trace

Z95 = 1.6449  # the standard normal's 95th percentile
DEFAULT_SPREAD = 0.08  # log-normal sigma of a forward's time where the profile has no median to show it


@dataclass
class Outcome:
    arrival: float
    phase: str
    status: str  # 'in time', 'late', 'refused' or 'missed' (dropped from the queue)
    width: Optional[float] = None
    latency_s: Optional[float] = None
    needless: bool = False  # refused although the smallest width could have answered it in time


class SimulatedClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Machine:
    """What a forward really takes: the profile's median (or its p95 less the default spread), a log-normal draw
    with the spread between the two, times the slowdown at its start. The draw is the seed's for the millisecond the
    forward starts in, so two policies replayed on the same trace meet the same luck at the same moments (common
    random numbers: their difference is theirs, not the dice's)."""

    def __init__(self, profile: Profile, slowdown: Slowdown, seed: int, seconds: float, noise: bool = True):
        self.profile, self.slowdown = profile, slowdown
        self.draws = np.random.default_rng(seed).standard_normal(int(seconds * 1000) + 2) * noise

    def spread(self, width: float, count: int) -> float:
        if self.profile.median is None:
            return DEFAULT_SPREAD
        return max(0.0, math.log(self.profile.p95(width, count) / self.profile.typical(width, count))) / Z95

    def forward(self, width: float, count: int, now: float) -> float:
        sigma = self.spread(width, count)
        median = self.profile.typical(width, count) if self.profile.median is not None else (
            self.profile.p95(width, count) * math.exp(-Z95 * sigma))
        draw = self.draws[min(int(now * 1000), len(self.draws) - 1)]
        return median * math.exp(sigma * draw) * self.slowdown.at(now)


def simulate(profile: Profile, policy: Policy, trace: Trace, slowdown: Slowdown, slo_s: float = 0.1,
             seed: int = 0, max_queue: int = 256, overhead_s: float = 0.0, noise: bool = True) -> list[Outcome]:
    """Replays ``trace`` against a batcher with ``policy``; every request's outcome, in arrival order. Without
    ``noise`` every forward takes its median (times the slowdown): two policies then differ by their decisions
    alone, where with it, in overload, the dice alone move attainment by a few thousandths."""
    times, phases = trace.arrivals(seed)
    clock = SimulatedClock()
    machine = Machine(profile, slowdown, seed + 1, trace.seconds + 10 * slo_s, noise)
    batcher = Batcher(None, profile, policy, max_queue, clock=clock, confidence=lambda output: 1.0)
    for width, count in profile.check_cells():  # as the server checks its profile before it is ready
        batcher.speed.observe(width, count, machine.forward(width, count, 0.0))
    outcomes = [Outcome(float(t), phase, 'refused') for t, phase in zip(times, phases)]
    futures: dict[int, object] = {}
    running = None  # (end, batch, start)
    index = 0
    while index < len(times) or running is not None or len(batcher):
        if running is None and len(batcher):
            batch, dropped = batcher.take(clock.now)
            batcher.resolve(dropped)
            if batch is not None and batcher.start_batch(batch).requests:
                took = machine.forward(batch.width, len(batch.requests), clock.now)
                running = (clock.now + took, batch, clock.now)
            continue
        arrival = times[index] if index < len(times) else math.inf
        if running is not None and running[0] <= arrival:
            clock.now, (end, batch, start) = running[0], running
            batcher.finish(batch, [None] * len(batch.requests), start, end)
            for _ in batch.requests if overhead_s else ():
                batcher.note_overhead(overhead_s)
            running = None
            continue
        clock.now = float(arrival)
        try:
            futures[index] = batcher.submit(index, slo_s)
        except Refused:
            busy_s = 0.0 if running is None else running[0] - clock.now
            outcomes[index].needless = could_have_answered(profile, slowdown.at(clock.now), busy_s,
                                                           batcher.queue.due_before(clock.now + slo_s), slo_s)
        index += 1
    for index, future in futures.items():
        outcome = outcomes[index]
        if isinstance(future.exception(timeout=0), Missed):
            outcome.status = 'missed'
            continue
        answer = future.result(timeout=0)
        outcome.width, outcome.latency_s = answer.width, answer.queue_s + answer.compute_s + overhead_s
        outcome.status = 'in time' if outcome.latency_s <= slo_s else 'late'
    return outcomes


def could_have_answered(profile: Profile, factor: float, busy_s: float, ahead: int, slo_s: float) -> bool:
    """Whether the smallest width alone, at the machine's true speed, could have answered a request after the batch
    in the forward and the ``ahead`` requests due before it (at its best typical rate, then one forward at its
    p95)."""
    cheapest = profile.cheapest
    return busy_s + factor * (ahead / profile.typical_rate(cheapest) + profile.latency[(cheapest, 1)]) <= slo_s


# What the outcomes say


def figures(outcomes: list[Outcome], accuracy: dict[float, float]) -> dict:
    """Attainment (answered within the SLO, of all offered), the accuracy of the answers, the accuracy per offered
    request (a miss counts as wrong), the mean width, and the refusals (the needless ones apart)."""
    offered = len(outcomes)
    answered = [o for o in outcomes if o.width is not None]
    in_time = [o for o in answered if o.status == 'in time']
    latencies = [o.latency_s for o in answered]
    return dict(
        offered=offered,
        attainment=len(in_time) / offered if offered else 1.0,
        accuracy=float(np.mean([accuracy[o.width] for o in answered])) if answered else None,
        accuracy_per_offered=sum(accuracy[o.width] for o in in_time) / offered if offered else None,
        mean_width=float(np.mean([o.width for o in answered])) if answered else None,
        refused=sum(o.status == 'refused' for o in outcomes),
        needless_refusals=sum(o.needless for o in outcomes),
        missed=sum(o.status == 'missed' for o in outcomes),
        p99_ms=float(1e3 * np.percentile(latencies, 99)) if latencies else None)


def summarise(outcomes: list[Outcome], accuracy: dict[float, float]) -> dict:
    """``figures`` over the whole trace and for each phase (in order of appearance)."""
    names = list(dict.fromkeys(o.phase for o in outcomes))
    return dict(overall=figures(outcomes, accuracy),
                phases={name: figures([o for o in outcomes if o.phase == name], accuracy) for name in names})


def fluid_bound(profile: Profile, trace: Trace, slowdown: Slowdown, seed: int = 0, bin_s: float = 1.0) -> dict:
    """An upper bound on the accuracy per offered request: in each ``bin_s`` of the trace, the most accurate mix of
    widths (or no answer) whose cost, at each width's most efficient batch and the machine's speed then, fits in
    that time. Overall and per phase."""
    times, phases = trace.arrivals(seed)
    hull = _upper_hull(profile)
    bins = np.floor(times / bin_s).astype(int)
    counts = np.bincount(bins) if len(bins) else np.zeros(0)
    value = np.zeros(len(times))
    for b, count in enumerate(counts):
        if count:
            factor = float(np.mean([slowdown.at(b * bin_s + f * bin_s) for f in (0.0, 0.25, 0.5, 0.75, 1.0)]))
            value[bins == b] = _on_hull(hull, bin_s / (count * factor))
    names = list(dict.fromkeys(phases))
    by_phase = {name: float(np.mean([v for v, p in zip(value, phases) if p == name])) for name in names}
    return dict(overall=float(np.mean(value)) if len(value) else None, phases=by_phase)


def _upper_hull(profile: Profile) -> list[tuple[float, float]]:
    """The upper concave hull of (seconds a request, accuracy) over the widths at their most efficient batch,
    from (0, 0): not answering at all."""
    points = sorted({(0.0, 0.0)} | {(1 / _typical_rate(profile, w), profile.accuracy[w]) for w in profile.widths})
    hull: list[tuple[float, float]] = []
    for point in points:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) >= 0:
            hull.pop()
        if not hull or point[1] > hull[-1][1]:
            hull.append(point)
    return hull


def _typical_rate(profile: Profile, width: float) -> float:
    return max(b / profile.typical(width, b) for b in profile.batch_sizes)


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _on_hull(hull: list[tuple[float, float]], budget_s: float) -> float:
    """The best accuracy a request can have on average with ``budget_s`` seconds of forward each."""
    if budget_s >= hull[-1][0]:
        return hull[-1][1]
    return float(np.interp(budget_s, [p[0] for p in hull], [p[1] for p in hull]))


def served_profile(widths: dict) -> Profile:
    """The profile a server planned with, from its ``/widths`` answer (p95 and median, each width's top-1)."""
    rows = widths['profile']
    return Profile({(r['width'], int(b)): ms / 1e3 for r in rows for b, ms in r['p95_ms'].items()},
                   {r['width']: r['top1'] for r in rows},
                   median={(r['width'], int(b)): ms / 1e3 for r in rows for b, ms in r['median_ms'].items()})


def fixed_widths(profile: Profile) -> list[Policy]:
    return [Fixed(width) for width in profile.widths]


def compare(profile: Profile, trace: Trace, slowdown: Slowdown, slo_s: float = 0.1, seed: int = 0,
            policies: Optional[list[Policy]] = None, overhead_s: float = 0.0) -> dict[str, dict]:
    """Every policy (SlackFit and each fixed width unless told) on the same trace and machine: their ``summarise``."""
    policies = policies or [SlackFit(), *fixed_widths(profile)]
    return {policy.name: summarise(simulate(profile, policy, trace, slowdown, slo_s, seed, overhead_s=overhead_s),
                                   profile.accuracy)
            for policy in policies}
