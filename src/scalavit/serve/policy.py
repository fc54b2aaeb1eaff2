"""Which width and batch size run next: SuperServe's SlackFit and the fixed baselines.

Pure decisions on numbers: no torch, no HTTP, no clock. Times are in seconds. A policy sees the slack of the
earliest deadline in the queue (its deadline minus now) and how many requests wait, and answers with a ``Choice``,
or None when no (width, batch size) of the profile can finish before that deadline.
"""
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Protocol, Union


@dataclass(frozen=True)
class CascadePlan:
    """A confidence cascade as the controller sees it: its widths, the threshold of each step, the share of requests
    that reach each stage (the first 1.0; calibrated, then as observed), and its top-1 %."""

    widths: tuple[float, ...]
    thresholds: tuple[float, ...]
    reach: tuple[float, ...]
    accuracy: float

    def __post_init__(self):
        if not (len(self.widths) >= 2 and len(self.thresholds) == len(self.widths) - 1
                and len(self.reach) == len(self.widths) and self.reach[0] == 1.0):
            raise ValueError(f"a cascade plan needs k >= 2 widths, k - 1 thresholds and k shares reaching each stage "
                             f"(the first 1.0); got {self}")

    @property
    def name(self) -> str:
        return 'cascade ' + '>'.join(f'{w:g}' for w in self.widths)

    def escalates(self, stage: int, confidence: float) -> bool:
        """Whether an answer of ``stage`` (0 the first) this confident goes on to the next stage."""
        return stage < len(self.widths) - 1 and confidence < self.thresholds[stage]


Option = Union[float, CascadePlan]  # what the controller chooses between: a width, or the cascade


