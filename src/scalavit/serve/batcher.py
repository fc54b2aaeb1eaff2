"""The request queue and the model thread.

Requests wait in one queue ordered by deadline. Whenever the model is free, the policy picks a width and a batch
size for the earliest deadlines and one forward answers them; a request whose deadline can no longer be met at any
width is answered at once instead (``Missed``). New requests are refused when the queue is full or when even the
cheapest width could not answer them in time (``Refused``), so the backlog never outgrows what can be served.
"""
import collections
import heapq
import itertools
import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .policy import Choice, Policy, Profile, could_finish_in_time


RATE_WINDOW_S = 0.5  # the arrival rate the controller plans for: requests offered over this last stretch
SLOWDOWN_SMOOTHING = 0.1  # weight of the latest batch in the moving average of observed / profiled latency
HALF_LIFE_S = 1.0  # what load taught the controller fades with this half-life once nothing renews it


class Fading:
    """A learned value that fades back to ``rest`` with a half-life unless it is set again: a server that refused
    everything under a burst must accept again once the burst is over, although no answer came to teach it so."""

    def __init__(self, rest: float, clock: Callable[[], float], half_life_s: float = HALF_LIFE_S):
        self.rest, self.clock, self.half_life_s = rest, clock, half_life_s
        self._value, self._at = rest, clock()

    def __call__(self) -> float:
        faded = 0.5 ** (max(0.0, self.clock() - self._at) / self.half_life_s)
        return self.rest + (self._value - self.rest) * faded

    def set(self, value: float) -> None:
        self._value, self._at = value, self.clock()


class Refused(Exception):
    """Not queued: the queue is full, the server is stopping, or the deadline cannot be met."""

    def __init__(self, reason: str, retry_after_s: float):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class Missed(Exception):
    """Dropped from the queue: by the time the model was free, no width could answer before the deadline."""


class BatchFailed(Exception):
    """The forward of this request's batch raised; the server goes on with the next batch."""


@dataclass
class Answer:
    output: Any
    width: float
    batch_size: int
    queue_s: float
    compute_s: float


@dataclass(order=True)
class Request:
    deadline: float
    seq: int
    item: Any = field(compare=False)
    width: Optional[float] = field(compare=False)  # pinned by the client, or None: the policy's choice
    arrival: float = field(compare=False)
    future: Future = field(compare=False, default_factory=Future)


@dataclass
class Batch:
    width: float
    requests: list[Request]


