"""Cluster mode: shard, trainer and ranker processes that exchange the embedded
mode's messages over Kafka (the topic table is in docs/architecture.md and the README).

* A **shard** owns the optimizer state (FTRL or SGD) of global indices
  ``i % shards == k`` (local slot ``i // shards``), applies ``grads`` partition ``k``
  and publishes the new weights on ``weights`` partition ``k``.  It checkpoints its state together with the next
  grads offset (atomically) and on start resumes from there, so a crash loses and
  doubles nothing.  It also remembers the last events offset it applied per events
  partition and skips a batch re-sent by a trainer that died before committing:
  each events record changes each shard at most once.
* A **trainer** reads ``events`` in a consumer group (Kafka splits the partitions
  among trainers and rebalances when one dies), keeps a catalog replica from
  ``items`` and a weight replica from ``weights``, and sends each shard its
  gradients.  It commits an events offset only after the gradients of that record
  are acknowledged by Kafka (and, in synchronous mode, applied by every shard).
* A **ranker** serves the HTTP API from replicas of the weights, catalog and user
  histories, and publishes the events it is sent.
* With ``[sink]``, a trainer also publishes, after each learned batch, the fresh top k
  of every user it touched (``recommendations``, keyed by user) and its labelled
  events with their pre-learning scores (``scores``).

Delivery guarantee: at-least-once delivery of events to trainers (commit after
produce), made exactly-once in effect on the model by the shards' per-partition
offset check; weight deltas carry absolute values, so replicas may apply one twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from aiokafka.errors import KafkaError

from actors.batching import batch_from_events, take_events
from actors.filters import ItemFilter
from actors.learner import FactorShard, LearnerActor
from actors.metrics import LatencyWindow
from actors.model import Model, ShardModel, build_model, build_shard
from actors.readers import Chunk
from actors.trainer import TrainerActor
from runtime import snapshots
from runtime.actor import Actor
from runtime.admission import Admission
from runtime.bootstrap import Bootstrap, SnapshotPublisher, bootstrap_weights
from runtime.config import Config
from runtime.front import (
    IngestResult,
    context_features,
    event_bounds,
    payload_text,
    recommend_target,
    split_events,
)
from runtime.kafka import BrokerLostLog, KafkaChannel, KafkaTransport, committed_offsets
from runtime.kafka_recommend import RequestServer
from runtime.lifecycle import Lifecycle, NotSupportedHere
from runtime.messages import (
    INTERACTION,
    ITEM_UPSERT,
    NEGATIVE,
    DeadLetters,
    EventBatch,
    EventScores,
    FeatureBatch,
    GradBatch,
    UserRecommendations,
    WeightDelta,
    seen_flags,
)
from runtime.replay import clean
from runtime.supervisor import Service, Supervisor, SystemFailed
from runtime.trainer_checkpoint import TrainerCheckpoint
from runtime.transport import Envelope
from runtime.warmup import warm_up

log = logging.getLogger("freshrank.cluster")
CHECKPOINT = "shard checkpoint"


# --------------------------------------------------------------------------- shard


def checkpoint_path(config: Config, shard: int) -> Path:
    return Path(config.cluster.checkpoint_dir) / f"shard-{shard}.msgpack"


class ShardLearner(LearnerActor):
    """A learner whose inbox is a Kafka partition; checkpoints its slice of the model
    together with the grads offset it has applied (its own part, ``learner``)."""

    STATE_VERSION: ClassVar[int] = 1

    def __init__(
        self, model: ShardModel, inbox: KafkaChannel, weights: Any, publisher: SnapshotPublisher
    ) -> None:
        store, shards = model.store, model.config.training.shards
        factors = (
            FactorShard(model.factors, model.shard, shards, own=True) if model.factors else None
        )
        super().__init__(
            model.shard, shards, store.z, store.n, store.w, store.params, inbox, weights, factors
        )
        self.model = model
        self.config = model.config
        self.grads = inbox
        self.snapshots = publisher
        self.next_offset = 0
        self.since_checkpoint = 0
        self.checkpoints = 0

    async def handle_envelope(self, envelope: Envelope) -> None:
        message: GradBatch = envelope.message
        await self.handle(message)
        assert envelope.position is not None
        self.next_offset = envelope.position[1] + 1
        self.since_checkpoint += 1
        if self.since_checkpoint >= self.config.cluster.checkpoint_every:
            self.write_checkpoint()
        if self.snapshots.due(self.next_offset):  # no other batch is applied meanwhile
            await self.snapshots.publish(self.next_offset)

    def to_state(self) -> dict[str, Any]:
        return {
            "next_offset": self.next_offset,
            "applied_upto": {str(p): o for p, o in self.applied_upto.items()},
            "updates": self.updates,
            "batches": self.batches,
            "duplicates": self.duplicates,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.next_offset = int(state["next_offset"])
        self.applied_upto = {int(p): int(o) for p, o in state["applied_upto"].items()}
        self.updates = int(state["updates"])
        self.batches = int(state["batches"])
        self.duplicates = int(state["duplicates"])

    def _parts(self) -> dict[str, Any]:
        return {**self.model.parts(), "learner": self}

    def write_checkpoint(self) -> None:
        path = checkpoint_path(self.config, self.shard)
        snapshots.save(path, CHECKPOINT, self.model.settings(), self._parts())
        self.since_checkpoint = 0
        self.checkpoints += 1

    def restore(self) -> bool:
        path = checkpoint_path(self.config, self.shard)
        if not path.exists():
            return False
        snapshots.load(path, CHECKPOINT, self.model.settings(), self._parts())
        self.grads.seek(self.next_offset)
        return True

    def statistics(self) -> dict[str, Any]:
        return {
            **super().statistics(),
            "next_offset": self.next_offset,
            "checkpoints": self.checkpoints,
            "snapshots": self.snapshots.statistics(),
        }


async def run_shard(config: Config, shard: int) -> int:
    """One learner shard until SIGTERM; checkpoints on the way out."""
    await warm_up(config)
    model = build_shard(config, shard)
    transport = KafkaTransport(config)
    await transport.start()
    channel = transport.channel
    publisher = SnapshotPublisher(model, channel("snapshots"), channel("weights"))
    learner = ShardLearner(model, channel(f"grads.{shard}"), channel("weights"), publisher)
    restored = learner.restore()
    state = "restored" if restored else "fresh"
    log.info("shard %d: %s at grads offset %d", shard, state, learner.next_offset)
    # what the previous run may have applied and published beyond the checkpoint
    publisher.replay_until = (await learner.grads.end_offsets())[shard]
    watch = BrokerWatch([learner.grads], config.kafka.broker_check_s)
    code = await serve(f"shard-{shard}", [learner, watch], learner.statistics)
    learner.write_checkpoint()
    if code == 0:
        try:
            await publisher.publish(learner.next_offset)
        except KafkaError as error:  # the checkpoint is written; replicas use an older one
            log.warning("shard %d: no snapshot at stop: %r", shard, error)
    await transport.stop()
    return code


# --------------------------------------------------------------------------- trainer


class ItemsFollower(Actor):
    """Keeps a catalog replica from the items topic; knows how far it has read."""

    def __init__(self, model: Model, inbox: KafkaChannel) -> None:
        super().__init__("items", inbox)
        self.featurizer = model.featurizer()
        self.channel = inbox
        self.upto: dict[int, int] = {}
        self._progress = asyncio.Event()

    async def handle_envelope(self, envelope: Envelope) -> None:
        self.featurizer.featurize(envelope.message)
        assert envelope.position is not None
        partition, offset = envelope.position
        self.upto[partition] = offset
        self._progress.set()

    async def wait_for(self, upto: Sequence[int]) -> None:
        """Until every items record an events batch depends on is in the catalog."""
        while any(self.upto.get(p, -1) < off for p, off in enumerate(upto) if off >= 0):
            self._progress.clear()
            await self._progress.wait()


class HistoryFollower:
    """User histories and the sequence statistics from the events topic, learned as the
    trainers learn them (``TrainerActor._walk_events``): event by event, in the topic's
    order, each batch after the item upserts it depends on, as the trainers featurize it
    (an item the catalog met first in an event would get another row than the trainers
    gave it).  Rankers follow the topic so; a restarted trainer catches up so."""

    def __init__(self, model: Model, items: ItemsFollower) -> None:
        self.model = model
        self.items = items
        self.featurizer = model.featurizer()
        self.events = 0

    async def apply(self, batch: EventBatch) -> None:
        await self.items.wait_for(batch.items_upto)
        features = self.featurizer.featurize(batch)
        users, sequence = self.model.users, self.model.sequence
        seen, positive = seen_flags(features), (features.label != NEGATIVE).tolist()
        for r, row in enumerate(features.item_rows.tolist()):
            user = features.users[r] if features.users else ""
            if row < 0:
                continue
            recent = users.sequence(user)
            if user:
                users.add(user, row, seen[r], positive[r], float(features.ts[r]))
            if sequence is not None and positive[r]:
                sequence.learn_event(recent if user else None, row, float(features.ts[r]))
        self.model.observe(features.users, features.item_rows)
        self.events += len(features)


class RecommendationSink:
    """After each learned batch, the fresh top ``sink.k`` of every user the batch touched,
    to ``<prefix>.recommendations``, one record per user keyed by the user id, with the
    model version the list reflects (:class:`UserRecommendations`)."""

    def __init__(
        self,
        model: Model,
        trainer: TrainerActor,
        items: ItemsFollower,
        transport: KafkaTransport,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = model.config.sink
        self.ranker = model.ranker(exploration=False)
        self.trainer = trainer
        self.items = items
        self.items_partitions = model.config.kafka.items_partitions
        self.weights = transport.channel("weights")
        self.channel = transport.channel("recommendations")
        self.clock = clock
        self.last_published: dict[str, float] = {}
        self.published = 0
        self.rate_limited = 0

    async def publish(self, batch: FeatureBatch, position: tuple[int, int]) -> None:
        await self.trainer.learned.wait_for(batch.seq)
        # every list is computed before the first send: a send yields, and the replica
        # may apply another trainer's deltas meanwhile
        weights = [self.weights.positions.get(p, -1) for p in range(self.weights.partitions)]
        items = [self.items.upto.get(p, -1) for p in range(self.items_partitions)]
        now, interval = self.clock(), self.settings.min_interval_s
        lists = []
        for user in dict.fromkeys(u for u in batch.users if u):
            if interval and now - self.last_published.get(user, -math.inf) < interval:
                self.rate_limited += 1
                continue
            self.last_published[user] = now
            top = self.ranker.recommend(user, self.settings.k)
            lists.append(
                UserRecommendations(
                    user=user,
                    items=[entry["item"] for entry in top],
                    scores=[float(entry["score"]) for entry in top],
                    seq=batch.seq,
                    trainer=self.trainer.name,
                    events_partition=position[0],
                    events_offset=position[1],
                    weights_offsets=weights,
                    items_offsets=items,
                    created_at=time.time(),
                )
            )
        for message in lists:
            await self.channel.send(message, record_key=message.user.encode())
            self.published += 1

    def statistics(self) -> dict[str, Any]:
        return {"published": self.published, "rate_limited": self.rate_limited}


class ScoreSink:
    """After each learned batch, its labelled events with the score each was evaluated
    with (before it was learned), to ``<prefix>.scores`` (:class:`EventScores`)."""

    def __init__(self, model: Model, trainer: TrainerActor, transport: KafkaTransport) -> None:
        self.catalog = model.catalog
        self.trainer = trainer
        self.channel = transport.channel("scores")
        self.published = 0

    async def publish(self, batch: FeatureBatch, position: tuple[int, int]) -> None:
        events, scores = self.trainer.scored  # read now: the next batch replaces them
        if events.size == 0:
            return
        await self.trainer.learned.wait_for(batch.seq)
        names = batch.users or [""] * len(batch)
        rows = batch.item_rows[events] if batch.item_rows.size else np.full(events.size, -1)
        message = EventScores(
            seq=batch.seq,
            trainer=self.trainer.name,
            events_partition=position[0],
            events_offset=position[1],
            users=[names[e] for e in events.tolist()],
            items=[self.catalog.ids[r] if r >= 0 else "" for r in rows.tolist()],
            labels=batch.label[events].astype(np.float64),
            scores=scores.astype(np.float64),
            ts=batch.ts[events].astype(np.float64),
            created_at=time.time(),
        )
        await self.channel.send(message, key=position[1])
        self.published += int(events.size)


class EventsWorker(Actor):
    """events record → featurize → train → gradients acknowledged → (scores and fresh
    lists to the sinks) → commit the offset."""

    def __init__(
        self,
        model: Model,
        trainer: TrainerActor,
        items: ItemsFollower,
        inbox: KafkaChannel,
        sink: RecommendationSink | None = None,
        scores: ScoreSink | None = None,
        checkpoint: TrainerCheckpoint | None = None,
    ) -> None:
        super().__init__("events", inbox)
        self.featurizer = model.featurizer()
        self.trainer = trainer
        self.items = items
        self.channel = inbox
        self.sink = sink
        self.scores = scores
        self.checkpoint = checkpoint
        self.records = 0

    async def handle_envelope(self, envelope: Envelope) -> None:
        message: EventBatch = envelope.message
        assert envelope.position is not None
        if self.checkpoint is not None:
            self.checkpoint.in_record = True
        message.source_partition, message.source_offset = envelope.position
        await self.items.wait_for(message.items_upto)
        features = self.featurizer.featurize(message)
        await self.trainer.handle(features)
        if self.scores is not None:
            await self.scores.publish(features, envelope.position)
        if self.sink is not None:
            await self.sink.publish(features, envelope.position)
        await self.channel.commit(envelope.position)  # lost to a rebalance: redelivered
        self.records += 1
        if self.checkpoint is not None:
            self.checkpoint.committed(envelope.position)


class CaughtUp:
    """A service that waits, at its place in the start order, until a topic is read."""

    name = "caught-up"

    def __init__(self, channel: KafkaChannel) -> None:
        self.channel = channel

    def attach(self, supervisor: Supervisor) -> None:
        pass

    async def start(self) -> None:
        await self.channel.caught_up()

    async def stop(self) -> None:
        pass


def check_commits_inside_log(topic: str, offsets: dict[int, tuple[int, int]]) -> None:
    """A group offset past the log's end: the broker lost records the trainers learned (a
    broker with memory storage restarted, the topic deleted and created anew).  The
    consumer would silently start over from the beginning instead."""
    beyond = [f"partition {p} committed {c}, log end {e}"
              for p, (c, e) in sorted(offsets.items()) if c > e]  # fmt: skip
    if beyond:
        raise BrokerLostLog(
            f"{topic}: the trainers' group committed offsets beyond the log's end "
            f"({'; '.join(beyond)}): the broker lost the topic's records; restore the topic, "
            "or reset the group's offsets to the earliest to learn the topic as it is now"
        )


async def rebuild_history(config: Config, model: Model, checkpoint: TrainerCheckpoint) -> int:
    """A restarted trainer's user histories and sequence statistics: its group's newest
    trainer checkpoint, then the events the group committed after it (all of them without
    one), followed as a ranker follows them.  The weights live in the shards'
    checkpoints, these only in the trainers: a trainer that started empty would learn
    every later event with other features than the rankers serve with.  Returns the
    events followed (0 for a new cluster, or a checkpoint that covers every commit)."""
    prefix, partitions = config.kafka.topic_prefix, config.kafka.events_partitions
    offsets = await committed_offsets(config, f"{prefix}-trainers", f"{prefix}.events", partitions)
    check_commits_inside_log(f"{prefix}.events", offsets)
    if checkpoint.restore():
        log.info("user histories and statistics restored from %s (events offsets %s)",
                 checkpoint.path, checkpoint.covered.next)  # fmt: skip
    covered = dict(checkpoint.covered.next)
    upto = {
        p: min(committed, end)
        for p, (committed, end) in offsets.items()
        if min(committed, end) > covered.get(p, 0)
    }
    if not upto:
        return 0
    transport = KafkaTransport(config, group_id=None)
    await transport.start()
    try:
        items = ItemsFollower(model, transport.channel("items"))
        catalog = items.channel
        ends = await catalog.end_offsets()
        while any(catalog.positions.get(p, -1) < end - 1 for p, end in ends.items()):
            await items.handle_envelope(await catalog.receive())
        history = HistoryFollower(model, items)
        events = transport.channel("events")
        # the partitions with nothing to follow start at their end
        events.seek_partitions({p: covered.get(p, 0) if p in upto else end
                                for p, (_, end) in offsets.items()})  # fmt: skip
        while any(events.positions.get(p, -1) < end - 1 for p, end in upto.items()):
            envelope = await events.receive()
            partition, offset = envelope.position or (0, 0)
            if offset < upto.get(partition, 0):  # later records are the group's to learn
                await history.apply(envelope.message)
        for partition, end in upto.items():
            checkpoint.covered.advance(partition, end)
        model.stream.events += history.events  # the negatives of later events are drawn by it
        return history.events
    finally:
        await transport.stop()


async def run_trainer(config: Config, index: int) -> int:
    """One trainer in the consumer group until SIGTERM.  Its kernels are compiled before
    it joins the group: a first batch that compiled them stalled the event loop past the
    group's session timeout, and the group took the partitions away mid-record."""
    await warm_up(config)
    name = f"trainer-{index}-{os.getpid()}"
    transport = KafkaTransport(config, group_id=f"{config.kafka.topic_prefix}-trainers")
    await transport.start()
    model, channel = build_model(config), transport.channel
    checkpoint = TrainerCheckpoint(config, model)
    followed = await rebuild_history(config, model, checkpoint)
    if followed:
        log.info("%s: user histories and statistics rebuilt from %d events", name, followed)
    bootstrap = await bootstrap_weights(config, model, channel("weights"))
    grads = [channel(f"grads.{k}") for k in range(config.training.shards)]
    trainer = TrainerActor(
        model, inbox=None, grads=grads, weights=channel("weights"), name=name, shared_replica=False
    )
    items = ItemsFollower(model, channel("items"))
    sink = (
        RecommendationSink(model, trainer, items, transport)
        if config.sink.recommendations
        else None
    )
    scores = ScoreSink(model, trainer, transport) if config.sink.scores else None
    events = EventsWorker(model, trainer, items, channel("events"), sink, scores, checkpoint)

    def stats() -> dict[str, Any]:
        return {
            "trainer": trainer.statistics(),
            "sink": sink.statistics() if sink is not None else None,
            "scores_published": scores.published if scores is not None else None,
            "events_records": events.records,
            "lost_commits": channel("events").lost_commits,
            "catalog_items": len(model.catalog),
            "components": model.component_statistics(),
            "bootstrap": bootstrap.statistics(),
            "checkpoint": checkpoint.statistics(),
        }

    watch = BrokerWatch(
        [channel("events"), channel("weights"), channel("items")], config.kafka.broker_check_s
    )
    services: list[Service] = [trainer, items, CaughtUp(channel("weights")), events, watch]
    code = await serve(name, services, stats)
    if code == 0:
        checkpoint.write()
    stats_file = Path(config.cluster.checkpoint_dir) / f"trainer-{index}.json"
    snapshots.write_atomically(stats_file, json.dumps(clean(stats()), indent=2).encode())
    await transport.stop()
    return code