@dataclass(frozen=True)
class Profile:
    """The measured p95 latency of every (width, batch size) on the serving device, each width's accuracy, and the
    cascade the server may run, if any; the median latency too where it was measured (what a forward typically
    takes, against which the server compares what it observes)."""

    latency: dict[tuple[float, int], float]  # (width, batch size) -> p95 seconds
    accuracy: dict[float, float]  # width -> top-1 %
    cascade: Optional[CascadePlan] = None
    median: Optional[dict[tuple[float, int], float]] = None  # (width, batch size) -> median seconds
    cheapest_width: Optional[float] = None  # a corrected profile keeps the measured one's (see ``cheapest``)

    def __post_init__(self):
        missing = sorted({(w, b) for w in self.widths for b in self.batch_sizes} - set(self.latency))
        if missing or set(self.accuracy) != set(self.widths):
            raise ValueError(f"the profile needs a latency for every (width, batch size) and an accuracy for every "
                             f"width; missing {missing[:3] or sorted(set(self.widths) ^ set(self.accuracy))}")
        if self.cascade is not None and not set(self.cascade.widths) <= set(self.widths):
            raise ValueError(f"the cascade's widths {self.cascade.widths} are not all profiled widths")
        if self.median is not None and set(self.median) != set(self.latency):
            raise ValueError("the profile's medians must be of the same (width, batch size) as its p95s")

    # Computed once: the controller asks for these on every decision.

    @cached_property
    def widths(self) -> list[float]:
        return sorted({width for width, _ in self.latency})

    @cached_property
    def batch_sizes(self) -> list[int]:
        return sorted({batch for _, batch in self.latency})

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    @cached_property
    def cheapest(self) -> float:
        """The width that answers the most requests a second at its best batch size: the server's fallback under
        load (admission, the early drop, the ceiling). Chosen on the profile as measured, by its medians: a profile
        corrected online keeps it (``cheapest_width``), since the few cells in use, timed under load, would
        otherwise look slower than the idle ones beside them and hand the fallback to a wider width."""
        if self.cheapest_width is not None:
            return self.cheapest_width
        return max(self.widths, key=lambda w: (self.typical_rate(w), -w))

    @cached_property
    def most_accurate(self) -> float:
        return max(self.widths, key=lambda w: (self.accuracy[w], -self.latency[(w, 1)]))

    def check_cells(self, repeats: int = 3) -> list[tuple[float, int]]:
        """The forwards that check a profile against the machine as it is now, before serving: the cheapest and the
        most accurate width at batch 1, and the cheapest at its largest batch, ``repeats`` times each."""
        cells = [(self.cheapest, 1), (self.most_accurate, 1), (self.cheapest, self.max_batch_size)]
        return [cell for cell in cells for _ in range(repeats)]

    def cell(self, width: float, count: float) -> tuple[float, int]:
        """The profiled (width, batch size) that answers ``count`` requests: the smallest batch that holds them."""
        holding = self._holding
        return width, holding[min(math.ceil(count), len(holding) - 1)]

    @cached_property
    def _holding(self) -> list[int]:
        """For each count of requests up to the largest batch, the smallest profiled batch that holds them."""
        return [next(b for b in self.batch_sizes if b >= count) for count in range(self.max_batch_size + 1)]

    def p95(self, width: float, count: float) -> float:
        """The p95 latency of ``count`` requests at ``width``: that of the smallest profiled batch that holds them.
        (Below one request, as for the share of a batch that reaches a cascade's stage, the cost is that share of
        one request's.)"""
        return self._scaled(self.latency, width, count)

    def typical(self, width: float, count: float) -> float:
        """As ``p95``, at the median where the profile has one."""
        return self._scaled(self.latency if self.median is None else self.median, width, count)

    def _scaled(self, table: dict[tuple[float, int], float], width: float, count: float) -> float:
        if count < 1:
            return count * table[(width, 1)]
        cell = self.cell(width, count)
        return table[cell] * max(1.0, count / cell[1])

    @cached_property
    def options(self) -> list[Option]:
        """Every width, and the cascade if there is one."""
        return self.widths + ([self.cascade] if self.cascade is not None else [])

    def cost(self, option: Option, count: int) -> float:
        """Seconds to answer ``count`` requests with ``option``: a width's p95, or the cascade's expected cost, each
        stage's p95 for the share of the requests that reach it."""
        if isinstance(option, CascadePlan):
            return sum(self.p95(w, share * count) for w, share in zip(option.widths, option.reach))
        return self.p95(option, count)

    def accuracy_of(self, option: Option) -> float:
        return option.accuracy if isinstance(option, CascadePlan) else self.accuracy[option]

    def rate(self, width: float) -> float:
        """Requests a second ``width`` sustains at its most efficient batch size."""
        return self._rates[width]

    def typical_rate(self, width: float) -> float:
        """As ``rate``, at the median where the profile has one: what many batches in a row sustain."""
        return self._typical_rates[width]

    @cached_property
    def _rates(self) -> dict[float, float]:
        return {w: max(b / self.latency[(w, b)] for b in self.batch_sizes) for w in self.widths}

    @cached_property
    def _typical_rates(self) -> dict[float, float]:
        return {w: max(b / self.typical(w, b) for b in self.batch_sizes) for w in self.widths}

    def batch_to_keep_up(self, width: float, rate: float) -> int:
        """The smallest profiled batch size at which ``width`` answers ``rate`` requests a second (the largest if
        none does)."""
        return next((b for b in self.batch_sizes if b / self.latency[(width, b)] >= rate), self.max_batch_size)

    def largest_batch_within(self, width: float, slack: float, waiting: int) -> Optional[int]:
        """How many of ``waiting`` requests ``width`` can answer within ``slack`` (None: not even one)."""
        fitting = [b for b in self.batch_sizes if self.latency[(width, b)] <= slack]
        return min(max(fitting), waiting) if fitting else None


@dataclass(frozen=True)
class Choice:
    width: float
    batch_size: int  # how many of the earliest-deadline requests to answer together
    cascade: Optional[CascadePlan] = None  # the cascade these requests start, ``width`` its first stage


class Policy(Protocol):
    name: str

    def choose(self, profile: Profile, slack: float, waiting: int, arrival_rate: float = 0.0,
               at_ceiling: bool = False) -> Optional[Choice]:
        """``arrival_rate``: requests a second arriving now, in the profile's time (what the server sees, scaled by
        how much slower than profiled its forwards run); ``at_ceiling``: the server turned requests away just now
        (``estimators.Ceiling``)."""


