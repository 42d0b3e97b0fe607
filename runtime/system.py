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
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actors.batching import batch_from_events
from actors.events import Event, EventLimits
from actors.exploration import ExplorationPolicy
from actors.model import build_model
from actors.simulator import SimulatorConfig
from actors.sources import SimulatorSource
from actors.state import STATE_LIMITS, StateError
from runtime import snapshots
from runtime.admission import Admission
from runtime.config import Config
from runtime.front import IngestResult, context_features, payload_text, split_events
from runtime.labels import LabelStage
from runtime.messages import DeadLetters, EventBatch
from runtime.pipeline import Pipeline
from runtime.supervisor import Service, Supervisor, SystemFailed
from runtime.transport import MemoryTransport, Transport

__all__ = ["STATE_LIMITS", "IngestResult", "SnapshotError", "System", "SystemFailed"]
SNAPSHOT = "snapshot"
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
        self.limits = EventLimits(
            max_string_len=c.ingest.max_string_len,
            max_features=c.ingest.max_features_per_event,
            delayed_labels=True,
        )
        self.ranker = m.ranker()
        e = c.exploration
        self.exploration = ExplorationPolicy.from_settings(e.mode, e.scale, e.epsilon, e.seed)
        self.pipeline = p = Pipeline(m, self.transport)
        self.hasher, self.trainer, self.learners = p.hasher, p.trainer, p.learners
        self.dead_letters = p.dead_letters
        self.label_stage = LabelStage(m, self.ranker, self.submit, self.wait_learned, self._learn)
        self.services: list[Service] = [*p.services, self.label_stage]
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
        self._restore_configured()
        self._started = True
        await self.transport.start()
        await self.supervisor.start(self.services)

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
        await self.supervisor.stop()
        await self.transport.stop()
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
        """Validate and queue events; with ``wait`` return once they are learned.

        Bad events never raise: each is reported with its reason in the result and
        written to the dead-letter sink, and the good events of the same call are learned.
        """
        self.supervisor.check()
        split = split_events(events, self.limits)
        resolved, refused_outcomes = await self.label_stage.join(split.delayed)
        good = split.plain + [r.event for r in resolved]
        prescores = [math.nan] * len(split.plain) + [r.prescore for r in resolved]
        refused = sorted(split.refused + refused_outcomes, key=lambda r: int(r[0]))
        result = IngestResult(accepted=split.count - len(refused), rejected=len(refused))
        result.errors = [{"index": i, "reason": reason} for i, reason, _ in refused]
        if refused:
            await self.reject([(reason, payload_text(obj)) for _, reason, obj in refused], source)
        last = await self._learn(good, prescores if split.delayed else None)
        result.seq = -1 if last is None else last
        if wait and last is not None:
            await self.wait_learned(last)
            result.learned = True
        return result

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
        features = context_features(user, context, self.limits)
        active = policy if policy.active else None
        return self.ranker.recommend(
            user, k, candidates, features, explain, active, session=session or ()
        )

    async def similar(self, item: str, k: int = 10) -> list[dict[str, Any]]:
        """The item's nearest neighbours by co-occurrence, as the model has them now."""
        self.supervisor.check()
        return self.ranker.similar(item, k)

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
            "metrics": self.metrics.summary(),
            **self.pipeline.statistics(),
            "ranker": self.ranker.statistics(),
            "queues": self.transport.statistics(),
            "simulator": self.simulator.statistics() if self.simulator else None,
            "admission": self.admission.statistics(),
            "labels": self.labels.statistics(),
            "components": self.model.component_statistics(),
            "failed": repr(failure) if failure else None,
        }

    # -- snapshots ---------------------------------------------------------

    def write_snapshot(self, path: str | Path | None = None) -> Path:
        """Write the model's parts atomically: never half-written."""
        target = Path(path or self.config.state.snapshot_path)
        return snapshots.save(target, SNAPSHOT, self.model.settings(), self.model.parts())

    def _restore_configured(self) -> None:
        """A first start has no snapshot; later starts continue from it."""
        state = self.config.state
        if state.restore and state.snapshot_path and Path(state.snapshot_path).exists():
            self.restore(state.snapshot_path)

    def restore(self, path: str | Path) -> None:
        """Load a snapshot written by :meth:`write_snapshot` (same model settings required)."""
        snapshots.load(Path(path), SNAPSHOT, self.model.settings(), self.model.parts())
        self.trainer.learned.advance(self.model.stream.seq)


def _failed(error: BaseException) -> SystemFailed:
    failure = SystemFailed(f"system: a task crashed: {error!r}")
    failure.__cause__ = error
    return failure