# --------------------------------------------------------------------------- ranker


class Publisher:
    """Validated events into Kafka: item upserts to ``items``, interactions to ``events``."""

    def __init__(
        self, transport: KafkaTransport, config: Config, seq_start: int | None = None
    ) -> None:
        self.transport = transport
        self.config = config
        # time-based by default so batches from several publishers stay comparable
        self.seq = seq_start if seq_start is not None else time.time_ns() // 1000
        self.items_upto = [-1] * config.kafka.items_partitions
        self.published = 0
        self.records = 0

    async def publish(self, batch: EventBatch) -> None:
        batch.seq = self.seq
        self.seq += 1
        batch.created_at = batch.created_at or time.time()
        untimed = np.isnan(batch.ts)
        if untimed.any():  # an event without a time happened when it was published
            batch.ts = np.where(untimed, batch.created_at, batch.ts)
        upserts = np.flatnonzero(batch.kind == ITEM_UPSERT)
        if upserts.size:
            items = self.transport.channel("items")
            await items.send(take_events(batch, upserts), key=0)
            assert items.last_sent is not None
            partition, offset = items.last_sent
            self.items_upto[partition] = offset
        interactions = np.flatnonzero(batch.kind == INTERACTION)
        if interactions.size:
            part = batch if interactions.size == len(batch) else take_events(batch, interactions)
            part.items_upto = list(self.items_upto)
            await self.transport.channel("events").send(part, key=batch.seq)
            self.published += int(interactions.size)
            self.records += 1