class SlackFit:
    """Pack the earliest-deadline requests, then run them at the most accurate width whose p95 latency for that
    batch fits the earliest deadline's slack (SuperServe's SlackFit, Ahmad et al., NSDI 2025), among the widths that
    keep up with the arrivals.

    The batch takes every waiting request (up to the largest profiled batch); when no width can answer that many in
    time, it shrinks through the profiled batch sizes until one can. Under light load one request waits, the slack
    is the whole SLO and the widest network answers; as requests queue, batches grow and the slack of the oldest
    shrinks, so narrower, faster widths take over, without any module state changing.

    Slack alone reacts only once a backlog has formed, and under sustained overload it keeps choosing widths too slow
    for the arrival rate: the queue grows until requests are refused. So a width is chosen only if, at the batch size
    being formed, it answers ``headroom`` times the current arrival rate; when none does, the fastest that fits. (The
    batch being formed, not the most efficient one: under load on a shared CPU the batches a width would need to keep
    up do not form, and a width chosen for them collapses into small batches and a growing backlog.)

    A profile with a cascade offers it as one more option, costed at its expected latency and valued at its
    accuracy: under light load the full width wins, and as load grows the cascade can keep its accuracy at a cost
    between its stages'.

    At the server's ceiling (it had to turn requests away just now) the cheapest width answers, as many as fit: there
    any wider forward is paid for by requests turned away, and the profile cannot say how much, since it times the
    forward alone and not the CPU a wider forward takes from the HTTP side or a co-located job. So SlackFit is never
    worse than the smallest width alone, whatever the machine does.
    """

    name = 'slackfit'

    def __init__(self, headroom: float = 1.25):
        self.headroom = headroom

    def choose(self, profile: Profile, slack: float, waiting: int, arrival_rate: float = 0.0,
               at_ceiling: bool = False) -> Optional[Choice]:
        if at_ceiling:
            return Fixed(profile.cheapest).choose(profile, slack, waiting)
        count = min(waiting, profile.max_batch_size)
        sizes = [count] + [b for b in reversed(profile.batch_sizes) if b < count]
        for size in sizes:
            fitting = [o for o in profile.options if profile.cost(o, size) <= slack]
            if fitting:
                option = self._option(profile, fitting, size, arrival_rate)
                if isinstance(option, CascadePlan):
                    return Choice(option.widths[0], size, option)
                return Choice(option, size)
        return None

    def _option(self, profile: Profile, fitting: list[Option], size: int, arrival_rate: float) -> Option:
        rates = {o: size / profile.cost(o, size) for o in fitting}
        keeping_up = [o for o in fitting if rates[o] >= self.headroom * arrival_rate]
        if not keeping_up:
            return max(fitting, key=rates.get)
        return max(keeping_up, key=lambda o: (profile.accuracy_of(o), -profile.cost(o, 1)))


class MaxAccuracy:
    """Baseline: the most accurate width, one request at a time."""

    name = 'maxacc'

    def choose(self, profile: Profile, slack: float, waiting: int, arrival_rate: float = 0.0,
               at_ceiling: bool = False) -> Optional[Choice]:
        width = profile.most_accurate
        return Choice(width, 1) if profile.latency[(width, 1)] <= slack else None


class Fixed:
    """Baseline: one width, with dynamic batching (as many waiting requests as fit the slack), as a server of one
    ordinary model would run it."""

    def __init__(self, width: float):
        self.width = width
        self.name = f'fixed:{width:g}'

    def choose(self, profile: Profile, slack: float, waiting: int, arrival_rate: float = 0.0,
               at_ceiling: bool = False) -> Optional[Choice]:
        batch = profile.largest_batch_within(self.width, slack, waiting)
        return None if batch is None else Choice(self.width, batch)


def parse_policy(text: str, widths: list[float]) -> Policy:
    """``slackfit``, ``maxacc`` or ``fixed:R`` with R a width of the grid."""
    if text == 'slackfit':
        return SlackFit()
    if text == 'maxacc':
        return MaxAccuracy()
    if text.startswith('fixed:'):
        try:
            value = float(text.split(':', 1)[1])
        except ValueError:
            value = None
        width = next((w for w in widths if value is not None and abs(w - value) < 1e-6), None)
        if width is None:
            raise ValueError(f"--policy {text}: fixed:R needs R among the grid's widths "
                             f"{', '.join(f'{w:g}' for w in widths)}")
        return Fixed(width)
    raise ValueError(f"--policy {text!r}: choose slackfit, maxacc or fixed:R (R a width of the grid)")


def could_finish_in_time(profile: Profile, slack: float, ahead: int, busy_for: float,
                         width: Optional[float] = None) -> bool:
    """Whether a new request could still be answered within ``slack`` at the cheapest width (or its pinned one):
    after the running batch (``busy_for`` seconds) and the ``ahead`` requests due before it, served at that width's
    best rate, then its own forward. The requests ahead take many batches, whose times add up to about their
    typical (median) times; only the last forward is counted at its p95. A request that cannot is refused at once
    rather than queued to fail later."""
    width = profile.cheapest if width is None else width
    return busy_for + ahead / profile.typical_rate(width) + profile.latency[(width, 1)] <= slack
