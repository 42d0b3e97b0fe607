"""The embedded wiring of the model: channels and actors of one process.

    events ─► HasherActor ─features─► TrainerActor ─grads.k─► LearnerActor[k]
                                            ▲                        │
                                            └──────── weights ───────┘
    rejected input ─dead_letters─► DeadLetterSink

In one process the learners write strided views of the model's store, which is also
the trainer's and the ranker's replica: zero copies, zero staleness.  Batches enter by
:meth:`Pipeline.submit`, which numbers them in the order they are queued.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from actors.batching import batch_from_events, split_at_rankings
from actors.deadletters import DeadLetterSink
from actors.events import Event
from actors.featurizer import HasherActor
from actors.learner import FactorShard, LearnerActor
from actors.model import Model
from actors.trainer import TrainerActor, Watermark
from runtime.messages import DeadLetters, EventBatch
from runtime.supervisor import Service, Supervisor, SystemFailed
from runtime.transport import Transport


class Pipeline:
    """The actors of the embedded ingest path, in start order (``services``)."""

    def __init__(
        self,
        model: Model,
        transport: Transport,
        supervisor: Supervisor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.supervisor = supervisor
        self.clock = clock
        self._submit_lock = asyncio.Lock()
        config = model.config
        size, shards = config.queues.maxsize, config.training.shards
        self.events = transport.channel("events", size)
        features = transport.channel("features", size)
        grads = [transport.channel(f"grads.{k}", size) for k in range(shards)]
        weights = transport.channel("weights", 0)
        self.dead_letter_channel = transport.channel("dead_letters", size)
        self.trainer = TrainerActor(model, inbox=features, grads=grads, weights=weights)
        before = self.trainer.learned.wait_for  # a lifecycle change waits for the batches before
        self.hasher = HasherActor(model.featurizer(), self.events, features, before)
        self.learners = [self._learner(model, k, grads[k], weights) for k in range(shards)]
        path = config.ingest.dead_letter_path or None
        self.dead_letters = DeadLetterSink(path, self.dead_letter_channel)
        learned = self.trainer.learned  # a crash fails every waiter of learning
        self.learned: Watermark = learned  # what "learned" means to ingest, drain, snapshots
        supervisor.on_failure(lambda error: learned.fail(_failed(supervisor.name, error)))

    @staticmethod
    def _learner(model: Model, shard: int, grads: Any, weights: Any) -> LearnerActor:
        shards = model.config.training.shards
        z, n, w = model.store.shard_view(shard, shards)
        factors = FactorShard(model.factors, shard, shards) if model.factors else None
        return LearnerActor(
            shard, shards, z, n, w, model.params, grads, weights, factors, publish=False
        )

    async def submit(self, batch: EventBatch) -> int:
        """Queue a batch (with ``training.exact_rankings``, cut before each event it
        ranks: :func:`split_at_rankings`); returns the sequence number of its last part."""
        self.supervisor.check()
        async with self._submit_lock:  # sequence numbers reach the queue in order
            batch.created_at = batch.created_at or self.clock()
            untimed = np.isnan(batch.ts)
            if untimed.any():  # an event without a time happened when it arrived
                batch.ts = np.where(untimed, batch.created_at, batch.ts)
            exact = self.model.config.training.exact_rankings
            for part in split_at_rankings(batch) if exact else [batch]:
                self.model.stream.seq += 1
                part.seq = self.model.stream.seq
                await self.supervisor.guard(self.events.send(part))
        return self.model.stream.seq

    async def learn(self, events: Sequence[Event], prescores: Sequence[float] | None) -> int | None:
        """Queue events in batches; the last batch's sequence number (None: no events)."""
        last = None
        training = self.model.config.training
        for lo in range(0, len(events), training.batch_size):
            chunk = events[lo : lo + training.batch_size]
            scores = prescores[lo : lo + training.batch_size] if prescores is not None else None
            flags = self.model.stream.rank_flags(chunk, training.rank_eval_every, self._rank_gap())
            last = await self.submit(batch_from_events(chunk, flags, prescore=scores))
            await asyncio.sleep(0)  # a large request's batches are built between other work
        return last

    def _rank_gap(self) -> int:
        """Interactions between two evaluated ones, at least, so that the rankings score
        about ``training.rank_eval_rows`` catalog rows per learned interaction: their
        cost grows with the catalog, the learning's does not."""
        rows = self.model.config.training.rank_eval_rows
        return math.ceil(len(self.model.catalog) / rows) if rows > 0 else 0

    def recount(self) -> None:
        """The learners' counts over restored weights (statistics() reads them)."""
        for learner in self.learners:
            learner.recount()

    async def reject(self, rejected: Sequence[tuple[str, str]], source: str) -> None:
        """Send (reason, payload) pairs to the dead-letter sink."""
        reasons, payloads = [r for r, _ in rejected], [p for _, p in rejected]
        letters = DeadLetters(source=source, reasons=reasons, payloads=payloads, ts=time.time())
        await self.supervisor.guard(self.dead_letter_channel.send(letters))

    async def drain(self) -> None:
        """Wait until everything submitted so far is learned and every dead letter written."""
        await self.learned.wait_for(self.model.stream.seq)
        while not self.dead_letters.idle:
            await self.supervisor.guard(asyncio.sleep(0))

    def statistics(self) -> dict[str, Any]:
        return {
            "hasher": self.hasher.statistics(),
            "trainer": self.trainer.statistics(),
            "learners": [learner.statistics() for learner in self.learners],
            "dead_letters": self.dead_letters.statistics(),
        }

    @property
    def services(self) -> list[Service]:
        """Sinks first, so every stage's output has a reader before the stage starts."""
        return [self.dead_letters, *self.learners, self.trainer, self.hasher]


def _failed(name: str, error: BaseException) -> SystemFailed:
    failure = SystemFailed(f"{name}: a task crashed: {error!r}")
    failure.__cause__ = error
    return failure
