"""The System: the model wired as one process, under one supervisor.

Embedding freshrank in another asyncio application::

    async with System.from_config() as s:
        await s.ingest([{"user": "u1", "item": "i1"}])
        print(await s.recommend("u1", k=10))

Data flow (docs/architecture.md): ingest validates (bad input goes to the dead-letter
sink with its reason) → hasher → trainer → learner shards; the ranker reads the
weights the learners write.  Every arrow is a bounded channel of the transport.  The
model comes from :func:`actors.model.build_model`; snapshots are compositions of its
parts (``actors/state.py``).  A crash of any task fails every waiter and every call
with :class:`SystemFailed`, and is raised again when the ``async with`` block ends.

System is the front (ingest, recommend, statistics, lifecycle); the parts it holds do
the rest: :class:`~runtime.pipeline.Pipeline` queues batches through the actors,
:class:`~runtime.labels.LabelStage` joins delayed labels,
:class:`~runtime.durability.Persistence` restores, journals, snapshots and forgets
users, and :class:`~runtime.lifecycle.Lifecycle` (``s.lifecycle``) hides and deletes
items and forgets users.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from actors.exploration import ExplorationPolicy
from actors.filters import ItemFilter
from actors.model import build_model
from actors.sources import SimulatorSource
from actors.state import STATE_LIMITS, StateError
from runtime.admission import Admission
from runtime.config import Config, column_crosses, warn_column_crosses
from runtime.durability import Persistence
from runtime.experiments import build_pipeline, variant_ranking
from runtime.front import (
    IngestResult,
    SplitEvents,
    context_features,
    event_bounds,
    payload_text,
    recommend_target,
    split_events,
    split_events_yielding,
)
from runtime.gcpause import release
from runtime.labels import LabelStage
from runtime.lifecycle import Lifecycle
from runtime.messages import EventBatch
from runtime.supervisor import Service, Supervisor, SystemFailed
from runtime.transport import MemoryTransport, Transport

__all__ = ["STATE_LIMITS", "IngestResult", "SnapshotError", "System", "SystemFailed"]
SnapshotError = StateError


class System:
    """One process: in-memory (or any) transport, N learner shards, one trainer, a ranker."""

    exploration_available = True

    def __init__(
        self,
        config: Config | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = c = config or Config()
        self.transport = transport or MemoryTransport(roundtrip=c.queues.codec_roundtrip)
        self.model = m = build_model(c, clock)
        self.space, self.store, self.factors, self.catalog = m.space, m.store, m.factors, m.catalog
        self.users, self.metrics, self.labels = m.users, m.metrics, m.labels
        self.limits, self.times = event_bounds(c, delayed_labels=True)
        self.ranker = m.ranker()
        self.exploration = ExplorationPolicy.from_settings(**dataclasses.asdict(c.exploration))
        self.supervisor = Supervisor("system")
        self.pipeline = p = build_pipeline(m, self.transport, self.supervisor, clock)
        self.hasher, self.trainer, self.learners = p.hasher, p.trainer, p.learners
        self.dead_letters, learned = p.dead_letters, p.learned  # every variant's learned too
        # journal order = learning order: a request's append and its queueing are one step
        self._ingest_lock = asyncio.Lock()
        self.label_stage = LabelStage(
            m, self.ranker, self.submit, self.wait_learned, p.learn, self._ingest_lock
        )
        self.persistence = Persistence(m, learned, self._ingest_lock, clock, p.recount)
        self.durability = self.persistence.durability
        self.services: list[Service] = [*p.services, self.label_stage, *self.persistence.services()]
        simulated = functools.partial(self.ingest, source="simulator", wait=False)
        self.simulator = SimulatorSource.from_section(c.simulator, simulated)
        self.services += [self.simulator] if self.simulator is not None else []
        self.admission = Admission.from_config(c.ingest, lambda: learned.value)
        self.lifecycle = Lifecycle(self.ingest, m.catalog, clock, self.persistence.forget_user)
        self.clock = clock
        self.column_crosses = column_crosses(c.model.crosses)
        self.started_at = time.time()
        self._started = False

    @classmethod
    def from_config(
        cls, config: Config | str | Path | dict[str, Any] | None = None, **kwargs: Any
    ) -> System:
        """A System from a Config, a TOML path, a dict of sections, or the embedded default."""
        if isinstance(config, dict):
            config = Config.from_dict(config)
        return cls(Config.load(config) if isinstance(config, str | Path) else config, **kwargs)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Restore the snapshot (if configured and present) and start every service."""
        if self._started:
            return
        warn_column_crosses(self.column_crosses)
        self.persistence.open()
        self._started = True
        await self.transport.start()
        await self.supervisor.start(self.services)
        await self.persistence.recover(self._replayed)

    async def stop(self, drain: bool = True) -> None:
        """Drain (everything accepted gets learned), then stop every service in reverse."""
        if not self._started:
            return
        if self.supervisor.running:
            if self.simulator is not None:
                await self.simulator.stop()
            await self.label_stage.stop()  # open impressions stay open (in the snapshot)
            if drain:
                await self.drain()
                await self.persistence.snapshot()
        await self.supervisor.stop()
        await self.transport.stop()
        self.persistence.close()
        self._started = False

    async def __aenter__(self) -> System:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(drain=exc[0] is None)
        if exc[0] is None and self.supervisor.failure is not None:
            self.supervisor.check()

    async def wait_failed(self) -> BaseException:
        """The first crash (for a daemon's main loop)."""
        return await self.supervisor.wait_failed()

    # -- ingest ------------------------------------------------------------

    async def ingest(
        self, events: Iterable[Any], *, wait: bool = True, source: str = "api"
    ) -> IngestResult:
        """Validate, journal (with ``state.dir``) and queue events; with ``wait`` return
        once they are learned (and, with ``journal.fsync = "always"``, on disk).

        Bad events never raise: each is reported with its reason in the result and
        written to the dead-letter sink, and the good events of the same call are learned.
        """
        self.supervisor.check()
        if isinstance(events, dict):  # one event, not an iterable of its keys
            events = [events]
        events = events if isinstance(events, list) else list(events)
        async with self._ingest_lock:
            now = self.clock()
            split = await split_events_yielding(events, self.limits, self.times, now)
            position = self.persistence.append(events, split, source, now)
            result, last = await self._apply(split, now, source)
        await release(split.plain)
        await self.persistence.durable(position)
        if wait and last is not None:
            await self.wait_learned(last)
            result.learned = True
        return result

    async def _apply(
        self, split: SplitEvents, now: float, source: str | None
    ) -> tuple[IngestResult, int | None]:
        """Join, learn and dead-letter a request's events (``source`` None: a replay, whose
        refusals were reported when the events first came); untimed events carry their
        arrival time already (split_events' ``untimed_at``)."""
        good, prescores, refused = await self.label_stage.resolve(split)
        result = IngestResult(accepted=split.count - len(refused), rejected=len(refused))
        result.errors = [{"index": i, "reason": reason} for i, reason, _ in refused]
        if refused and source is not None:
            await self.reject([(reason, payload_text(obj)) for _, reason, obj in refused], source)
        last = await self.pipeline.learn(good, prescores)
        result.seq = -1 if last is None else last
        return result, last

    async def _replayed(self, events: list[Any], arrived: float) -> tuple[IngestResult, int | None]:
        """A journal record's events learned again (their refusals were reported then)."""
        split = split_events(events, self.limits, untimed_at=arrived)
        async with self._ingest_lock:
            return await self._apply(split, arrived, None)

    async def flush_labels(self, now: float | None = None) -> int | None:
        self.supervisor.check()
        return await self.label_stage.flush(now)

    async def reject(self, rejected: Sequence[tuple[str, str]], source: str) -> None:
        """Send (reason, payload) pairs to the dead-letter sink."""
        await self.pipeline.reject(rejected, source)

    async def submit(self, batch: EventBatch) -> int:
        """Queue an already-built batch (file replay fast path); returns its sequence number."""
        return await self.pipeline.submit(batch)

    async def wait_learned(self, seq: int) -> None:
        await self.pipeline.learned.wait_for(seq)

    async def drain(self) -> None:
        """Wait until everything submitted so far is learned and every dead letter is written
        (impressions whose label window is still open stay open)."""
        await self.pipeline.drain()

    # -- serving -----------------------------------------------------------

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
    ) -> list[dict[str, Any]]:
        """Top-k items for ``user`` with the weights as they are now (every learned event counts).

        ``explore`` (off | thompson | epsilon), ``scale`` and ``epsilon`` override the
        configured exploration for this request; a bad value raises ExplorationError.
        With ``[experiments]``: Recommendations naming the ``variant`` (or the user's)."""
        self.supervisor.check()
        policy = self.exploration.override(explore, scale, epsilon)
        user, k = recommend_target(user, k)
        features = context_features(user, context, self.limits)
        active = policy if policy.active else None
        serve = variant_ranking(self.model, self.ranker, user, variant)
        return serve(user, k, candidates, features, explain, active, session, exclude, item_filter)

    async def similar(self, item: str, k: int = 10) -> list[dict[str, Any]]:
        """The item's nearest neighbours by co-occurrence, as the model has them now."""
        self.supervisor.check()
        return self.ranker.similar(item, k)

    async def inspect(self, item: str, k: int = 10) -> dict[str, Any]:
        """What the model knows of one item (:meth:`Ranker.inspect`)."""
        self.supervisor.check()
        return self.ranker.inspect(item, k)

    def health(self) -> dict[str, Any]:
        failure = self.supervisor.failure
        if failure is not None:
            return {"status": "failed", "error": repr(failure)}
        return {
            "status": "ok",
            "seq": self.model.stream.seq,
            "learned_seq": self.pipeline.learned.value,
        }

    def statistics(self) -> dict[str, Any]:
        failure = self.supervisor.failure
        return {
            "uptime_s": round(time.time() - self.started_at, 3),
            "seq": self.model.stream.seq,
            "shards": len(self.learners),
            "sync": self.config.training.sync,
            "catalog_items": len(self.catalog),
            "users": len(self.users.history),
            "crosses_on_columns_only": len(self.column_crosses),  # warned at start
            "metrics": self.metrics.summary(),
            **self.pipeline.statistics(),
            "ranker": self.ranker.statistics(),
            "queues": self.transport.statistics(),
            "simulator": self.simulator.statistics() if self.simulator else None,
            "admission": self.admission.statistics(),
            "labels": self.labels.statistics(),
            "components": self.model.component_statistics(),
            "lifecycle": self.lifecycle.statistics(),
            **self.persistence.statistics(),
            "failed": repr(failure) if failure else None,
        }

    # -- saved state (runtime/durability.py) ---------------------------------

    def write_snapshot(self, path: str | Path | None = None) -> Path:
        """Write the model's parts atomically (blocking: on a running loop, save_snapshot)."""
        return self.persistence.write_snapshot(path)

    async def save_snapshot(self, path: str | Path | None = None) -> Path:
        """:meth:`write_snapshot` off the event loop (copied and written in threads)."""
        return await self.persistence.save_snapshot(path)

    def restore(self, path: str | Path) -> None:
        """Load a snapshot written by :meth:`write_snapshot` (same model settings required)."""
        self.persistence.restore(path)

    async def snapshot(self) -> Path | None:
        """Write a snapshot of the journal position learned so far (with ``state.dir``)."""
        return await self.persistence.snapshot()
