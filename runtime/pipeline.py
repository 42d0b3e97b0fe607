"""The embedded wiring of the model: channels and actors of one process.

    events ─► HasherActor ─features─► TrainerActor ─grads.k─► LearnerActor[k]
                                            ▲                        │
                                            └──────── weights ───────┘
    rejected input ─dead_letters─► DeadLetterSink

In one process the learners write strided views of the model's store, which is also
the trainer's and the ranker's replica: zero copies, zero staleness.
"""

from __future__ import annotations

from typing import Any

from actors.deadletters import DeadLetterSink
from actors.hasher import HasherActor
from actors.learner import FactorShard, LearnerActor
from actors.model import Model
from actors.trainer import TrainerActor
from runtime.supervisor import Service
from runtime.transport import Transport


class Pipeline:
    """The actors of the embedded ingest path, in start order (``services``)."""

    def __init__(self, model: Model, transport: Transport) -> None:
        config = model.config
        size, shards = config.queues.maxsize, config.training.shards
        self.events = transport.channel("events", size)
        features = transport.channel("features", size)
        grads = [transport.channel(f"grads.{k}", size) for k in range(shards)]
        weights = transport.channel("weights", 0)
        self.dead_letter_channel = transport.channel("dead_letters", size)
        self.hasher = HasherActor(model.featurizer(), self.events, features)
        self.trainer = TrainerActor(model, inbox=features, grads=grads, weights=weights)
        self.learners = [self._learner(model, k, grads[k], weights) for k in range(shards)]
        path = config.ingest.dead_letter_path or None
        self.dead_letters = DeadLetterSink(path, self.dead_letter_channel)

    @staticmethod
    def _learner(model: Model, shard: int, grads: Any, weights: Any) -> LearnerActor:
        shards = model.config.training.shards
        z, n, w = model.store.shard_view(shard, shards)
        factors = FactorShard(model.factors, shard, shards) if model.factors else None
        return LearnerActor(shard, shards, z, n, w, model.params, grads, weights, factors)

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