class ClusterFront:
    """The :class:`~runtime.front.Front` of a ranker process: replicas of the weights,
    catalog and user histories, fed from Kafka; events it is sent are published."""

    exploration_available = False  # the replica has the weights, not the FTRL precisions

    def __init__(self, config: Config, index: int) -> None:
        self.config = config
        self.name = f"ranker-{index}"
        self.transport = KafkaTransport(config, group_id=None)
        self.model = build_model(config)
        self.catalog, self.users = self.model.catalog, self.model.users
        self.ranker = self.model.ranker(exploration=False)
        self.limits, self.times = event_bounds(config, delayed_labels=False)
        self.publisher = Publisher(self.transport, config)
        # events are pending here until published
        self.admission = Admission.from_config(config.ingest)
        self.freshness = LatencyWindow()
        self.deltas = 0
        self.supervisor = Supervisor(self.name)
        self.items: ItemsFollower | None = None  # of the items topic, from start()
        self.history: HistoryFollower | None = None  # of the events topic, from start()
        self.bootstrap = Bootstrap()  # what the weights replica started from
        # item changes are item upserts (on the items topic); users cannot be forgotten here
        self.lifecycle = Lifecycle(self.ingest, self.catalog, time.time)
        # recommend over Kafka: the rankers share the requests topic in a consumer group
        self.requests: RequestServer | None = None
        self.requests_transport: KafkaTransport | None = None
        if config.kafka.recommend_requests:
            group = f"{config.kafka.topic_prefix}-rankers"
            self.requests_transport = KafkaTransport(config, group, group_topics=("requests",))

    async def start(self) -> None:
        await self.transport.start()
        channel = self.transport.channel
        self.bootstrap = await bootstrap_weights(self.config, self.model, channel("weights"))
        self.items = ItemsFollower(self.model, channel("items"))
        self.history = HistoryFollower(self.model, self.items)
        services: list[Service] = [
            Follower("weights", channel("weights"), self._apply_delta),
            CaughtUp(channel("weights")),  # "ready" serves the weights as they are now
            self.items,
            Follower("history", channel("events"), self.history.apply),
            BrokerWatch(
                [channel(name) for name in ("weights", "items", "events")],
                self.config.kafka.broker_check_s,
            ),
        ]
        if self.requests_transport is not None:
            await self.requests_transport.start()
            self.requests = RequestServer(
                self.name, self._recommend_request, self.requests_transport.channel("requests"),
                channel("replies"), self.config.http.max_k,
            )  # fmt: skip
            services.append(self.requests)
        await self.supervisor.start(services)

    async def _recommend_request(self, user: str, k: int) -> list[dict[str, Any]]:
        return await self.recommend(user, k)

    async def stop(self) -> None:
        await self.supervisor.stop()
        if self.requests_transport is not None:
            await self.requests_transport.stop()
        await self.transport.stop()

    async def _apply_delta(self, delta: WeightDelta) -> None:
        self.model.apply_delta(delta)
        self.deltas += 1
        if delta.created_at and delta.index.size:
            self.freshness.add(time.time() - delta.created_at)

    def _check(self) -> None:
        if self.supervisor.failure is not None:
            raise SystemFailed(f"a follower crashed: {self.supervisor.failure!r}")

    async def ingest(self, events: Any, *, wait: bool = True, source: str = "api") -> IngestResult:
        self._check()
        split = split_events(
            events, self.limits, self.times, time.time()
        )  # no joiner here: impressions are refused
        result = IngestResult(accepted=len(split.plain), rejected=len(split.refused))
        result.errors = [{"index": i, "reason": reason} for i, reason, _ in split.refused]
        if split.refused:
            await self.reject([(r, payload_text(obj)) for _, r, obj in split.refused], source)
        size = self.config.training.batch_size
        for lo in range(0, len(split.plain), size):
            await self.publisher.publish(batch_from_events(split.plain[lo : lo + size]))
        if wait and self.items is not None and any(e.is_upsert for e in split.plain):
            # this ranker's catalog has them before the answer: a hidden or deleted item
            # is gone from its next answer (the other replicas follow the topic)
            await self.supervisor.guard(self.items.wait_for(self.publisher.items_upto))
        return result

    async def reject(self, rejected: Sequence[tuple[str, str]], source: str) -> None:
        reasons, payloads = [r for r, _ in rejected], [p for _, p in rejected]
        letters = DeadLetters(source=source, reasons=reasons, payloads=payloads, ts=time.time())
        await self.transport.channel("dlq").send(letters)

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
        self._check()
        if variant is not None:
            raise NotSupportedHere("experiments (and 'variant') are not built in cluster mode")
        user, k = recommend_target(user, k)
        features = context_features(user, context, self.limits)
        return self.ranker.recommend(
            user,
            k,
            candidates,
            features,
            explain,
            session=session,
            exclude=exclude,
            item_filter=item_filter,
        )

    async def similar(self, item: str, k: int = 10) -> list[dict[str, Any]]:
        """The item's nearest neighbours by co-occurrence, as the model has them now."""
        self._check()
        return self.ranker.similar(item, k)

    async def inspect(self, item: str, k: int = 10) -> dict[str, Any]:
        """What this ranker's replica knows of one item (:meth:`Ranker.inspect`)."""
        self._check()
        return self.ranker.inspect(item, k)

    def health(self) -> dict[str, Any]:
        failure = self.supervisor.failure
        if failure is not None:
            return {"status": "failed", "error": repr(failure)}
        return {"status": "ok", "seq": self.publisher.seq, "learned_seq": None}

    def statistics(self) -> dict[str, Any]:
        failure = self.supervisor.failure
        return {
            "role": self.name,
            "seq": self.publisher.seq,
            "catalog_items": len(self.catalog),
            "users": len(self.users.history),
            "weight_deltas": self.deltas,
            "bootstrap": self.bootstrap.statistics(),
            "followed_events": self.history.events if self.history is not None else 0,
            # the model version of the replicas: the last record applied per partition
            "followed_offsets": {
                name: self._offsets(name) for name in ("weights", "items", "events")
            },
            "freshness": self.freshness.summary(),
            "ranker": self.ranker.statistics(),
            "queues": self.transport.statistics(),
            "published": self.publisher.published,
            "requests": self.requests.statistics() if self.requests is not None else None,
            "components": self.model.component_statistics(),
            "lifecycle": self.lifecycle.statistics(),
            "failed": repr(failure) if failure else None,
        }

    def _offsets(self, topic: str) -> list[int]:
        channel = self.transport.channel(topic)
        return [channel.positions.get(p, -1) for p in range(channel.partitions)]


