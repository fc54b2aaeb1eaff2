"""What the controller learns while it serves: the rate requests arrive at, the time answers spend after their
forward, how fast the forwards run now against the profile, and how many of a cascade's requests go on.

The event loop writes some of these while the model thread reads them, and the other way round: each guards its own
state with a lock of its own, held only for arithmetic.
"""
import bisect
import collections
import math
import threading
from dataclasses import replace
from typing import Callable, Optional

from .policy import CascadePlan, Profile

RATE_WINDOW_S = 0.5  # the arrival rate the controller plans for: requests offered over this last stretch
SURGE_WINDOW_S = 0.1  # ... unless the last tenth of a second shows a surge that window cannot yet
SATURATED_HALF_LIFE_S = 2.0  # how long a rate that overran the server is expected back
CEILING_HOLD_S = 1.0  # after it last had to turn a request away, the server serves as at its ceiling this long ...
CEILING_MAX_HOLD_S = 10.0  # ... and up to this long while the load that overran it is still offered:
CEILING_SAME_LOAD = 0.8  # at least this share of the rate it was turned away at (a 0.5 s rate is ~10% noisy at 200/s)
OVERHEAD_WINDOW_S = 2.0  # the answers whose time outside the queue and the forward sets the reserve
TRACK_S = 0.3  # the machine's speed follows what the forwards of about this last stretch took
IDLE_GRACE_S = 1.0  # a server this long without a forward is idle, not slow ...
IDLE_HALF_LIFE_S = 2.0  # ... and what the speed taught fades back to the profile's
JUMP = math.log(1.3)  # a forward this far from its estimate (4 sigma of this CPU's noise) is a surprise
MAX_STEP = math.log(3)  # the largest change one forward can show (in log space)
CELL_WEIGHT = 0.2  # weight of one batch in its (width, batch size)'s own factor
FRESH_S = 1.0  # a cell that ran this recently plans with its own factor
REBUILD_S = 0.05  # the corrected profile is rebuilt at most this often
ESCALATION_SMOOTHING = 0.01  # weight of each request in the moving average of a cascade step's escalation rate


class ArrivalRate:
    """Requests a second offered (refused ones too) over the last ``RATE_WINDOW_S``; or over the last
    ``SURGE_WINDOW_S`` when that shows far more, so a flash crowd is planned for within a tenth of a second while
    Poisson noise (a few requests more than expected in a tenth of a second) is not taken for one; or, after the
    server had to refuse or drop requests, the rate it was saturated at, fading with ``SATURATED_HALF_LIFE_S``: a
    load that just overran the server is expected back, and what a wide batch in a lull costs is lost for good
    when it returns."""

    def __init__(self, window_s: float = RATE_WINDOW_S, surge_window_s: float = SURGE_WINDOW_S,
                 saturated_half_life_s: float = SATURATED_HALF_LIFE_S):
        self.window_s, self.saturated_half_life_s = window_s, saturated_half_life_s
        self.surge_windows = (surge_window_s / 4, surge_window_s / 2, surge_window_s)  # a surge's first 25 ms count
        self._arrivals: collections.deque[float] = collections.deque()
        self._saturated, self._saturated_at = 0.0, 0.0
        self._lock = threading.Lock()

    def note(self, now: float) -> None:
        with self._lock:
            self._arrivals.append(now)
            self._forget(now)

    def note_saturated(self, now: float) -> None:
        """The server refused or dropped a request at ``now``."""
        rate = self.current(now)
        with self._lock:
            if rate >= self._faded(now):
                self._saturated, self._saturated_at = rate, now

    def __call__(self, now: float, horizon_s: Optional[float] = None) -> float:
        """``horizon_s``: the SLO planned for; a surge shorter than a quarter of it is no rate to keep up with (a
        burst of twenty with seconds to spare is answered in time by any width)."""
        rate = self.current(now, horizon_s)
        with self._lock:
            return max(rate, self._faded(now))

    def current(self, now: float, horizon_s: Optional[float] = None) -> float:
        """The offered rate now, without the memory of saturation."""
        windows = [w for w in self.surge_windows if horizon_s is None or w >= horizon_s / 4]
        with self._lock:
            self._forget(now)
            count = len(self._arrivals)
            recent = {w: count - bisect.bisect_left(self._arrivals, now - w) for w in windows}
        rate = count / self.window_s
        for window, arrived in recent.items():
            expected = rate * window
            if arrived > expected + 3 * math.sqrt(expected) + 3:  # far beyond what the longer window predicts
                rate = max(rate, arrived / window)
        return rate

    def _faded(self, now: float) -> float:
        return self._saturated * 0.5 ** (max(0.0, now - self._saturated_at) / self.saturated_half_life_s)

    def _forget(self, now: float) -> None:
        while self._arrivals and self._arrivals[0] < now - self.window_s:
            self._arrivals.popleft()


