"""Admission control for ingest: a bound on events accepted but not yet learned.

A bounded queue alone is backpressure for the pipeline, not for its clients: past
saturation every new request waits on a full queue while holding its socket and its
parsed events, so waiting clients and memory grow without limit.  :class:`Admission`
refuses work up front instead (the HTTP layer answers 429 with ``Retry-After``):

* a request is refused before its body is read when ``max_inflight_requests``
  requests are already inside the handler or no event fits under ``max_pending_events``;
* once its events are parsed, they are refused unless they fit under
  ``max_pending_events`` (accepted-but-not-learned events, counted over every request).

Events stay pending from admission until the trainer's learned watermark passes the
sequence number of their last batch, also for ``?wait=false`` requests that return
right after queuing.  The watermark is read lazily (on each admission decision and
each ``statistics()``), so there is no background task per request.  An admitted
event is never refused later: the bound only decides what is accepted.

No asyncio here: the class is plain bookkeeping, driven by the handler.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from runtime.config import IngestConfig

PENDING_EVENTS = "pending_events"
INFLIGHT_REQUESTS = "inflight_requests"


@dataclass(frozen=True)
class Overload:
    """Why a request was refused, and when the client should retry."""

    reason: str  # PENDING_EVENTS or INFLIGHT_REQUESTS (stable: counted by this name)
    message: str
    retry_after_s: int

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "reason": self.reason, "retry_after_s": self.retry_after_s}


class Admission:
    """Counts pending events and in-flight requests against their bounds.

    ``learned_seq`` returns the highest batch sequence number learned so far; without
    it (a front that only forwards events, e.g. to Kafka) events stop being pending as
    soon as they are queued.
    """

    def __init__(
        self,
        max_pending_events: int,
        max_inflight_requests: int,
        retry_after_s: int,
        learned_seq: Callable[[], int] | None = None,
    ) -> None:
        self.max_pending_events = max_pending_events
        self.max_inflight_requests = max_inflight_requests
        self.retry_after_s = retry_after_s
        self._learned_seq = learned_seq
        self._reserved = 0  # parsed events of requests still being queued
        self._queued: list[tuple[int, int]] = []  # heap of (last batch seq, events)
        self._queued_events = 0
        self.inflight_requests = 0
        self.admitted_requests = 0
        self.admitted_events = 0
        self.rejected_requests: Counter[str] = Counter()
        self.rejected_events = 0  # events of refused requests whose body was parsed

    @classmethod
    def from_config(
        cls, ingest: IngestConfig, learned_seq: Callable[[], int] | None = None
    ) -> Admission:
        return cls(ingest.max_pending_events, ingest.max_inflight_requests,
                   ingest.retry_after_s, learned_seq)  # fmt: skip

    @property
    def pending_events(self) -> int:
        self._forget_learned()
        return self._reserved + self._queued_events

    def enter(self) -> Ticket | Overload:
        """Admit one request into the handler, or refuse it before its body is read."""
        if self.inflight_requests >= self.max_inflight_requests:
            return self._refuse(
                INFLIGHT_REQUESTS,
                f"{self.inflight_requests} ingest requests in flight, "
                f"the limit is {self.max_inflight_requests}",
            )
        if self.pending_events >= self.max_pending_events:
            return self._refuse_pending(1)
        self.inflight_requests += 1
        return Ticket(self)

    def statistics(self) -> dict[str, Any]:
        return {
            "pending_events": self.pending_events,
            "max_pending_events": self.max_pending_events,
            "inflight_requests": self.inflight_requests,
            "max_inflight_requests": self.max_inflight_requests,
            "admitted_requests": self.admitted_requests,
            "admitted_events": self.admitted_events,
            "rejected_overload": sum(self.rejected_requests.values()),
            "rejected_overload_by_reason": {
                reason: self.rejected_requests[reason]
                for reason in (PENDING_EVENTS, INFLIGHT_REQUESTS)
            },
            "rejected_overload_events": self.rejected_events,
        }

    # -- used by Ticket ----------------------------------------------------

    def _reserve(self, events: int) -> Overload | None:
        if self.pending_events + events > self.max_pending_events:
            self.rejected_events += events
            return self._refuse_pending(events)
        self._reserved += events
        self.admitted_requests += 1
        self.admitted_events += events
        return None

    def _unreserve(self, events: int) -> None:
        self._reserved -= events

    def _hold_until_learned(self, seq: int, events: int) -> None:
        if events <= 0 or seq < 0 or self._learned_seq is None:
            return
        heapq.heappush(self._queued, (seq, events))
        self._queued_events += events

    def _leave(self) -> None:
        self.inflight_requests -= 1

    def _forget_learned(self) -> None:
        if self._learned_seq is None or not self._queued:
            return
        learned = self._learned_seq()
        while self._queued and self._queued[0][0] <= learned:
            _, events = heapq.heappop(self._queued)
            self._queued_events -= events

    def _refuse_pending(self, events: int) -> Overload:
        return self._refuse(
            PENDING_EVENTS,
            f"{self.pending_events} events accepted and not yet learned; "
            f"{events} more would pass the limit of {self.max_pending_events}",
        )

    def _refuse(self, reason: str, message: str) -> Overload:
        self.rejected_requests[reason] += 1
        return Overload(reason, f"overloaded: {message}; retry later", self.retry_after_s)


class Ticket:
    """One admitted request; use as a context manager so its capacity is always returned.

    ``reserve(n)`` once the events are counted, ``queued(seq, accepted)`` once the
    accepted ones are queued; whatever is reserved but not handed over as queued
    (rejected events, an error, a cancelled request) is released on exit.
    """

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._reserved = 0
        self._closed = False

    def reserve(self, events: int) -> Overload | None:
        """Reserve room for ``events`` parsed events, or refuse them all."""
        overload = self._admission._reserve(events)
        if overload is None:
            self._reserved += events
        return overload

    def queued(self, seq: int, accepted: int) -> None:
        """``accepted`` events were queued with ``seq`` their last batch: pending until learned."""
        accepted = min(accepted, self._reserved)
        self._admission._hold_until_learned(seq, accepted)
        self._admission._unreserve(self._reserved)
        self._reserved = 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._admission._unreserve(self._reserved)
        self._reserved = 0
        self._admission._leave()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
