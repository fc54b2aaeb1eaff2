"""Admission and the model thread.

Requests wait in one queue ordered by deadline (``queue.py``). Whenever the model is free, the policy picks a width and a batch
size for the earliest deadlines and one forward answers them; a request whose deadline can no longer be met at any
width is answered at once instead (``Missed``). New requests are refused when the queue is full or when even the
cheapest width could not answer them in time (``Refused``), so the backlog never outgrows what can be served.

A batch that starts a cascade answers its confident requests at once; the others go back into the queue pinned to
the next stage's width, with their deadline, and with the answer they have as a fallback: if no later stage can
answer in time, that answer goes out.
"""
import collections
import logging
import math
import operator
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, Callable, Optional

from .estimators import ArrivalRate, Ceiling, EscalationShare, RecentPeak, Speed
from .planner import Planner
from .policy import Policy, Profile, could_finish_in_time
from .queue import Answer, Batch, Request, RequestQueue

log = logging.getLogger('scalavit.serve')

HEARTBEAT_S = 0.5  # an idle model thread still shows it is alive this often
# Admission takes the forwards as a fifth faster than estimated: a refusal is final, while a request admitted in error
# is dropped before it costs a forward (the planner's early drop), so admission errs on the side of admitting.
ADMISSION_OPTIMISM = 0.8


class Refused(Exception):
    """Not queued: the queue is full, the server is stopping, or the deadline cannot be met."""

    def __init__(self, reason: str, retry_after_s: float):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class Missed(Exception):
    """Dropped from the queue: by the time the model was free, no width could answer before the deadline."""


class BatchFailed(Exception):
    """The forward of this request's batch raised; the server goes on with the next batch."""


