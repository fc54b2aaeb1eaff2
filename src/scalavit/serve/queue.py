"""The requests waiting for the model, earliest deadline first.

A plain list kept sorted by (deadline, arrival order): the earliest is at its head, the requests due before a new one
are counted by bisection, and a batch of the earliest is sliced off its head. Not thread-safe: the batcher holds its
lock around every call.
"""
import bisect
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from .policy import CascadePlan


@dataclass
class Answer:
    output: Any
    width: float
    batch_size: int
    queue_s: float  # all of the time since arrival not spent in this request's forwards
    compute_s: float  # the forwards that answered it (a cascade's every stage)
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

    def batches_with(self, other: 'Request') -> bool:
        """Requests batch with those of the same width, and a cascade's later stage with its own kind."""
        return self.width == other.width and (self.fallback is None) == (other.fallback is None)


@dataclass
class Batch:
    width: float
    requests: list[Request]
    cascade: Optional[CascadePlan] = None  # the cascade these requests start


class RequestQueue:
    def __init__(self):
        self._requests: list[Request] = []

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests)

    def push(self, request: Request) -> None:
        bisect.insort(self._requests, request)

    def due_before(self, deadline: float) -> int:
        """How many waiting requests are due at or before ``deadline``."""
        return bisect.bisect_right(self._requests, deadline, key=lambda r: r.deadline)

    @property
    def head(self) -> Request:
        return self._requests[0]

    def pop_head(self) -> Request:
        return self._requests.pop(0)

    def drop_cancelled(self) -> None:
        """A client that went away cancelled its future: it takes no place in a batch."""
        if any(r.future.cancelled() for r in self._requests):
            self._requests = [r for r in self._requests if not r.future.cancelled()]

    def batch_for_head(self, size: int) -> list[Request]:
        """The ``size`` earliest requests that batch with the head (without taking them)."""
        head = self.head
        if self._requests[min(size, len(self)) - 1].batches_with(head):  # the usual case: one kind at the head
            candidates = self._requests[:size]
            if all(r.batches_with(head) for r in candidates):
                return candidates
        return [r for r in self._requests if r.batches_with(head)][:size]

    def like_head(self) -> int:
        """How many waiting requests batch with the head."""
        head = self.head
        return sum(1 for r in self._requests if r.batches_with(head))

    def take(self, requests: list[Request]) -> None:
        """Removes ``requests`` (a batch from ``batch_for_head``)."""
        if all(a is b for a, b in zip(self._requests, requests)):  # the usual case: the head's batch
            del self._requests[:len(requests)]
        else:
            taken = {id(r) for r in requests}
            self._requests = [r for r in self._requests if id(r) not in taken]
