"""Delayed labels: joining later clicks to their impressions (pure, synchronous code).

In a CTR system the label of an impression is known only when its click arrives,
seconds or minutes later, or when it is clear that none will come.  The
:class:`DelayedLabelJoiner` keeps each open impression (with the probability the
model gave it when it was shown, its *prescore*) until either

* a click or conversion with the same ``impression_id`` arrives within
  ``window_s`` seconds: the impression resolves as a positive at once;
* its window closes with no click: it resolves as a negative;
* ``max_pending`` impressions are open and a new one arrives: the one whose
  window closes first resolves early as a negative (``evicted``).

Time is stream time: an event's ``ts`` when it has one, else the injected clock.
The joiner's *watermark* is the latest time it has seen; a window closes once the
watermark passes its end (``ts + window_s``), so a click timestamped exactly at
the end still joins.  Nothing here reads the wall clock except through ``clock``.

A conversion is treated like a click (label 1); whichever outcome arrives first
resolves the impression and a second outcome for it counts as ``duplicate_click``.
Resolved impressions are remembered (at most ``max_pending`` of them, oldest
forgotten first) so that a later outcome can be told apart: a duplicate of a
joined one, a *late* click for one whose window had closed (handled by the late
policy), or an *unknown* id (never seen, or forgotten).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from actors.events import IMPRESSION, OUTCOMES, Event
from runtime.messages import IMPLICIT, NEGATIVE, NOT_EVALUATED, NOT_SCORED, POSITIVE

LATE_POLICIES = ("ignore", "positive", "dead_letter")
"""What a click for an impression whose window has closed does: ``ignore`` counts it;
``positive`` also learns one extra positive example of the impression (a correction,
not evaluated again by the metrics); ``dead_letter`` rejects it with a reason."""

COUNTERS = (
    "impressions",
    "clicks",
    "conversions",
    "joined_positive",
    "expired_negative",
    "evicted",
    "late",
    "late_corrections",
    "duplicate_impression",
    "duplicate_click",
    "unknown_click",
    "mismatched_click",
)

# how a remembered impression was resolved
_JOINED, _EXPIRED, _EVICTED, _LATE = "joined", "expired", "evicted", "late"


@dataclass(frozen=True)
class Resolved:
    """An impression with its label, ready to learn.  ``prescore`` is the probability when
    it was shown (:data:`NOT_SCORED`: none), or :data:`NOT_EVALUATED` for a late-click
    correction."""

    event: Event
    label: int
    prescore: float
    outcome: str  # joined | expired | evicted | late


@dataclass
class Step:
    """What one impression or outcome did: impressions resolved (in order) and, when the
    event itself cannot be used, the reason (the caller dead-letters it)."""

    resolved: list[Resolved] = field(default_factory=list)
    rejected: str | None = None


@dataclass
class _Open:
    event: Event
    prescore: float
    deadline: float
    order: int


@dataclass
class _Closed:
    how: str
    user: str | None
    item: str
    open: _Open | None  # kept only when a late click may still learn a correction


class DelayedLabelJoiner:
    """Joins click/conversion events to impressions by ``impression_id`` within a window."""

    def __init__(
        self,
        window_s: float,
        max_pending: int,
        late_policy: str = "ignore",
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not (math.isfinite(window_s) and window_s >= 0):
            raise ValueError(f"window_s must be a finite number >= 0, got {window_s!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        if late_policy not in LATE_POLICIES:
            raise ValueError(f"late_policy must be one of {LATE_POLICIES}, got {late_policy!r}")
        self.window_s = float(window_s)
        self.max_pending = max_pending
        self.late_policy = late_policy
        self.clock = clock
        self.watermark = -math.inf
        self._watermark_wall = math.nan  # clock reading when the watermark last moved
        self._open: dict[str, _Open] = {}
        self._deadlines: list[tuple[float, int, str]] = []  # heap; stale entries skipped
        self._closed: OrderedDict[str, _Closed] = OrderedDict()
        self._order = 0
        self.counters = dict.fromkeys(COUNTERS, 0)

    @property
    def pending(self) -> int:
        return len(self._open)

    # -- time ------------------------------------------------------------------

    def time_of(self, event: Event) -> float:
        """An event's stream time: its ``ts``, else the clock."""
        if math.isfinite(event.ts):
            return event.ts
        if self.clock is None:
            raise ValueError("an event without 'ts' needs a joiner with a clock")
        return self.clock()

    def idle_s(self) -> float:
        """Clock seconds since an event last moved the watermark (0 without a clock)."""
        if self.clock is None or math.isnan(self._watermark_wall):
            return 0.0
        return max(0.0, self.clock() - self._watermark_wall)

    def stream_time(self) -> float:
        """The watermark, moved on by the clock time passed since it last moved: with no
        new events, windows still close (as they would in the live stream)."""
        return self.watermark + self.idle_s()

    def _advance(self, now: float) -> None:
        if now > self.watermark:
            self.watermark = now
            if self.clock is not None:
                self._watermark_wall = self.clock()

    def expire(self, now: float) -> list[Resolved]:
        """Resolve as negatives the impressions whose window closed before ``now``, by
        window end (then arrival order); the watermark moves to ``now``."""
        self._advance(now)
        resolved = []
        while (oldest := self._oldest()) is not None and oldest.deadline < self.watermark:
            resolved.append(self._close(self._pop(oldest), NEGATIVE, _EXPIRED))
        return resolved

    # -- events ----------------------------------------------------------------

    def add_impression(self, event: Event, prescore: float = NOT_SCORED) -> Step:
        """Open an impression (``prescore``: its probability when shown)."""
        if event.event != IMPRESSION or event.impression_id is None:
            raise ValueError("add_impression needs an impression event with an impression_id")
        shown_at = self.time_of(event)
        step = Step(self.expire(shown_at))
        key = event.impression_id
        if key in self._open or key in self._closed:
            self.counters["duplicate_impression"] += 1
            step.rejected = f"duplicate impression_id {key[:80]!r}: the impression is already known"
            return step
        oldest = self._oldest()
        if len(self._open) >= self.max_pending and oldest is not None:
            step.resolved.append(self._close(self._pop(oldest), NEGATIVE, _EVICTED))
        self._order += 1
        entry = _Open(event, prescore, shown_at + self.window_s, self._order)
        self._open[key] = entry
        heapq.heappush(self._deadlines, (entry.deadline, entry.order, key))
        self.counters["impressions"] += 1
        step.resolved += self.expire(self.watermark)  # its window may be over already
        self._compact()
        return step

    def add_outcome(self, event: Event) -> Step:
        """A click or conversion: resolves its open impression as a positive."""
        if event.event not in OUTCOMES or event.impression_id is None:
            raise ValueError("add_outcome needs a click or conversion with an impression_id")
        step = Step(self.expire(self.time_of(event)))
        self.counters["clicks" if event.event == "click" else "conversions"] += 1
        key = event.impression_id
        entry = self._open.get(key)
        if entry is not None:
            step.rejected = _mismatch(event, entry.event.user, entry.event.item)
            if step.rejected is None:
                del self._open[key]
                step.resolved.append(self._close(entry, POSITIVE, _JOINED))
            else:
                self.counters["mismatched_click"] += 1
            return step
        closed = self._closed.get(key)
        if closed is None:
            self.counters["unknown_click"] += 1
            step.rejected = (
                f"{event.event} for unknown impression_id {key[:80]!r} "
                "(never seen, or resolved too long ago to remember)"
            )
        elif (reason := _mismatch(event, closed.user, closed.item)) is not None:
            self.counters["mismatched_click"] += 1
            step.rejected = reason
        elif closed.how in (_JOINED, _LATE):
            self.counters["duplicate_click"] += 1
            step.rejected = f"duplicate {event.event} for impression_id {key[:80]!r}"
        else:
            step.rejected = self._late(key, closed, event, step)
        return step

    def _late(self, key: str, closed: _Closed, event: Event, step: Step) -> str | None:
        self.counters["late"] += 1
        how = "evicted early" if closed.how == _EVICTED else "its window closed"
        impression = closed.open
        closed.how, closed.open = _LATE, None
        if self.late_policy == "positive" and impression is not None:
            self.counters["late_corrections"] += 1
            step.resolved.append(_resolved(impression, POSITIVE, NOT_EVALUATED, _LATE))
        elif self.late_policy == "dead_letter":
            return (
                f"late {event.event} for impression_id {key[:80]!r}: {how} (learned as a negative)"
            )
        return None

    # -- forgetting a user ------------------------------------------------------

    def impressions_of(self, user: str) -> tuple[list[str], list[str]]:
        """The impression ids of ``user``: open ones, and resolved ones remembered."""
        open_ = [key for key, entry in self._open.items() if entry.event.user == user]
        closed = [key for key, entry in self._closed.items() if entry.user == user]
        return open_, closed

    def forget_user(self, user: str) -> tuple[int, int]:
        """Drop ``user``'s open impressions (never learned) and remembered resolved ones (a
        later click of theirs is an unknown one); how many of each."""
        open_, closed = self.impressions_of(user)
        for key in open_:
            del self._open[key]  # its heap entry is skipped as stale
        for key in closed:
            del self._closed[key]
        self._compact()
        return len(open_), len(closed)

    # -- bookkeeping -----------------------------------------------------------

    def _oldest(self) -> _Open | None:
        """The open impression whose window closes first (heap entries of impressions
        resolved by a click are dropped on the way)."""
        while self._deadlines:
            _, order, key = self._deadlines[0]
            entry = self._open.get(key)
            if entry is not None and entry.order == order:
                return entry
            heapq.heappop(self._deadlines)
        return None

    def _pop(self, entry: _Open) -> _Open:
        """Remove ``entry``, which :meth:`_oldest` just returned."""
        heapq.heappop(self._deadlines)
        assert entry.event.impression_id is not None
        del self._open[entry.event.impression_id]
        return entry

    def _close(self, entry: _Open, label: int, how: str) -> Resolved:
        counter = {_JOINED: "joined_positive", _EXPIRED: "expired_negative", _EVICTED: "evicted"}
        self.counters[counter[how]] += 1
        keep = entry if how != _JOINED and self.late_policy == "positive" else None
        self._remember(entry.event, _Closed(how, entry.event.user, entry.event.item, keep))
        return _resolved(entry, label, entry.prescore, how)

    def _remember(self, event: Event, closed: _Closed) -> None:
        assert event.impression_id is not None
        self._closed[event.impression_id] = closed
        self._closed.move_to_end(event.impression_id)
        while len(self._closed) > self.max_pending:
            self._closed.popitem(last=False)

    def _compact(self) -> None:
        """Drop heap entries of impressions already resolved (clicked), so the heap stays
        within twice the open impressions."""
        if len(self._deadlines) > 2 * len(self._open) + 64:
            self._deadlines = [(e.deadline, e.order, k) for k, e in self._open.items()]
            heapq.heapify(self._deadlines)

    def statistics(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "remembered_closed": len(self._closed),
            **self.counters,
            "window_s": self.window_s,
            "late_policy": self.late_policy,
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
        }

    # -- snapshots ---------------------------------------------------------------

    STATE_VERSION: ClassVar[int] = 1

    def to_state(self) -> dict[str, Any]:
        """Everything needed to go on after a restart: open impressions stay open."""
        return {
            "watermark": self.watermark,
            "order": self._order,
            "open": [
                [_event_state(e.event), e.prescore, e.deadline, e.order]
                for e in self._open.values()
            ],
            "closed": [
                [key, c.how, c.user, c.item, _open_state(c.open)] for key, c in self._closed.items()
            ],
            "counters": dict(self.counters),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.watermark = float(state["watermark"])
        self._watermark_wall = self.clock() if self.clock is not None else math.nan
        self._order = int(state["order"])
        self._open = {}
        for event_state, prescore, deadline, order in state["open"]:
            entry = _Open(_event_from_state(event_state), float(prescore), deadline, int(order))
            assert entry.event.impression_id is not None
            self._open[entry.event.impression_id] = entry
        self._deadlines = [(e.deadline, e.order, k) for k, e in self._open.items()]
        heapq.heapify(self._deadlines)
        self._closed = OrderedDict(
            (key, _Closed(how, user, item, _open_from_state(kept)))
            for key, how, user, item, kept in state["closed"]
        )
        self.counters = {name: int(state["counters"].get(name, 0)) for name in COUNTERS}


def _mismatch(outcome: Event, user: str | None, item: str) -> str | None:
    """The reason an outcome that names another user or item than its impression is refused."""
    for name, given, expected in (("user", outcome.user, user), ("item", outcome.item, item)):
        if given and given != expected:
            return (
                f"{outcome.event} for impression_id {str(outcome.impression_id)[:80]!r} has "
                f"{name} {given[:80]!r} but the impression has {str(expected)[:80]!r}"
            )
    return None


def _resolved(entry: _Open, label: int, prescore: float, how: str) -> Resolved:
    learned = dataclasses.replace(entry.event, label=label, event=None, impression_id=None)
    return Resolved(learned, label, prescore, how)


def _event_state(event: Event) -> list[Any]:
    return [
        event.user,
        event.item,
        event.ts,
        event.weight,
        [list(f) for f in event.features],
        event.event,
        event.impression_id,
    ]


def _event_from_state(state: list[Any]) -> Event:
    user, item, ts, weight, features, kind, impression_id = state
    return Event(
        user=user,
        item=item,
        ts=float(ts),
        label=IMPLICIT,
        weight=float(weight),
        features=[(str(ns), str(value), float(x)) for ns, value, x in features],
        event=kind,
        impression_id=impression_id,
    )


def _open_state(entry: _Open | None) -> list[Any] | None:
    if entry is None:
        return None
    return [_event_state(entry.event), entry.prescore, entry.deadline, entry.order]


def _open_from_state(state: list[Any] | None) -> _Open | None:
    if state is None:
        return None
    event_state, prescore, deadline, order = state
    return _Open(_event_from_state(event_state), float(prescore), float(deadline), int(order))