class Ceiling:
    """Whether the server is at its ceiling: it turned a request away (refused it, or dropped it unanswered) for want
    of time, not for its own impossible SLO, within the last ``hold_s``; or within the last ``max_hold_s`` while the
    offered rate is still at least ``still`` times the rate that overran it (the same load is still here).

    There every forward wider than the cheapest takes the place of requests that will be turned away, whatever the
    profile says: the profile times the forward alone, not the share of the CPU the HTTP side, the decoders and a
    co-located job take from it. Released after the first second, a server still under the same load would go wide
    again and pay for it with the next wave of refusals; held for good, it would never learn that the load it
    could not serve at a wider width has become one it can: after ``max_hold_s`` it tries again."""

    def __init__(self, hold_s: float = CEILING_HOLD_S, max_hold_s: float = CEILING_MAX_HOLD_S,
                 still: float = CEILING_SAME_LOAD):
        self.hold_s, self.max_hold_s, self.still = hold_s, max_hold_s, still
        self._last = (-math.inf, 0.0)  # (when, offered rate): one tuple, replaced whole, so no lock

    def note(self, now: float, rate: float) -> None:
        self._last = (now, rate)

    def __call__(self, now: float, rate: float) -> bool:
        at, overran_at = self._last
        return now - at < self.hold_s or (now - at < self.max_hold_s and rate >= self.still * overran_at > 0)


class RecentPeak:
    """The 90th percentile of the values noted over the last ``window_s`` seconds, as if at least ten had been
    noted (the missing ones free): it follows what most recent answers cost, while one outlier (a stalled event
    loop, a garbage collection) never decides it, and it is back to zero once nothing renews it. Computed again at most every ``refresh_s``
    (every admission asks for it), or at once after a value above it."""

    def __init__(self, clock: Callable[[], float], window_s: float = OVERHEAD_WINDOW_S, at_least: int = 10,
                 refresh_s: float = 0.02):
        self.clock, self.window_s, self.at_least, self.refresh_s = clock, window_s, at_least, refresh_s
        self._values: collections.deque[tuple[float, float]] = collections.deque(maxlen=1000)
        self._lock = threading.Lock()
        self._value, self._at = 0.0, -math.inf

    def note(self, value: float) -> None:
        with self._lock:
            self._values.append((self.clock(), value))
            if value > self._value:  # it may raise the percentile: computed again at the next call
                self._at = -math.inf

    def __call__(self) -> float:
        now = self.clock()
        with self._lock:
            if now - self._at < self.refresh_s:
                return self._value
            while self._values and self._values[0][0] < now - self.window_s:
                self._values.popleft()
            values = sorted(value for _, value in self._values)
            count = max(len(values), self.at_least)
            rank = math.ceil(0.9 * count) - (count - len(values))  # in ``values``, past the free ones
            self._value, self._at = (max(0.0, values[rank - 1]) if rank >= 1 else 0.0), now
            return self._value