class Batcher:
    """``submit(item, slo_s, width)`` returns a Future of an ``Answer``; one thread runs ``run(items, width)``, which
    returns one output per item."""

    def __init__(self, run: Callable[[list[Any], float], list[Any]], profile: Profile, policy: Policy,
                 max_queue: int, clock: Callable[[], float] = time.monotonic,
                 on_batch: Optional[Callable[[Batch, float], None]] = None):
        self.run, self.profile, self.policy, self.max_queue = run, profile, policy, max_queue
        self.clock, self.on_batch = clock, on_batch
        self.queue: list[Request] = []
        self.busy_until = 0.0
        # How much slower than profiled the forwards run now (the CPU is shared with the HTTP side), and the time an
        # answer spends outside the queue and the forward (HTTP, decoding), kept free of planned work.
        self.slowdown, self.reserve_s = Fading(1.0, clock), Fading(0.0, clock)
        self.closed = False
        self._arrivals: collections.deque[float] = collections.deque()
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name='scalavit-model', daemon=True)

    def start(self) -> 'Batcher':
        self._thread.start()
        return self

    def stop(self) -> None:
        """Refuse new requests, answer every queued one, and end the model thread."""
        with self._condition:
            self.closed = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join()

    def __len__(self) -> int:
        return len(self.queue)

    def submit(self, item: Any, slo_s: float, width: Optional[float] = None) -> Future:
        now = self.clock()
        with self._condition:
            self._arrivals.append(now)  # offered load: refused requests count too
            self.arrival_rate(now)  # forgets what is older than the window, so the record stays bounded
            if self.closed:
                raise Refused('the server is shutting down', retry_after_s=1.0)
            if len(self.queue) >= self.max_queue:
                raise Refused(f'the queue is full ({self.max_queue} requests)', self._drain_time())
            request = Request(now + slo_s, next(self._sequence), item, width, now)
            ahead = sum(1 for queued in self.queue if queued.deadline <= request.deadline)
            busy_for, slowdown = max(0.0, self.busy_until - now), self.slowdown()
            if not could_finish_in_time(self.profile, (slo_s - self.reserve_s()) / slowdown, ahead,
                                        busy_for / slowdown, width):
                raise Refused(f'no width can answer within {1e3 * slo_s:g} ms at the current load',
                              self._drain_time())
            heapq.heappush(self.queue, request)
            self._condition.notify()
        return request.future

    def arrival_rate(self, now: float) -> float:
        """Requests a second offered over the last ``RATE_WINDOW_S``."""
        while self._arrivals and self._arrivals[0] < now - RATE_WINDOW_S:
            self._arrivals.popleft()
        return len(self._arrivals) / RATE_WINDOW_S

    def _drain_time(self) -> float:
        """Seconds until the queue would be empty at the cheapest width: when to try again."""
        return len(self.queue) / self.profile.rate(self.profile.cheapest) + max(0.0, self.busy_until - self.clock())

    def plan(self, now: float) -> tuple[Optional[Batch], list[Request]]:
        """Take the next batch off the queue, and the requests found unanswerable on the way (caller holds no lock
        in tests; the model thread holds the queue's lock)."""
        dropped = []
        # A client that went away cancelled its future: it takes no place in a batch.
        self.queue = [r for r in self.queue if not r.future.cancelled()]
        heapq.heapify(self.queue)
        while self.queue:
            head = self.queue[0]
            candidates = [r for r in self.queue if r.width == head.width]
            # Nexus's bound: a batch takes at most half the SLO, so requests arriving meanwhile keep the other half;
            # only when nothing fits in that half may the batch use all the slack left.
            slack = head.deadline - now
            rate = self.arrival_rate(now)
            choice = (self._choose(head, len(candidates), min(slack, (head.deadline - head.arrival) / 2), rate)
                      or self._choose(head, len(candidates), slack, rate))
            if choice is None:
                dropped.append(heapq.heappop(self.queue))
                continue
            taken = heapq.nsmallest(choice.batch_size, candidates)
            chosen = {id(r) for r in taken}
            self.queue = [r for r in self.queue if id(r) not in chosen]
            heapq.heapify(self.queue)
            return Batch(choice.width, taken), dropped
        return None, dropped

    def _choose(self, head: Request, waiting: int, seconds: float, arrival_rate: float) -> Optional[Choice]:
        slowdown = self.slowdown()
        slack = (seconds - self.reserve_s()) / slowdown  # in profiled seconds
        if head.width is None:
            return self.policy.choose(self.profile, slack, waiting, arrival_rate * slowdown)
        batch_size = self.profile.largest_batch_within(head.width, slack, waiting)
        return None if batch_size is None else Choice(head.width, batch_size)

    def _serve(self) -> None:
        while True:
            with self._condition:
                while not self.queue and not self.closed:
                    self._condition.wait()
                if not self.queue:
                    return
                now = self.clock()
                batch, dropped = self.plan(now)
                if batch is not None:
                    self.busy_until = now + self.slowdown() * self.profile.p95(batch.width, len(batch.requests))
            for request in dropped:
                if request.future.set_running_or_notify_cancel():
                    request.future.set_exception(Missed('no width could answer before the deadline'))
            if batch is not None:
                batch.requests = [r for r in batch.requests if r.future.set_running_or_notify_cancel()]
                if batch.requests:
                    self._run(batch)

    def _run(self, batch: Batch) -> None:
        start = self.clock()
        try:
            outputs = self.run([r.item for r in batch.requests], batch.width)
        except Exception as error:  # a failed forward answers its own requests, never the server
            for request in batch.requests:
                request.future.set_exception(BatchFailed(f'{type(error).__name__}: {error}'))
            return
        end = self.clock()
        self._observe(batch, end - start)
        for request, output in zip(batch.requests, outputs):
            request.future.set_result(Answer(output, batch.width, len(batch.requests), start - request.arrival,
                                             end - start))
        if self.on_batch is not None:
            self.on_batch(batch, end - start)


    def _observe(self, batch: Batch, seconds: float) -> None:
        """Track how much slower than their profile the forwards run now (a moving average of the ratio, never
        below 1), so that the policy plans with the latencies the server actually sees under load."""
        ratio = seconds / self.profile.p95(batch.width, len(batch.requests))
        self.slowdown.set(max(1.0, (1 - SLOWDOWN_SMOOTHING) * self.slowdown() + SLOWDOWN_SMOOTHING * ratio))

    def note_overhead(self, seconds: float) -> None:
        """What one answer spent outside the queue and the forward; the reserve follows its recent peaks (fading
        with time), so that answers planned to the edge of their slack still arrive in time."""
        self.reserve_s.set(max(seconds, self.reserve_s()))


def retry_after_header(seconds: float) -> str:
    """HTTP's Retry-After: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))
