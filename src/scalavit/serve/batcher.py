"""The request queue and the model thread.

Requests wait in one queue ordered by deadline. Whenever the model is free, the policy picks a width and a batch
size for the earliest deadlines and one forward answers them; a request whose deadline can no longer be met at any
width is answered at once instead (``Missed``). New requests are refused when the queue is full or when even the
cheapest width could not answer them in time (``Refused``), so the backlog never outgrows what can be served.

A batch that starts a cascade answers its confident requests at once; the others go back into the queue pinned to
the next stage's width, with their deadline, and with the answer they have as a fallback: if no later stage can
answer in time, that answer goes out.
"""
import collections
import heapq
import itertools
import logging
import math
import operator
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from .policy import CascadePlan, Choice, Policy, Profile, could_finish_in_time

log = logging.getLogger('scalavit.serve')

RATE_WINDOW_S = 0.5  # the arrival rate the controller plans for: requests offered over this last stretch
SLOWDOWN_SMOOTHING = 0.1  # weight of the latest batch in the moving average of observed / profiled latency
HALF_LIFE_S = 1.0  # what load taught the controller fades with this half-life once nothing renews it
OVERHEAD_WINDOW_S = 2.0  # the answers whose time outside the queue and the forward sets the reserve
HEARTBEAT_S = 0.5  # an idle model thread still shows it is alive this often
ESCALATION_SMOOTHING = 0.01  # weight of each request in the moving average of a cascade step's escalation rate


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


class RecentPeak:
    """The 90th percentile of the values noted over the last ``window_s`` seconds, as if at least ten had been
    noted (the missing ones free): it follows what most recent answers cost, while one outlier (a stalled event
    loop, a garbage collection) never decides it, and it is back to zero once nothing renews it."""

    def __init__(self, clock: Callable[[], float], window_s: float = OVERHEAD_WINDOW_S, at_least: int = 10):
        self.clock, self.window_s, self.at_least = clock, window_s, at_least
        self._values: collections.deque[tuple[float, float]] = collections.deque(maxlen=1000)

    def note(self, value: float) -> None:
        self._values.append((self.clock(), value))

    def __call__(self) -> float:
        since = self.clock() - self.window_s
        while self._values and self._values[0][0] < since:
            self._values.popleft()
        values = sorted(value for _, value in self._values)
        count = max(len(values), self.at_least)
        rank = math.ceil(0.9 * count) - (count - len(values))  # in ``values``, past the free ones
        return max(0.0, values[rank - 1]) if rank >= 1 else 0.0


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
    queue_s: float  # all of the time since arrival not spent in this request's forwards
    compute_s: float  # its forwards', every stage of a cascade included
    stage: Optional[int] = None  # the cascade stage that answered (0 the first), None outside a cascade


@dataclass(order=True)
class Request:
    deadline: float
    seq: int
    item: Any = field(compare=False)
    width: Optional[float] = field(compare=False)  # pinned by the client, or None: the policy's choice
    arrival: float = field(compare=False)
    future: Future = field(compare=False, default_factory=Future)
    cascade: Optional[CascadePlan] = field(compare=False, default=None)  # the cascade it runs, once chosen
    stage: int = field(compare=False, default=0)  # the cascade stage it waits for
    fallback: Optional[Answer] = field(compare=False, default=None)  # the last stage's answer, if the next is late
    compute_s: float = field(compare=False, default=0.0)


@dataclass
class Batch:
    width: float
    requests: list[Request]
    cascade: Optional[CascadePlan] = None  # the cascade these requests start


