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
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actors.batching import batch_from_events
from actors.events import Event, EventLimits, TimeBounds
from actors.exploration import ExplorationPolicy
from actors.model import build_model
from actors.simulator import SimulatorConfig
from actors.sources import SimulatorSource
from actors.state import STATE_LIMITS, StateError, compose, restore
from runtime import snapshots
from runtime.admission import Admission
from runtime.codec import CodecError
from runtime.config import Config, column_crosses
from runtime.durability import Durability, SnapshotTimer, freeze
from runtime.errors import FreshrankError
from runtime.front import (
    IngestResult,
    SplitEvents,
    context_features,
    payload_text,
    recommend_target,
    split_events,
    split_events_yielding,
)
from runtime.gcpause import gc_paused
from runtime.journal import Record, decode_entry, encode_entry, read_records
from runtime.labels import LabelStage
from runtime.messages import DeadLetters, EventBatch
from runtime.pipeline import Pipeline
from runtime.supervisor import Service, Supervisor, SystemFailed
from runtime.transport import MemoryTransport, Transport

__all__ = ["STATE_LIMITS", "IngestResult", "SnapshotError", "System", "SystemFailed"]
SNAPSHOT = "snapshot"
SnapshotError = StateError
log = logging.getLogger("freshrank.state")


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
        self.limits = EventLimits(
            max_string_len=c.ingest.max_string_len,
            max_features=c.ingest.max_features_per_event,
            delayed_labels=True,
        )
        self.times = TimeBounds(c.ingest.min_ts, c.ingest.max_ahead_s)
        self.ranker = m.ranker()
        e = c.exploration
        self.exploration = ExplorationPolicy.from_settings(e.mode, e.scale, e.epsilon, e.seed)
        self.pipeline = p = Pipeline(m, self.transport)
        self.hasher, self.trainer, self.learners = p.hasher, p.trainer, p.learners
        self.dead_letters = p.dead_letters
        # journal order = learning order: a request's append and its queueing are one step
        self._ingest_lock = asyncio.Lock()
        self.label_stage = LabelStage(
            m, self.ranker, self.submit, self.wait_learned, self._learn, self._ingest_lock
        )
        self.services: list[Service] = [*p.services, self.label_stage]
        self.durability = Durability(c) if c.state.dir else None
        if self.durability is not None:
            self.services.append(SnapshotTimer(self.durability, self.snapshot))
        self.simulator: SimulatorSource | None = None
        if c.simulator.enabled:
            s = c.simulator
            sim = SimulatorConfig(seed=s.seed, n_users=s.n_users, n_items=s.n_items)
            self.simulator = SimulatorSource(sim, self._simulated, s.rate, s.batch)
            self.services.append(self.simulator)
        self.supervisor = Supervisor("system")
        self.supervisor.on_failure(lambda error: self.trainer.learned.fail(_failed(error)))
        i = c.ingest  # the HTTP ingest bound: events are pending until learned
        learned = self.trainer.learned
        self.admission = Admission(i.max_pending_events, i.max_inflight_requests,
                                   i.retry_after_s, learned_seq=lambda: learned.value)  # fmt: skip
        self.clock = clock
        self.column_crosses = column_crosses(c.model.crosses)
        self.started_at = time.time()
        self._submit_lock = asyncio.Lock()
        self._started = False

    @classmethod
    def from_config(
        cls, config: Config | str | Path | dict[str, Any] | None = None, **kwargs: Any
    ) -> System:
        """A System from a Config, a TOML path, a dict of sections, or the embedded default."""
        if isinstance(config, str | Path):
            config = Config.load(config)
        elif isinstance(config, dict):
            config = Config.from_dict(config)
        return cls(config, **kwargs)

    async def _simulated(self, events: list[Any]) -> None:
        await self.ingest(events, source="simulator", wait=False)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Restore the snapshot (if configured and present) and start every service."""
        if self._started:
            return
        if self.column_crosses:
            log.warning(
                "model.crosses %s: no event has these user-side namespaces (user, u.<name>, "
                "c.<name>, h.item); only a CTR file's columns of those names feed them",
                self.column_crosses,
            )
        position = self._open_durable() if self.durability else self._restore_configured()
        self._started = True
        await self.transport.start()
        await self.supervisor.start(self.services)
        if self.durability is not None:
            await self._replay_journal(position)

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
                if self.durability is not None:
                    await self.snapshot()
        await self.supervisor.stop()
        await self.transport.stop()
        if self.durability is not None:
            self.durability.journal.close()
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

    @property
    def _seq(self) -> int:
        return self.model.stream.seq

    @property
    def _label_timer(self) -> Any:
        return self.label_stage._timer

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
            position = self._journal(events, split, source, now)
            result, last = await self._apply(split, now, source)
        if position is not None and self.durability is not None:
            await self.durability.journal.durable(position)
        if wait and last is not None:
            await self.wait_learned(last)
            result.learned = True
        return result

    def _journal(
        self, events: list[Any], split: SplitEvents, source: str, now: float
    ) -> int | None:
        """Append the request's valid events to the journal; its record (None: not journaled)."""
        if self.durability is None:
            return None
        refused = {index for index, _, _ in split.refused}
        accepted = [obj for i, obj in enumerate(events) if i not in refused]
        if not accepted:
            return None
        position = self.durability.journal.append(encode_entry(now, source, accepted))
        self.durability.accepted(len(accepted))
        return position

    async def _apply(
        self, split: SplitEvents, now: float, source: str | None
    ) -> tuple[IngestResult, int | None]:
        """Join, learn and dead-letter a request's events (``source`` None: a replay, whose
        refusals were reported when the events first came); untimed events carry their
        arrival time already (split_events' ``untimed_at``)."""
        resolved, refused_outcomes = await self.label_stage.join(split.delayed)
        good = split.plain + [r.event for r in resolved]
        prescores = [math.nan] * len(split.plain) + [r.prescore for r in resolved]
        refused = sorted(split.refused + refused_outcomes, key=lambda r: int(r[0]))
        result = IngestResult(accepted=split.count - len(refused), rejected=len(refused))
        result.errors = [{"index": i, "reason": reason} for i, reason, _ in refused]
        if refused and source is not None:
            await self.reject([(reason, payload_text(obj)) for _, reason, obj in refused], source)
        last = await self._learn(good, prescores if split.delayed else None)
        result.seq = -1 if last is None else last
        return result, last

    async def _learn(
        self, events: Sequence[Event], prescores: Sequence[float] | None
    ) -> int | None:
        """Queue events in batches; the last batch's sequence number (None: no events)."""
        last = None
        size = self.config.training.batch_size
        for lo in range(0, len(events), size):
            chunk = events[lo : lo + size]
            scores = prescores[lo : lo + size] if prescores is not None else None
            flags = self.model.stream.rank_flags(chunk, self.config.training.rank_eval_every)
            last = await self.submit(batch_from_events(chunk, flags, -1, scores))
            await asyncio.sleep(0)  # a large request's batches are built between other work
        return last

    async def flush_labels(self, now: float | None = None) -> int | None:
        self.supervisor.check()
        return await self.label_stage.flush(now)

    async def reject(self, rejected: Sequence[tuple[str, str]], source: str) -> None:
        """Send (reason, payload) pairs to the dead-letter sink."""
        reasons, payloads = [r for r, _ in rejected], [p for _, p in rejected]
        letters = DeadLetters(source=source, reasons=reasons, payloads=payloads, ts=time.time())
        await self.supervisor.guard(self.pipeline.dead_letter_channel.send(letters))

    async def submit(self, batch: EventBatch) -> int:
        """Queue an already-built batch (file replay fast path); returns its sequence number."""
        self.supervisor.check()
        async with self._submit_lock:  # sequence numbers reach the queue in order
            stream = self.model.stream
            stream.seq += 1
            batch.seq = stream.seq
            batch.created_at = batch.created_at or self.clock()
            untimed = np.isnan(batch.ts)
            if untimed.any():  # an event without a time happened when it arrived
                batch.ts = np.where(untimed, batch.created_at, batch.ts)
            await self.supervisor.guard(self.pipeline.events.send(batch))
        return batch.seq

    async def wait_learned(self, seq: int) -> None:
        await self.trainer.learned.wait_for(seq)

    async def drain(self) -> None:
        """Wait until everything submitted so far is learned and every dead letter is written
        (impressions whose label window is still open stay open)."""
        await self.wait_learned(self.model.stream.seq)
        while not self.dead_letters.idle:
            await self.supervisor.guard(asyncio.sleep(0))

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
    ) -> list[dict[str, Any]]:
        """Top-k items for ``user`` with the weights as they are now (every learned event counts).

        ``explore`` (off | thompson | epsilon), ``scale`` and ``epsilon`` override the
        configured exploration for this request; a bad value raises ExplorationError.
        """
        self.supervisor.check()
        policy = self.exploration.override(explore, scale, epsilon)
        user, k = recommend_target(user, k)
        features = context_features(user, context, self.limits)
        active = policy if policy.active else None
        return self.ranker.recommend(
            user, k, candidates, features, explain, active, session=session or ()
        )

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
        return {"status": "ok", "seq": self._seq, "learned_seq": self.trainer.learned.value}

    def statistics(self) -> dict[str, Any]:
        failure = self.supervisor.failure
        return {
            "uptime_s": round(time.time() - self.started_at, 3),
            "seq": self._seq,
            "shards": len(self.learners),
            "sync": self.config.training.sync,
            "catalog_items": len(self.catalog),
            "users": len(self.users.history),
            # crosses events cannot feed (warned at start): a typo shows here too
            "crosses_on_columns_only": len(self.column_crosses),
            "metrics": self.metrics.summary(),
            **self.pipeline.statistics(),
            "ranker": self.ranker.statistics(),
            "queues": self.transport.statistics(),
            "simulator": self.simulator.statistics() if self.simulator else None,
            "admission": self.admission.statistics(),
            "labels": self.labels.statistics(),
            "components": self.model.component_statistics(),
            **(self.durability.statistics() if self.durability else {}),
            "failed": repr(failure) if failure else None,
        }

    # -- snapshots ---------------------------------------------------------

    def write_snapshot(self, path: str | Path | None = None) -> Path:
        """Write the model's parts atomically: never half-written.  It blocks for as long
        as it takes (100s of ms for a large model): on a running loop use
        :meth:`save_snapshot`."""
        target = Path(path or self.config.state.snapshot_path)
        return snapshots.save(target, SNAPSHOT, self.model.settings(), self.model.parts())

    async def save_snapshot(self, path: str | Path | None = None) -> Path:
        """:meth:`write_snapshot` without stalling the event loop: ingest pauses while the
        model is copied, and the copy, encoding and writing run in worker threads."""
        target = Path(path or self.config.state.snapshot_path)
        with gc_paused():  # a full collection in the worker thread would hold the GIL
            async with self._ingest_lock:
                document = await self._frozen_document()
            return await asyncio.to_thread(snapshots.write_document, target, document)

    async def _frozen_document(self) -> dict[str, Any]:
        """A copy of the model once every queued event is learned (the caller holds the
        ingest lock, so nothing changes it meanwhile; it is copied in a worker thread:
        the copy of a 2^22-slot model took the loop 40 ms)."""
        await self.wait_learned(self.model.stream.seq)
        parts = self.model.parts()

        def copy() -> dict[str, Any]:
            document: dict[str, Any] = freeze(compose(SNAPSHOT, self.model.settings(), parts))
            return document

        return await asyncio.to_thread(copy)

    def _restore_configured(self) -> int:
        """A first start has no snapshot; later starts continue from it."""
        state = self.config.state
        if state.restore and state.snapshot_path and Path(state.snapshot_path).exists():
            try:
                self.restore(state.snapshot_path)
            except StateError as error:
                raise StateError(
                    f"{error}; start with the config it was written with, move the file "
                    "away, or set state.restore = false to start empty"
                ) from None
        return 0

    def restore(self, path: str | Path) -> None:
        """Load a snapshot written by :meth:`write_snapshot` (same model settings required)."""
        snapshots.load(Path(path), SNAPSHOT, self.model.settings(), self.model.parts())
        self.trainer.learned.advance(self.model.stream.seq)
        for learner in self.learners:
            learner.recount()

    # -- durable state (state.dir): journal + snapshots ---------------------

    def _open_durable(self) -> int:
        """Open the journal and load the newest valid snapshot; the journal position it covers
        (the records after it are replayed once the services run)."""
        assert self.durability is not None
        journal = self.durability.journal
        journal.open()
        if not self.config.state.restore:
            return journal.last_seq
        position = self._load_newest_snapshot()
        journal.skip_to(position)
        segments = journal.statistics()["first_segment"]
        if position == 0 and segments is not None and segments > 1:
            log.warning(
                "no usable snapshot, and the journal starts at record %d: the events of the "
                "records before it (deleted with their snapshots) are not restored", segments,
            )  # fmt: skip
        return position

    def _load_newest_snapshot(self) -> int:
        """Newest first: a damaged, foreign or otherwise unloadable snapshot is reported in
        one line and the previous one is tried; none: an empty model (position 0)."""
        assert self.durability is not None
        touched = False
        for _, path in self.durability.store.paths():
            try:
                document = snapshots.read(path)
                position = _snapshot_position(document)
                touched = True
                restore(document, SNAPSHOT, self.model.settings(), self.model.parts())
            # a part's load_state meeting a malformed state raises whatever it meets
            # (KeyError, ValueError, ...): any of them only means "not this snapshot"
            except Exception as error:
                self.durability.rejected(path, _reason(error))
                continue
            self.durability.restored_from = str(path)
            self.trainer.learned.advance(self.model.stream.seq)
            log.info("restored %s (journal position %d)", path, position)
            return position
        if touched:  # a failed load may have changed some parts: back to an empty model
            empty = build_model(self.config, self.clock)
            document = compose(SNAPSHOT, empty.settings(), empty.parts())
            restore(document, SNAPSHOT, self.model.settings(), self.model.parts())
        return 0

    async def _replay_journal(self, position: int) -> None:
        """Learn the journal's records after ``position``, in order, as when they came."""
        assert self.durability is not None
        d = self.durability
        records = read_records(d.journal.directory, position)
        last = None
        for record in records:
            last = await self._replay_record(record) or last
        if last is not None:
            await self.wait_learned(last)
        if d.counters["replayed_records"]:
            log.info("replayed %d journal records (%d events) after position %d",
                     d.counters["replayed_records"], d.counters["replayed_events"], position)  # fmt: skip

    async def _replay_record(self, record: Record) -> int | None:
        assert self.durability is not None
        d = self.durability
        try:
            entry = decode_entry(record.payload)
        except CodecError as error:  # checksummed, so only a foreign writer gets here
            log.warning("journal record %d is not an entry (%s); skipped", record.seq, error)
            return None
        arrived = float(entry.get("t", self.clock()))
        split = split_events(entry["events"], self.limits, untimed_at=arrived)
        async with self._ingest_lock:
            result, last = await self._apply(split, arrived, None)
        d.counters["replayed_records"] += 1
        d.counters["replayed_events"] += result.accepted
        d.counters["replay_refused"] += result.rejected
        d.accepted(split.count)
        return last

    async def snapshot(self) -> Path | None:
        """Write a snapshot of the journal position learned so far (with ``state.dir``).

        Ingest pauses only while the model is copied; copying, encoding and writing run in
        worker threads.  A failed write is logged and counted: the journal still has the events."""
        d = self.durability
        if d is None:
            return None
        started = time.perf_counter()
        async with self._ingest_lock:
            document = await self._frozen_document()
            position = d.journal.last_seq
            document["journal"] = {"position": position}
            d.since_snapshot = 0
        paused = time.perf_counter() - started
        try:
            with gc_paused():  # as in save_snapshot
                return await asyncio.to_thread(d.write, document, position, paused)
        except (OSError, FreshrankError) as error:
            d.counters["snapshot_errors"] += 1
            log.error("snapshot at journal position %d failed: %s", position, _reason(error))
            return None


def _snapshot_position(document: Any) -> int:
    journal = document.get("journal") if isinstance(document, dict) else None
    position = journal.get("position") if isinstance(journal, dict) else None
    if not isinstance(position, int) or position < 0:
        raise StateError("no journal position (not a snapshot of a state directory)")
    return position


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, FreshrankError) else f"{type(error).__name__}: {text}"


def _failed(error: BaseException) -> SystemFailed:
    failure = SystemFailed(f"system: a task crashed: {error!r}")
    failure.__cause__ = error
    return failure