class BrokerWatch(Actor):
    """Every ``kafka.broker_check_s``, checks that the broker still holds every record this
    process read from ``channels``; a lost log fails the process with the reason
    (:class:`BrokerLostLog`).  A broker that does not answer in time is no verdict: the
    clients retry it, and the check runs again."""

    def __init__(self, channels: Sequence[KafkaChannel], every_s: float) -> None:
        super().__init__("broker-watch")
        self.channels = channels
        self.every_s = every_s
        self.checks = 0
        self.unanswered = 0

    async def start(self) -> None:
        await super().start()
        self.spawn(self._watch(), "watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)  # a period, not a synchronisation
            for channel in self.channels:
                try:
                    # not wait_for: on 3.11 it swallows a cancel that meets the check's
                    # end, and this loop then outlived its process's stop
                    async with asyncio.timeout(self.every_s):
                        lost = await channel.lost_records()
                except (TimeoutError, KafkaError):
                    self.unanswered += 1
                    continue
                if lost is not None:
                    raise BrokerLostLog(lost)
            self.checks += 1

    def statistics(self) -> dict[str, Any]:
        return {"checks": self.checks, "unanswered": self.unanswered}


class Follower(Actor):
    """Applies every message of a replicated topic with one callback."""

    def __init__(self, name: str, inbox: KafkaChannel, apply: Any) -> None:
        super().__init__(name, inbox)
        self.apply = apply

    async def handle(self, message: Any) -> None:
        await self.apply(message)


async def run_ranker(config: Config, index: int) -> int:
    """A ranker: replicas + HTTP API until SIGTERM (same auth, limits, logs and /metrics as
    the daemon; a non-loopback host without a token is refused before anything starts)."""
    from runtime.http import make_app
    from runtime.http_middleware import check_exposure, start_site
    from runtime.logs import configure_logging

    token = check_exposure(config.http, os.environ)
    configure_logging(config.http.log_format, secrets=[token])
    await warm_up(config)
    front = ClusterFront(config, index)
    await front.start()
    runner = await start_site(make_app(front), config.http)
    host, port = runner.addresses[0][:2]
    print(f"freshrank ranker ready http://{host}:{port}", flush=True)
    code = await _until_signal_or_crash(front.name, front.supervisor)
    await runner.cleanup()
    await front.stop()
    return code


# --------------------------------------------------------------------------- replay into the cluster


async def publish_log(config: Config, chunks: Iterator[Chunk]) -> dict[str, Any]:
    """Publish a replay log (seqs from 0, as the embedded replay numbers them)."""
    transport = KafkaTransport(config)
    await transport.start()
    try:
        publisher = Publisher(transport, config, seq_start=0)
        started = time.perf_counter()
        rejected = 0
        for chunk in chunks:
            if chunk.rejected:
                rejected += len(chunk.rejected)
                letters = DeadLetters(source="replay", reasons=[r for r, _ in chunk.rejected],
                                      payloads=[p for _, p in chunk.rejected], ts=time.time())  # fmt: skip
                await transport.channel("dlq").send(letters)
            if chunk.batch is not None and len(chunk.batch):
                await publisher.publish(chunk.batch)
        return {
            "published": publisher.published,
            "records": publisher.records,
            "rejected": rejected,
            "seconds": time.perf_counter() - started,
        }
    finally:
        await transport.stop()


# --------------------------------------------------------------------------- process plumbing


async def _until_signal_or_crash(name: str, supervisor: Supervisor) -> int:
    """0 after SIGTERM/SIGINT, 1 after a crash (the supervisor has logged it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    failing = asyncio.ensure_future(supervisor.failed.wait())
    await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
    for task in (stopping, failing):
        task.cancel()
    if supervisor.failure is not None:
        return 1
    log.info("%s: stopping", name)
    return 0


async def serve(name: str, services: Sequence[Service], stats: Callable[[], Any]) -> int:
    """Run ``services`` under one supervisor until SIGTERM (exit 0) or a crash (exit 1)."""
    supervisor = Supervisor(name)
    await supervisor.start(services)
    print(f"freshrank {name} ready pid={os.getpid()}", flush=True)
    code = await _until_signal_or_crash(name, supervisor)
    await supervisor.stop()
    if code == 0:
        log.info("%s: stopped %s", name, stats())
    return code