class Batcher:
    """``submit(item, slo_s, width)`` returns a Future of an ``Answer``; one thread runs ``run(items, width)``, which
    returns one output per item; ``confidence(output)`` says how sure an output is, for the profile's cascade."""

    def __init__(self, run: Callable[[list[Any], float], list[Any]], profile: Profile, policy: Policy,
                 max_queue: int, clock: Callable[[], float] = time.monotonic,
                 on_batch: Optional[Callable[[Batch, float], None]] = None,
                 confidence: Callable[[Any], float] = operator.attrgetter('confidence')):
        self.run, self.profile, self.policy, self.max_queue = run, profile, policy, max_queue
        self.clock, self.on_batch, self.confidence = clock, on_batch, confidence
        self.queue: list[Request] = []
        self.busy_until = 0.0
        # How much slower than profiled the forwards run now (the CPU is shared with the HTTP side), and the time an
        # answer spends after its forward (waking its handler, HTTP), kept free of planned work.
        self.slowdown, self.reserve_s = Fading(1.0, clock), RecentPeak(clock)
        self.closed = False
        self.heartbeat = clock()
        self._arrivals: collections.deque[float] = collections.deque()
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name='scalavit-model', daemon=True)

    def start(self) -> 'Batcher':
        self._thread.start()
        return self

    def stop(self, timeout_s: Optional[float] = None) -> bool:
        """Refuse new requests, answer every queued one, and end the model thread; False if it had not ended
        within ``timeout_s``."""
        with self._condition:
            self.closed = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def __len__(self) -> int:
        return len(self.queue)

    def submit(self, item: Any, slo_s: float, width: Optional[float] = None) -> Future:
        now = self.clock()
        with self._condition:
            self._arrivals.append(now)  # offered load: refused requests count too
            self.arrival_rate(now)  # forgets what is older than the window, so the record stays bounded
            if self.closed:
                raise Refused('the server is shutting down', retry_after_s=1.0)
            if self._thread.ident is not None and not self._thread.is_alive():
                raise Refused('the model thread has stopped; the server is not ready', retry_after_s=1.0)
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
            # Requests batch with those of the same width, and a cascade's later stage with its own kind.
            candidates = [r for r in self.queue if r.width == head.width and (r.fallback is None) == (
                head.fallback is None)]
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
            if head.fallback is not None and not self._leaves_time_for_the_rest(choice.width, len(taken), now):
                dropped.extend(taken)  # their earlier answers go out: a later stage never makes another request late
                continue
            for request in taken if choice.cascade is not None else ():
                request.cascade = choice.cascade
            return Batch(choice.width, taken, choice.cascade), dropped
        return None, dropped

    def _leaves_time_for_the_rest(self, width: float, count: int, now: float) -> bool:
        """Whether ``count`` requests at a cascade's later stage (``width``) can run and still leave the earliest of
        the other requests, with those waiting beside it, time to be answered at the cheapest width (or its own)."""
        rest = [r for r in self.queue if r.fallback is None]
        if not rest:
            return True
        first = min(rest)
        then = self.profile.p95(first.width or self.profile.cheapest, min(len(rest), self.profile.max_batch_size))
        return now + self.slowdown() * (self.profile.p95(width, count) + then) + self.reserve_s() <= first.deadline

    def _choose(self, head: Request, waiting: int, seconds: float, arrival_rate: float) -> Optional[Choice]:
        slowdown = self.slowdown()
        slack = (seconds - self.reserve_s()) / slowdown  # in profiled seconds
        if head.width is None:
            return self.policy.choose(self.profile, slack, waiting, arrival_rate * slowdown)
        batch_size = self.profile.largest_batch_within(head.width, slack, waiting)
        return None if batch_size is None else Choice(head.width, batch_size)

    def _serve(self) -> None:
        """The model thread, until stopped with nothing queued. A fault anywhere (the policy, the forward, the
        profile's update, a callback) fails the requests it concerns, never the thread."""
        while (planned := self._next_round()) is not None:
            batch, dropped = planned
            try:
                self._answer(batch, dropped)
            except Exception as error:
                log.error("the model thread failed after a batch (%s: %s); it goes on", type(error).__name__, error)
                self._fail(batch.requests if batch else [], error)

    def _next_round(self) -> Optional[tuple[Optional[Batch], list[Request]]]:
        """Waits for requests and takes the next batch off the queue; None once stopped and drained."""
        with self._condition:
            while not self.queue and not self.closed:
                self.heartbeat = self.clock()
                self._condition.wait(HEARTBEAT_S)
            if not self.queue:
                return None
            self.heartbeat = now = self.clock()
            try:
                batch, dropped = self.plan(now)
            except Exception as error:  # the request it was planning for fails; the next round plans the others
                log.error("planning failed (%s: %s); the earliest request is answered 500", type(error).__name__,
                          error)
                self._fail([heapq.heappop(self.queue)] if self.queue else [], error)
                return None, []
            if batch is not None:
                self.busy_until = now + self.slowdown() * self.profile.p95(batch.width, len(batch.requests))
            return batch, dropped

    def _answer(self, batch: Optional[Batch], dropped: list[Request]) -> None:
        for request in dropped:
            if request.fallback is not None:  # a cascade's later stage would be late: the earlier answer stands
                request.future.set_result(request.fallback)
            elif request.future.set_running_or_notify_cancel():
                request.future.set_exception(Missed('no width could answer before the deadline'))
        if batch is not None:
            # A request a cascade escalated is running already (its client can no longer cancel it).
            batch.requests = [r for r in batch.requests
                              if r.future.running() or r.future.set_running_or_notify_cancel()]
            if batch.requests:
                self._run(batch)

    def _run(self, batch: Batch) -> None:
        start = self.clock()
        try:
            outputs = list(self.run([r.item for r in batch.requests], batch.width))
            if len(outputs) != len(batch.requests):
                raise RuntimeError(f"the model answered {len(outputs)} of the batch's {len(batch.requests)} inputs")
        except Exception as error:  # a failed forward answers its own requests, never the server
            self._fail(batch.requests, error)
            return
        end = self.clock()
        ran = collections.Counter(r.stage for r in batch.requests if r.cascade is not None)
        escalated = []
        for request, output in zip(batch.requests, outputs):
            request.compute_s += end - start
            answer = Answer(output, batch.width, len(batch.requests), end - request.arrival - request.compute_s,
                            request.compute_s, None if request.cascade is None else request.stage)
            if request.cascade is not None and request.cascade.escalates(request.stage, self.confidence(output)):
                escalated.append(request)
                request.fallback, request.stage = answer, request.stage + 1
                request.width = request.cascade.widths[request.stage]
            else:
                request.future.set_result(answer)
        self._escalate(ran, escalated)
        self._observe(batch, end - start)
        if self.on_batch is not None:
            self.on_batch(batch, end - start)

    def _escalate(self, ran: collections.Counter, escalated: list[Request]) -> None:
        """Queues the escalated requests for their next stage, and learns how many of those that ran at each stage
        (``ran``: stage -> requests) go on."""
        plan = self.profile.cascade
        went_on = collections.Counter(r.stage - 1 for r in escalated)
        if plan is not None and ran:
            steps = [after / before if before > 0 else 0.0 for before, after in zip(plan.reach, plan.reach[1:])]
            for stage, count in ran.items():
                if stage < len(steps):
                    weight = 1 - (1 - ESCALATION_SMOOTHING) ** count
                    steps[stage] += weight * (went_on[stage] / count - steps[stage])
            reach = [1.0]
            for step in steps:
                reach.append(reach[-1] * step)
            self.profile = replace(self.profile, cascade=replace(plan, reach=tuple(reach)))
        if escalated:
            with self._condition:
                for request in escalated:
                    heapq.heappush(self.queue, request)
                self._condition.notify()

    @staticmethod
    def _fail(requests: list[Request], error: Exception) -> None:
        for request in requests:
            if not request.future.done():
                if request.fallback is not None:  # a cascade's earlier answer stands
                    request.future.set_result(request.fallback)
                elif request.future.running() or request.future.set_running_or_notify_cancel():
                    request.future.set_exception(BatchFailed(f'{type(error).__name__}: {error}'))

    def healthy(self, stall_s: float) -> bool:
        """Whether the model thread runs and has shown it within ``stall_s``: waiting, planning, or in a forward
        that has not taken longer than that."""
        return self._thread.is_alive() and self.clock() - self.heartbeat <= stall_s

    def _observe(self, batch: Batch, seconds: float) -> None:
        """Track how much slower than their profile the forwards run now (a moving average of the ratio, never
        below 1), so that the policy plans with the latencies the server actually sees under load."""
        ratio = seconds / self.profile.p95(batch.width, len(batch.requests))
        self.slowdown.set(max(1.0, (1 - SLOWDOWN_SMOOTHING) * self.slowdown() + SLOWDOWN_SMOOTHING * ratio))

    def note_overhead(self, seconds: float) -> None:
        """What one answer spent between its forward and leaving the server; the reserve follows what most recent
        answers spent, so that answers planned to the edge of their slack still arrive in time."""
        self.reserve_s.note(seconds)


def retry_after_header(seconds: float) -> str:
    """HTTP's Retry-After: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))
