"""The next batch: the earliest deadlines, at the width and batch size the policy chooses for the slack they have, in
the time the forwards take now.

The planner reads the estimators (the machine's speed, the offered rate, the reserve for what an answer spends after
its forward) and the queue; it takes a batch off the queue as its last step, so a fault while planning loses no
request. Requests whose deadline no width can meet any more are handed back to be answered at once.
"""
from typing import Optional

from .estimators import ArrivalRate, Ceiling, RecentPeak, Speed
from .policy import Choice, Policy, Profile
from .queue import Batch, Request, RequestQueue


class Planner:
    def __init__(self, policy: Policy, speed: Speed, arrivals: ArrivalRate, reserve_s: RecentPeak,
                 ceiling: Ceiling):
        self.policy, self.speed, self.arrivals = policy, speed, arrivals
        self.reserve_s, self.ceiling = reserve_s, ceiling

    def plan(self, queue: RequestQueue, profile: Profile, now: float, dropped: list[Request]) -> Optional[Batch]:
        """The next batch, taken off ``queue``; the requests found unanswerable on the way are moved to ``dropped``.
        None once the queue holds nothing that can still be answered."""
        queue.drop_cancelled()
        factor, reserve_s = self.speed.factor(), self.reserve_s()
        at_ceiling = self.ceiling(now, self.arrivals.current(now))
        while queue:
            head = queue.head
            waiting = queue.like_head()
            rate = self.arrivals(now, head.deadline - head.arrival)
            slack = head.deadline - now
            if self._holds_up_the_rest(profile, head, waiting, (slack - reserve_s) / factor, rate * factor):
                dropped.append(queue.pop_head())
                continue
            # Nexus's bound: a batch takes at most half the SLO, so requests arriving meanwhile keep the other half;
            # only when nothing fits in that half may the batch use all the slack left. Both in the profile's time:
            # the forwards run ``factor`` times slower than profiled now.
            choice = None
            for seconds in (min(slack, (head.deadline - head.arrival) / 2), slack):
                choice = self._choose(profile, head, waiting, (seconds - reserve_s) / factor, rate * factor,
                                      at_ceiling)
                if choice is not None:
                    break
            if choice is None:
                dropped.append(queue.pop_head())
                continue
            taken = queue.batch_for_head(choice.batch_size)
            if head.fallback is not None and not self._leaves_time_for_the_rest(
                    queue, profile, choice.width, taken, now, factor, reserve_s):
                queue.take(taken)
                dropped.extend(taken)  # their earlier answers go out: a later stage never makes another request late
                continue
            queue.take(taken)
            for request in taken if choice.cascade is not None else ():
                request.cascade = choice.cascade
            return Batch(choice.width, taken, choice.cascade)
        return None

    @staticmethod
    def _holds_up_the_rest(profile: Profile, head: Request, waiting: int, slack: float, rate: float) -> bool:
        """Nexus's early drop: with a backlog, whether the head's slack is too short for the batch that keeps up
        with the arrivals even at the cheapest width (or its own). Answering it in a smaller batch would cost the
        requests behind it more than it saves: under overload every head would then go out alone, just in time,
        and the queue behind it would miss."""
        width = head.width or profile.cheapest
        keeping_up = profile.batch_to_keep_up(width, rate)
        return waiting >= keeping_up > 1 and profile.latency[(width, keeping_up)] > slack

    def _choose(self, profile: Profile, head: Request, waiting: int, slack: float, rate: float,
                at_ceiling: bool) -> Optional[Choice]:
        if head.width is None:
            return self.policy.choose(profile, slack, waiting, rate, at_ceiling)
        batch_size = profile.largest_batch_within(head.width, slack, waiting)
        return None if batch_size is None else Choice(head.width, batch_size)

    @staticmethod
    def _leaves_time_for_the_rest(queue: RequestQueue, profile: Profile, width: float, taken: list[Request],
                                  now: float, factor: float, reserve_s: float) -> bool:
        """Whether ``taken`` at a cascade's later stage (``width``) can run and still leave the earliest of the other
        requests, with those waiting beside it, time to be answered at the cheapest width (or its own)."""
        chosen = {id(r) for r in taken}
        rest = [r for r in queue if r.fallback is None and id(r) not in chosen]
        if not rest:
            return True
        first = rest[0]
        then = profile.p95(first.width or profile.cheapest, min(len(rest), profile.max_batch_size))
        return now + factor * (profile.p95(width, len(taken)) + then) + reserve_s <= first.deadline
