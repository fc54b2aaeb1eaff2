"""What the controller learns while it serves: the rate requests arrive at, the time answers spend after their
forward, how fast the forwards run now against the profile, and how many of a cascade's requests go on.

The event loop writes some of these while the model thread reads them, and the other way round: each guards its own
state with a lock of its own, held only for arithmetic.
"""
import collections
import math
import threading
from dataclasses import replace
from typing import Callable, Optional

from .policy import CascadePlan, Profile

RATE_WINDOW_S = 0.5  # the arrival rate the controller plans for: requests offered over this last stretch
SURGE_WINDOW_S = 0.1  # ... unless the last tenth of a second shows a surge that window cannot yet
OVERHEAD_WINDOW_S = 2.0  # the answers whose time outside the queue and the forward sets the reserve
TRACK_S = 0.3  # the machine's speed follows what the forwards of about this last stretch took
IDLE_HALF_LIFE_S = 2.0  # with no forward to renew it, what the speed taught fades back to the profile's
MAX_STEP = math.log(3)  # the largest change one forward can show (in log space)
CELL_WEIGHT = 0.01  # weight of one batch in its (width, batch size)'s own correction
ESCALATION_SMOOTHING = 0.01  # weight of each request in the moving average of a cascade step's escalation rate


class ArrivalRate:
    """Requests a second offered (refused ones too) over the last ``RATE_WINDOW_S``, or over the last
    ``SURGE_WINDOW_S`` when that shows significantly more: a flash crowd is planned for within a tenth of a second,
    while Poisson noise in a tenth of a second (a few requests more than expected) is not taken for one."""

    def __init__(self, window_s: float = RATE_WINDOW_S, surge_window_s: Optional[float] = None):
        self.window_s, self.surge_window_s = window_s, surge_window_s
        self._arrivals: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def note(self, now: float) -> None:
        with self._lock:
            self._arrivals.append(now)
            self._forget(now)

    def __call__(self, now: float) -> float:
        with self._lock:
            self._forget(now)
            count = len(self._arrivals)
            recent = 0 if self.surge_window_s is None else count - self._bisect(now - self.surge_window_s)
        rate = count / self.window_s
        if self.surge_window_s is None:
            return rate
        expected = rate * self.surge_window_s
        if recent > expected + 3 * math.sqrt(expected) + 3:  # far beyond what the longer window predicts
            return max(rate, recent / self.surge_window_s)
        return rate

    def _forget(self, now: float) -> None:
        while self._arrivals and self._arrivals[0] < now - self.window_s:
            self._arrivals.popleft()

    def _bisect(self, since: float) -> int:
        low, high = 0, len(self._arrivals)
        while low < high:
            middle = (low + high) // 2
            if self._arrivals[middle] < since:
                low = middle + 1
            else:
                high = middle
        return low


class RecentPeak:
    """The 90th percentile of the values noted over the last ``window_s`` seconds, as if at least ten had been
    noted (the missing ones free): it follows what most recent answers cost, while one outlier (a stalled event
    loop, a garbage collection) never decides it, and it is back to zero once nothing renews it."""

    def __init__(self, clock: Callable[[], float], window_s: float = OVERHEAD_WINDOW_S, at_least: int = 10):
        self.clock, self.window_s, self.at_least = clock, window_s, at_least
        self._values: collections.deque[tuple[float, float]] = collections.deque(maxlen=1000)
        self._lock = threading.Lock()

    def note(self, value: float) -> None:
        with self._lock:
            self._values.append((self.clock(), value))

    def __call__(self) -> float:
        since = self.clock() - self.window_s
        with self._lock:
            while self._values and self._values[0][0] < since:
                self._values.popleft()
            values = sorted(value for _, value in self._values)
        count = max(len(values), self.at_least)
        rank = math.ceil(0.9 * count) - (count - len(values))  # in ``values``, past the free ones
        return max(0.0, values[rank - 1]) if rank >= 1 else 0.0


class Speed:
    """How fast the forwards run now against the profile, learned from every batch the server runs.

    Two parts. The machine's factor (observed over profiled time, all widths together) follows the batches of the
    last ``TRACK_S`` or so: a co-located job, thermal throttling or a replica with fewer cores than profiled moves
    every width at once, and is followed within a fraction of a second under load. Each (width, batch size) also
    learns its own correction against the machine's factor, more slowly, from its own batches: where the profile was
    off for that cell alone. Both are averaged in log space, so one stalled batch (a garbage collection) moves them
    a little, and a speed-up is learned as fast as a slowdown. Observed times are compared with the profile's median
    when it has one, so a machine running as profiled has a factor of 1 and plans with the profiled p95.
    """

    def __init__(self, profile: Profile, clock: Callable[[], float], track_s: float = TRACK_S,
                 idle_half_life_s: float = IDLE_HALF_LIFE_S):
        self.base, self.clock, self.track_s, self.idle_half_life_s = profile, clock, track_s, idle_half_life_s
        self._log_factor, self._at = 0.0, clock()
        self._log_cells: dict[tuple[float, int], float] = {}
        self._observed: dict[tuple[float, int], float] = {}  # seconds, a moving average per cell
        self._lock = threading.Lock()
        self._profile, self._profile_cells = profile, {}

    def factor(self) -> float:
        """Observed over profiled time now, machine-wide (fading back to 1 while no forward renews it)."""
        with self._lock:
            log_factor, at = self._log_factor, self._at
        return math.exp(log_factor * 0.5 ** (max(0.0, self.clock() - at) / self.idle_half_life_s))

    def observe(self, width: float, count: int, seconds: float) -> None:
        cell = self.base.cell(width, count)
        reference = self.base.typical(width, count)
        if not (seconds > 0 and reference > 0):
            return
        weight = min(0.15, max(0.05, seconds / self.track_s))
        with self._lock:
            cell_log = self._log_cells.get(cell, 0.0)
            expected = self._log_factor + cell_log
            # one forward moves the estimate at most as far as a threefold change would: a stall is not a machine
            log_ratio = min(expected + MAX_STEP, max(expected - MAX_STEP, math.log(seconds / reference)))
            self._log_factor += weight * (log_ratio - cell_log - self._log_factor)
            self._at = self.clock()
            self._log_cells[cell] = cell_log + CELL_WEIGHT * (log_ratio - self._log_factor - cell_log)
            previous = self._observed.get(cell)
            self._observed[cell] = seconds if previous is None else previous + CELL_WEIGHT * (seconds - previous)

    def profile(self) -> Profile:
        """The profile with each cell's own correction (the machine's factor apart: the planner scales by it)."""
        with self._lock:
            cells = dict(self._log_cells)
        if any(abs(cells[c] - self._profile_cells.get(c, 0.0)) > 0.02 for c in cells):  # rebuilt when it moved
            latency = {c: p95 * math.exp(cells.get(c, 0.0)) for c, p95 in self.base.latency.items()}
            self._profile, self._profile_cells = replace(self.base, latency=latency), cells
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