class Speed:
    """How fast the forwards run now against the profile, learned from every batch the server runs.

    The machine's factor (observed over profiled time, all widths together) follows the batches of about the last
    ``TRACK_S``: a co-located job, thermal throttling or a replica with fewer cores than profiled moves every width at
    once, and is followed within a fraction of a second under load. Each (width, batch size) that ran within
    ``FRESH_S`` plans with its own recent factor instead: where the profile is off for that cell alone (a batch size
    that suffers more than others from the HTTP side's share of the CPU), the cells in use are costed as they run,
    and the others as the machine runs. Factors are averaged in log space, so a speed-up is learned as fast as a
    slowdown, and one forward moves them at most as far as a threefold change would (a stalled batch is not a
    machine). Observed times are compared with the profile's median where it has one, so a machine running as
    profiled has a factor of 1 and plans with the profiled p95.
    """

    def __init__(self, profile: Profile, clock: Callable[[], float], track_s: float = TRACK_S,
                 idle_half_life_s: float = IDLE_HALF_LIFE_S):
        self.base, self.clock, self.track_s, self.idle_half_life_s = profile, clock, track_s, idle_half_life_s
        self._log_factor, self._at, self._count, self._surprise = 0.0, clock(), 0, 0.0
        self._cells: dict[tuple[float, int], tuple[float, float]] = {}  # cell -> (log factor, when last seen)
        self._observed: dict[tuple[float, int], float] = {}  # seconds, a moving average per cell
        self._lock = threading.Lock()
        self._profile, self._built_at = profile, -math.inf

    def factor(self) -> float:
        """Observed over profiled time now, machine-wide (fading back to 1 once no forward has renewed it for
        ``IDLE_GRACE_S``: a server that refused everything under a burst must accept again)."""
        with self._lock:
            return math.exp(self._current_log_factor(self.clock()))

    def _current_log_factor(self, now: float) -> float:
        idle = max(0.0, now - self._at - IDLE_GRACE_S)
        return self._log_factor * 0.5 ** (idle / self.idle_half_life_s)

    def observe(self, width: float, count: int, seconds: float) -> None:
        cell = self.base.cell(width, count)
        reference = self.base.typical(width, count)
        if not (seconds > 0 and reference > 0):
            return
        with self._lock:
            now = self.clock()
            machine = self._current_log_factor(now)
            own, seen = self._cells.get(cell, (machine, -math.inf))
            expected = own if now - seen <= FRESH_S else machine
            log_ratio = min(expected + MAX_STEP, max(expected - MAX_STEP, math.log(seconds / reference)))
            # two forwards in a row this far off, the same way: the machine changed (a job started or ended)
            surprise = log_ratio - expected
            jumped = abs(surprise) > JUMP and abs(self._surprise) > JUMP and surprise * self._surprise > 0
            self._surprise = surprise
            # a moving average of the last TRACK_S or so; a plain mean over the first forwards, which know nothing
            self._count += 1
            weight = max(1 / self._count, 0.8 if jumped else min(0.15, max(0.05, seconds / self.track_s)))
            self._log_factor, self._at = machine + weight * (log_ratio - machine), now
            cell_weight = 0.8 if jumped else CELL_WEIGHT
            own = log_ratio if now - seen > FRESH_S else own + cell_weight * (log_ratio - own)
            self._cells[cell] = (own, now)
            previous = self._observed.get(cell)
            self._observed[cell] = seconds if previous is None else previous + CELL_WEIGHT * (seconds - previous)

    def profile(self) -> Profile:
        """The profile the planner uses with the machine's factor (which it applies itself): the cells seen within
        ``FRESH_S`` at their own factor relative to the machine's, the others as profiled. Rebuilt at most every
        ``REBUILD_S``."""
        with self._lock:
            now = self.clock()
            if now - self._built_at >= REBUILD_S:
                machine = self._current_log_factor(now)
                fresh = {c: own - machine for c, (own, seen) in self._cells.items() if now - seen <= FRESH_S}
                latency = {c: p95 * math.exp(fresh.get(c, 0.0)) for c, p95 in self.base.latency.items()}
                self._profile = replace(self.base, latency=latency, cheapest_width=self.base.cheapest)
                self._built_at = now
            return self._profile

    def observed(self) -> dict[tuple[float, int], float]:
        """Each (width, profiled batch size)'s recent forward time in seconds, for the cells that ran."""
        with self._lock:
            return dict(self._observed)


class EscalationShare:
    """The share of a cascade's requests that reach each stage: calibrated, then moved by each answer (1% a
    request), so that the cascade is costed as it escalates on the traffic it serves."""

    def __init__(self, plan: Optional[CascadePlan]):
        self.plan = plan
        self._lock = threading.Lock()

    def learn(self, ran: collections.Counter, went_on: collections.Counter) -> Optional[CascadePlan]:
        """``ran``: stage -> requests answered there; ``went_on``: stage -> those of them that escalated."""
        with self._lock:
            plan = self.plan
            if plan is None or not ran:
                return plan
            steps = [after / before if before > 0 else 0.0 for before, after in zip(plan.reach, plan.reach[1:])]
            for stage, count in ran.items():
                if stage < len(steps):
                    weight = 1 - (1 - ESCALATION_SMOOTHING) ** count
                    steps[stage] += weight * (went_on[stage] / count - steps[stage])
            reach = [1.0]
            for step in steps:
                reach.append(reach[-1] * step)
            self.plan = replace(plan, reach=tuple(reach))
            return self.plan