class Batcher:
    """``submit(item, slo_s, width)`` returns a Future of an ``Answer``; one thread runs ``run(items, width)``, which
    returns one output per item; ``confidence(output)`` says how sure an output is, for the profile's cascade.

    The queue is guarded by one lock, taken by ``submit`` (the event loop) and by the model thread while it plans;
    the estimators guard their own state. A simulator drives the same steps without the thread: ``submit``,
    ``take`` when the model is free, ``finish`` when its forward ends (``scalavit.serve.simulator``)."""

    def __init__(self, run: Callable[[list[Any], float], list[Any]], profile: Profile, policy: Policy,
                 max_queue: int, clock: Callable[[], float] = time.monotonic,
                 on_batch: Optional[Callable[[Batch, float], None]] = None,
                 confidence: Callable[[Any], float] = operator.attrgetter('confidence')):
        self.run, self.policy, self.max_queue = run, policy, max_queue
        self.clock, self.on_batch, self.confidence = clock, on_batch, confidence
        self.queue = RequestQueue()
        self.busy_until = 0.0  # when the batch in the forward typically ends
        self.speed = Speed(profile, clock)  # how fast the forwards run now against the profile
        self.arrivals = ArrivalRate()
        self.reserve_s = RecentPeak(clock)  # what an answer spends between its forward and leaving the server
        self.escalation = EscalationShare(profile.cascade)
        self.ceiling = Ceiling()  # whether the server turned requests away just now
        self.planner = Planner(policy, self.speed, self.arrivals, self.reserve_s, self.ceiling)
        self.closed = False
        self.heartbeat = clock()
        self._sequence = 0
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name='scalavit-model', daemon=True)

    @property
    def profile(self) -> Profile:
        """The profile the controller plans with: each (width, batch size) corrected as observed, the cascade's
        escalation as observed (the machine-wide factor apart: ``speed.factor()``)."""
        profile = self.speed.profile()
        plan = self.escalation.plan
        return profile if plan is profile.cascade else replace(profile, cascade=plan)

    def slowdown(self) -> float:
        """How many times slower than profiled the forwards run now, machine-wide."""
        return self.speed.factor()

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

    # The event loop's side

    def submit(self, item: Any, slo_s: float, width: Optional[float] = None) -> Future:
        now = self.clock()
        self.arrivals.note(now)  # offered load: refused requests count too
        with self._condition:
            if self.closed:
                raise Refused('the server is shutting down', retry_after_s=1.0)
            if self._thread.ident is not None and not self._thread.is_alive():
                raise Refused('the model thread has stopped; the server is not ready', retry_after_s=1.0)
            if len(self.queue) >= self.max_queue:
                self.overran(now)
                raise Refused(f'the queue is full ({self.max_queue} requests)', self._drain_time(now))
            self._sequence += 1
            request = Request(now + slo_s, self._sequence, item, width, now)
            if not self._could_finish_in_time(request, now) and not self._idle_and_in_time_as_profiled(request, now):
                if self._could_finish_on_an_idle_server(request, now):  # turned away for the load, not its own SLO
                    self.overran(now)
                raise Refused(f'no width can answer within {1e3 * slo_s:g} ms at the current load',
                              self._drain_time(now))
            self.queue.push(request)
            self._condition.notify()
        return request.future

    def _could_finish_in_time(self, request: Request, now: float) -> bool:
        """Whether ``request`` could still be answered in time at the cheapest width (or its pinned one), after the
        batch in the forward and the requests due before it, in the time forwards take now."""
        factor = self.speed.factor() * ADMISSION_OPTIMISM
        return could_finish_in_time(self.profile, (request.deadline - now - self.reserve_s()) / factor,
                                    self.queue.due_before(request.deadline), max(0.0, self.busy_until - now) / factor,
                                    request.width)

    def _idle_and_in_time_as_profiled(self, request: Request, now: float) -> bool:
        """Nothing queued, the last batch typically done, and the request answerable in time at the profiled speed:
        admitted now, it is answered next and delays no other, whatever the speed estimate says. (Refusing it too
        would leave a speed estimate that ran away under a burst with no forward to correct it, and the server
        refusing everything.)"""
        return (not self.queue and now >= self.busy_until
                and could_finish_in_time(self.profile, request.deadline - now - self.reserve_s(), 0, 0.0,
                                         request.width))

    def _could_finish_on_an_idle_server(self, request: Request, now: float) -> bool:
        """Whether the request would have been answered in time with nothing ahead of it: if so, it was refused
        for the load, not for its own SLO."""
        return could_finish_in_time(self.profile, (request.deadline - now) / self.speed.factor(), 0, 0.0,
                                    request.width)

    def overran(self, now: float) -> None:
        """The server turned a request away for want of time at ``now``: the rate that did it is expected back, and
        the policy serves as at the server's ceiling for a while."""
        self.arrivals.note_saturated(now)
        self.ceiling.note(now, self.arrivals.current(now))

    def turned_away(self) -> None:
        """A request refused before it reached the batcher (too many in progress): offered load all the same."""
        now = self.clock()
        self.arrivals.note(now)
        self.overran(now)

    def at_ceiling(self) -> bool:
        now = self.clock()
        return self.ceiling(now, self.arrivals.current(now))

    def _drain_time(self, now: float) -> float:
        """Seconds until the queue would be empty at the cheapest width: when to try again."""
        profile = self.profile
        return (self.speed.factor() * len(self.queue) / profile.typical_rate(profile.cheapest)
                + max(0.0, self.busy_until - now))

    def note_overhead(self, seconds: float) -> None:
        """What one answer spent between its forward and leaving the server; the reserve follows what most recent
        answers spent, so that answers planned to the edge of their slack still arrive in time."""
        self.reserve_s.note(seconds)

    # The model's side: take a batch, run it, finish it

    def plan(self, now: float) -> tuple[Optional[Batch], list[Request]]:
        """The next batch off the queue, and the requests found unanswerable on the way (the caller holds the lock,
        or owns the batcher, as a test or the simulator does)."""
        dropped: list[Request] = []
        return self.planner.plan(self.queue, self.profile, now, dropped), dropped

    def take(self, now: float) -> tuple[Optional[Batch], list[Request]]:
        """``plan``, and the time the batch is expected to take noted for admission. A fault while planning fails
        the earliest request (with what was dropped before it still answered), never the others."""
        dropped: list[Request] = []
        try:
            batch = self.planner.plan(self.queue, self.profile, now, dropped)
        except Exception as error:
            log.error("planning failed (%s: %s); the earliest request is answered 500", type(error).__name__, error)
            if self.queue:
                self._fail([self.queue.pop_head()], error)
            return None, dropped
        if any(r.fallback is None for r in dropped):
            self.overran(now)
        if batch is not None:
            self.busy_until = now + self.speed.factor() * self.profile.typical(batch.width, len(batch.requests))
        return batch, dropped

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
            return self.take(now)

    def _answer(self, batch: Optional[Batch], dropped: list[Request]) -> None:
        self.resolve(dropped)
        if batch is not None:
            batch = self.start_batch(batch)
            if batch.requests:
                self._run(batch)

    @staticmethod
    def resolve(dropped: list[Request]) -> None:
        """Answers the requests no width could answer in time: a cascade's earlier answer stands, the others missed."""
        for request in dropped:
            if request.fallback is not None:
                request.future.set_result(request.fallback)
            elif request.future.set_running_or_notify_cancel():
                request.future.set_exception(Missed('no width could answer before the deadline'))

    @staticmethod
    def start_batch(batch: Batch) -> Batch:
        """The batch without the requests cancelled since they were planned (a request a cascade escalated is
        running already: its client can no longer cancel it)."""
        batch.requests = [r for r in batch.requests if r.future.running() or r.future.set_running_or_notify_cancel()]
        return batch

    def _run(self, batch: Batch) -> None:
        start = self.clock()
        try:
            outputs = list(self.run([r.item for r in batch.requests], batch.width))
            if len(outputs) != len(batch.requests):
                raise RuntimeError(f"the model answered {len(outputs)} of the batch's {len(batch.requests)} inputs")
        except Exception as error:  # a failed forward answers its own requests, never the server
            self._fail(batch.requests, error)
            return
        self.finish(batch, outputs, start, self.clock())

    def finish(self, batch: Batch, outputs: list[Any], start: float, end: float) -> None:
        """Answers a batch's requests with their outputs (or escalates them to the cascade's next stage), and learns
        from the forward's time."""
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
        self.escalation.learn(ran, collections.Counter(r.stage - 1 for r in escalated))
        if escalated:
            with self._condition:
                for request in escalated:
                    self.queue.push(request)
                self._condition.notify()
        self._observe(batch, end - start)
        if self.on_batch is not None:
            self.on_batch(batch, end - start)

    def _observe(self, batch: Batch, seconds: float) -> None:
        self.speed.observe(batch.width, len(batch.requests), seconds)

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


def retry_after_header(seconds: float) -> str:
    """HTTP's Retry-After: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))
