"""The ingest side of delayed labels: impressions wait in the model's
:class:`~actors.delayed.DelayedLabelJoiner` for their clicks, and are learned once
their label is known (clicked, window closed, evicted).

:class:`LabelStage` scores each impression when it arrives (its prescore is what
the metrics evaluate), and owns the timer that closes windows while no events flow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from actors.batching import batch_from_events
from actors.delayed import Resolved
from actors.events import FEATURE_GROUPS, IMPRESSION, Event, Feature
from actors.features import score_items
from actors.featurizer import Featurizer
from actors.ftrl import sigmoid
from actors.model import Model
from actors.ranker import Ranker
from runtime.front import Delayed, Refusal, SplitEvents
from runtime.messages import NOT_SCORED, EventBatch
from runtime.supervisor import Supervisor, SystemFailed

ITEM_SIDE = FEATURE_GROUPS["item_features"]  # namespace prefix of item-side features


class LabelStage:
    """Joins impressions and outcomes; a service whose timer closes idle windows."""

    name = "labels"

    def __init__(
        self,
        model: Model,
        ranker: Ranker,
        submit: Callable[[EventBatch], Awaitable[int]],
        wait_learned: Callable[[int], Awaitable[None]],
        learn: Callable[[list[Event], list[float]], Awaitable[int | None]],
        lock: asyncio.Lock | None = None,
    ) -> None:
        self.joiner = model.labels
        self.experiments = model.experiments  # credits each variant with its clicks
        self.catalog = model.catalog
        self.space = model.space
        self.featurizer = Featurizer(model.space, model.catalog, model.users)
        self.ranker = ranker
        self.window_s = model.config.labels.window_s
        self._submit = submit
        self._wait_learned = wait_learned
        self._learn = learn
        # held by the owner's ingest too: a snapshot's copy never falls between taking
        # impressions out of the joiner and queueing them
        self._lock = lock or asyncio.Lock()
        self._supervisor: Supervisor | None = None
        self._timer: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def timer(self) -> asyncio.Task[None] | None:
        """The task closing idle windows (None: not running)."""
        return self._timer

    def attach(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    async def start(self) -> None:
        assert self._supervisor is not None
        self._stop.clear()
        self._timer = self._supervisor.spawn(self._close_idle_windows(), "labels:expiry")

    async def stop(self) -> None:
        """Stopped by an event rather than cancelled, so a flush is never cut off between
        taking impressions out of the joiner and queueing them."""
        if self._timer is None:
            return
        self._stop.set()
        await asyncio.gather(self._timer, return_exceptions=True)
        self._timer = None

    async def resolve(
        self, split: SplitEvents
    ) -> tuple[list[Event], list[float] | None, list[Refusal]]:
        """A request's events to learn now: the plain ones, then the impressions whose label
        is known, with their prescores (None: the request had no impressions or outcomes);
        and every refusal, in request order."""
        resolved, refused = await self.join(split.delayed)
        good = split.plain + [r.event for r in resolved]
        prescores = [NOT_SCORED] * len(split.plain) + [r.prescore for r in resolved]
        refusals = sorted(split.refused + refused, key=lambda r: int(r[0]))
        return good, prescores if split.delayed else None, refusals

    async def join(self, delayed: Sequence[Delayed]) -> tuple[list[Resolved], list[Refusal]]:
        """The impressions whose label is known now, and the outcomes the joiner refuses."""
        impressions = [e for _, e, _ in delayed if e.event == IMPRESSION]
        await self._catalog_new_items(impressions)
        prescores = iter(self.prescores(impressions))  # no await from here: weights stay put
        resolved: list[Resolved] = []
        refused: list[Refusal] = []
        for index, event, obj in delayed:
            if event.event == IMPRESSION:
                step = self.joiner.add_impression(event, next(prescores))
            else:
                step = self.joiner.add_outcome(event)
            resolved += step.resolved
            if step.rejected is not None:
                refused.append((index, step.rejected, obj))
        if self.experiments is not None:
            self.experiments.observe(resolved)
        return resolved, refused

    async def _catalog_new_items(self, impressions: Sequence[Event]) -> None:
        """Put the items first seen in impressions into the catalog, so they can be scored."""
        new: dict[str, Event] = {}
        for event in impressions:
            if event.item not in self.catalog.rows and event.item not in new:
                item_side = [f for f in event.features if f[0].startswith(ITEM_SIDE)]
                new[event.item] = Event(None, event.item, event.ts, features=item_side)
        if new:
            await self._wait_learned(await self._submit(batch_from_events(list(new.values()))))

    def prescores(self, impressions: Sequence[Event]) -> list[float]:
        """The model's probability for each impression now (NOT_SCORED: its item is unknown),
        from the row the trainer would learn it with; one scoring pass per user context."""
        contexts: dict[tuple[str, tuple[Feature, ...]], list[int]] = {}
        for i, event in enumerate(impressions):
            user_side = tuple(f for f in event.features if not f[0].startswith(ITEM_SIDE))
            contexts.setdefault((event.user or "", user_side), []).append(i)
        prescores = [NOT_SCORED] * len(impressions)
        for (user, user_side), members in contexts.items():
            known = [(i, self.catalog.rows.get(impressions[i].item, -1)) for i in members]
            known = [(i, row) for i, row in known if row >= 0]
            if not known:
                continue
            rows = np.array([row for _, row in known], np.int64)
            row = self.featurizer.user_row(user, user_side)
            sequence = self.ranker.sequence
            terms = None
            if sequence is not None:  # the signal terms, as the trainer adds them
                values = sequence.values(self.featurizer.users.sequence(user), rows)
                terms = sequence.terms(self.ranker.weights, values)
            logits = score_items(
                self.space, row, self.catalog, self.ranker.weights, rows, self.ranker.scorer, terms
            )
            for (i, _), p in zip(known, sigmoid(logits), strict=True):
                prescores[i] = float(p)
        return prescores

    async def flush(self, now: float | None = None) -> int | None:
        """Learn as negatives the impressions whose window closed before ``now`` (default:
        the stream time); the last queued batch's sequence number (None: nothing closed)."""
        async with self._lock:
            resolved = self.joiner.expire(self.joiner.stream_time() if now is None else now)
            if self.experiments is not None:
                self.experiments.observe(resolved)
            return await self._learn([r.event for r in resolved], [r.prescore for r in resolved])

    async def _close_idle_windows(self) -> None:
        """Without new events, windows still close: once no event has moved the stream time
        for a tick (a second at most), it moves on with the clock.  While events flow, only
        their times close windows, so a replay learns the same whatever its speed."""
        tick = min(1.0, max(0.05, self.window_s / 10))
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), tick)
            if self._stop.is_set():
                return
            if self.joiner.pending and self.joiner.idle_s() >= tick:
                try:
                    await self.flush()
                except SystemFailed:
                    return  # the supervisor reports the task that failed
