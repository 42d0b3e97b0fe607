"""The front: what the HTTP API and the dashboard need of a serving process.

The embedded :class:`~runtime.system.System` and the cluster ranker's
:class:`~runtime.cluster.ClusterFront` both implement :class:`Front`, so
``runtime/http.py`` depends on this small typed interface and never probes what it
was given.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from actors.events import (
    Event,
    EventLimits,
    Feature,
    InvalidEvent,
    TimeBounds,
    Unparsable,
    event_object,
    validate_event,
)
from actors.features import Catalog
from actors.filters import ItemFilter
from runtime.admission import Admission
from runtime.config import Config
from runtime.errors import BadRequest

if TYPE_CHECKING:
    from runtime.lifecycle import Lifecycle


@dataclass
class IngestResult:
    accepted: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    learned: bool = False
    seq: int = -1  # sequence number of the last batch queued (-1: none); not in the response

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "errors": self.errors,
            "learned": self.learned,
        }


def recommend_target(user: Any, k: Any) -> tuple[str, int]:
    """``user`` as events spell it (an integer id is its decimal text) and ``k``, or
    BadRequest saying what is wrong, so an embedding caller gets the HTTP API's rules."""
    if isinstance(user, bool) or not isinstance(user, str | int):
        raise BadRequest(f"user must be a string or integer id, got {type(user).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BadRequest(f"k must be an integer of at least 1, got {k!r}")
    return str(user), k


def payload_text(obj: Any) -> str:
    """A rejected input as the dead-letter record keeps it (at most 8 KiB)."""
    if isinstance(obj, Unparsable):
        return obj.payload
    try:
        return json.dumps(obj, ensure_ascii=False, default=repr)[:8192]
    except (TypeError, ValueError):
        return repr(obj)[:8192]


Delayed = tuple[int, Event, Any]  # (index in the request, validated event, the input)
Refusal = tuple[int, str, Any]  # (index in the request, reason, the input)


@dataclass
class SplitEvents:
    """A request's events after validation: learn now, join with labels, or refuse."""

    count: int = 0
    plain: list[Event] = field(default_factory=list)
    delayed: list[Delayed] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


def event_bounds(config: Config, delayed_labels: bool) -> tuple[EventLimits, TimeBounds]:
    """What ingest accepts: event sizes (impressions and outcomes only where a joiner
    waits for them), the feedback types and plausible times."""
    ingest = config.ingest
    limits = EventLimits(
        max_string_len=ingest.max_string_len,
        max_features=ingest.max_features_per_event,
        delayed_labels=delayed_labels,
        feedback_types=config.feedback.types,
    )
    return limits, TimeBounds(ingest.min_ts, ingest.max_ahead_s)


def split_events(
    events: Iterable[Any],
    limits: EventLimits,
    times: TimeBounds | None = None,
    now: float = 0.0,
    first: int = 0,
    into: SplitEvents | None = None,
    untimed_at: float | None = None,
) -> SplitEvents:
    """Validate every input (and its time against ``times`` at ``now``); impressions and
    outcomes go to ``delayed``.  ``first`` is the index of the first input in its
    request, ``into`` a split to extend (a request validated in slices); with
    ``untimed_at`` an event without a time happened then (when it arrived)."""
    split = into if into is not None else SplitEvents()
    for index, obj in enumerate(events, start=first):
        split.count += 1
        try:
            event = validate_event(obj, limits)
        except InvalidEvent as error:
            split.refused.append((index, str(error), obj))
            continue
        problem = times.problem(event.ts, now) if times is not None else None
        if problem is not None:
            split.refused.append((index, problem, obj))
            continue
        if untimed_at is not None and math.isnan(event.ts):
            event.ts = untimed_at
        if event.event is None:
            split.plain.append(event)
        else:
            split.delayed.append((index, event, obj))
    return split


SLICE = 500  # events validated between two yields to the event loop (about 3 ms)


async def split_events_yielding(
    events: list[Any], limits: EventLimits, times: TimeBounds | None = None, now: float = 0.0
) -> SplitEvents:
    """:func:`split_events` in slices, letting other requests run between them: one
    request of 100,000 events stalled every other client for half a second."""
    split = SplitEvents()
    for lo in range(0, len(events), SLICE):
        if lo:
            await asyncio.sleep(0)
        split_events(
            events[lo : lo + SLICE], limits, times, now, first=lo, into=split, untimed_at=now
        )
    return split


def context_features(
    user: str, context: dict[str, Any] | None, limits: EventLimits
) -> list[Feature]:
    """A request's context as features, validated like an event's."""
    if not context:
        return []
    return validate_event({"item": "-", "user": user, "context": context}, limits).features


ITEMS_PAGE_DEFAULT = 1_000
ITEMS_PAGE_MAX = 10_000
ITEMS_OFFSET_MAX = 10**18 - 1  # what an 18-digit query parameter holds


def catalog_page(catalog: Catalog, offset: int, limit: int) -> dict[str, Any]:
    """Items ``offset`` .. ``offset + limit - 1`` of the catalog in the order they were
    first seen, each as the item upsert that would recreate it; new items only ever
    join at the end, so paging by offset misses none while items arrive."""
    total = len(catalog)
    rows = range(min(offset, total), min(offset + limit, total))
    items = [
        event_object(Event(None, catalog.ids[row], features=catalog.features(row))) for row in rows
    ]
    end = rows.stop
    return {"total": total, "offset": offset, "next_offset": end if end < total else None,
            "items": items}  # fmt: skip


class Front(Protocol):
    """Ingest, recommend, statistics and health of one serving process."""

    config: Config
    admission: Admission
    catalog: Catalog
    exploration_available: bool
    lifecycle: Lifecycle  # hide, unhide, delete items; forget users

    async def ingest(
        self, events: Iterable[Any], *, wait: bool = True, source: str = "api"
    ) -> IngestResult: ...

    async def reject(self, rejected: Sequence[tuple[str, str]], source: str) -> None: ...

    async def recommend(
        self,
        user: str,
        k: int = 10,
        candidates: Sequence[str] | None = None,
        context: dict[str, Any] | None = None,
        explain: bool = False,
        explore: str | None = None,
        scale: float | None = None,
        epsilon: float | None = None,
        session: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        item_filter: ItemFilter | None = None,
        variant: str | None = None,
    ) -> list[dict[str, Any]]: ...

    async def similar(self, item: str, k: int = 10) -> list[dict[str, Any]]:
        """The item's neighbours by co-occurrence (UnknownItem: not in the catalog)."""
        ...

    async def inspect(self, item: str, k: int = 10) -> dict[str, Any]:
        """Features with weights, neighbours, successors, exposure (UnknownItem)."""
        ...

    def statistics(self) -> dict[str, Any]: ...

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", ...}`` or ``{"status": "failed", "error": ...}``."""
        ...
