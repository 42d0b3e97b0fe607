"""Cluster mode: shard, trainer and ranker processes that exchange the embedded
mode's messages over Kafka (see DESIGN.md's topic table).

* A **shard** owns the FTRL state of global indices ``i % shards == k`` (local slot
  ``i // shards``), applies ``grads`` partition ``k`` and publishes the new weights
  on ``weights`` partition ``k``.  It checkpoints its state together with the next
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

Delivery guarantee: at-least-once delivery of events to trainers (commit after
produce), made exactly-once in effect on the model by the shards' per-partition
offset check; weight deltas carry absolute values, so replicas may apply one twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actors.batching import batch_from_events, take_events
from actors.events import EventLimits, InvalidEvent, validate_event
from actors.factors import FactorStore
from actors.features import Catalog, FeatureSpace, UserState
from actors.ftrl import FTRLParams
from actors.hasher import Featurizer
from actors.learner import FactorShard, LearnerActor, ParameterStore
from actors.metrics import LatencyWindow
from actors.ranker import Ranker
from actors.readers import Chunk
from actors.trainer import ProgressiveMetrics, TrainerActor
from runtime.actor import Actor
from runtime.codec import decode, encode
from runtime.config import Config
from runtime.kafka import KafkaChannel, KafkaTransport
from runtime.messages import DeadLetters, EventBatch, GradBatch, WeightDelta
from runtime.replay import clean
from runtime.system import (
    IngestResult,
    SystemFailed,
    _payload_text,
    factor_params,
    write_atomically,
)

log = logging.getLogger("freshrank.cluster")
CHECKPOINT_VERSION = 1


def feature_space(config: Config) -> FeatureSpace:
    return FeatureSpace(
        config.model.bits, config.model.seed, [(a, b) for a, b in config.model.crosses]
    )


def ftrl_params(config: Config) -> FTRLParams:
    c = config.ftrl
    return FTRLParams(c.alpha, c.beta, c.l1, c.l2)


def shard_slots(bits: int, shards: int, shard: int) -> int:
    """How many global indices ``i < 2^bits`` have ``i % shards == shard``."""
    return len(range(shard, 1 << bits, shards))


# --------------------------------------------------------------------------- shard


def checkpoint_path(config: Config, shard: int) -> Path:
    return Path(config.cluster.checkpoint_dir) / f"shard-{shard}.msgpack"


class ShardLearner(LearnerActor):
    """A learner whose inbox is a Kafka partition; checkpoints with the offset it has applied."""

    def __init__(
        self, config: Config, shard: int, store: ParameterStore, inbox: KafkaChannel, weights: Any
    ) -> None:
        fp = factor_params(config)
        shards = config.training.shards
        factors = None
        if fp is not None:  # this shard's own rows j % shards == shard, contiguous
            factors = FactorShard(FactorStore(fp, shard, shards), shard, shards, own=True)
        super().__init__(
            shard, shards, store.z, store.n, store.w, store.params, inbox, weights, factors
        )
        self.config = config
        self.store = store
        self.grads = inbox
        self.next_offset = 0
        self.since_checkpoint = 0
        self.checkpoints = 0

    async def handle(self, message: GradBatch) -> None:
        await super().handle(message)
        assert self.grads.position is not None
        self.next_offset = self.grads.position[1] + 1
        self.since_checkpoint += 1
        if self.since_checkpoint >= self.config.cluster.checkpoint_every:
            self.write_checkpoint()

    def write_checkpoint(self) -> None:
        touched = np.flatnonzero(self.n)
        state = {
            "version": CHECKPOINT_VERSION,
            "shard": self.shard,
            "shards": self.shards,
            "bits": self.config.model.bits,
            "next_offset": self.next_offset,
            "applied_upto": {str(p): o for p, o in self.applied_upto.items()},
            "updates": self.updates,
            "batches": self.batches,
            "duplicates": self.duplicates,
            "index": touched,
            "z": self.z[touched],
            "n": self.n[touched],
            "factors": self._factor_state(),
        }
        write_atomically(checkpoint_path(self.config, self.shard), encode(state))
        self.since_checkpoint = 0
        self.checkpoints += 1

    def _factor_state(self) -> dict[str, Any] | None:
        if self.factors is None:
            return None
        rows = self.factors.store.touched_rows()
        return {
            "k": self.factors.params.k,
            "bits": self.factors.params.bits,
            "index": rows,
            "v": self.factors.store.v[rows],
            "n": self.factors.store.n[rows],
        }

    def _restore_factors(self, path: Path, state: dict[str, Any] | None) -> None:
        mine = (self.factors.params.k, self.factors.params.bits) if self.factors else None
        found = (state["k"], state["bits"]) if state else None
        if found != mine:
            raise RuntimeError(
                f"{path}: checkpoint of factors (k, bits) {found}, this process is {mine}"
            )
        if self.factors is not None and state is not None:
            rows = np.asarray(state["index"], np.int64)
            self.factors.store.v[rows] = state["v"]
            self.factors.store.n[rows] = state["n"]
            self.factors.store.active[rows] = True

    def restore(self) -> bool:
        path = checkpoint_path(self.config, self.shard)
        if not path.exists():
            return False
        from runtime.system import SNAPSHOT_LIMITS

        state = decode(path.read_bytes(), SNAPSHOT_LIMITS)
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            raise RuntimeError(f"{path}: not a shard checkpoint of version {CHECKPOINT_VERSION}")
        expected = (self.shard, self.shards, self.config.model.bits)
        found = (state["shard"], state["shards"], state["bits"])
        if found != expected:
            raise RuntimeError(
                f"{path}: checkpoint of (shard, shards, bits) {found}, this process is {expected}"
            )
        self._restore_factors(path, state.get("factors"))
        index = np.asarray(state["index"], np.int64)
        self.z[index] = state["z"]
        self.n[index] = state["n"]
        self.store.refresh(index)
        self.next_offset = int(state["next_offset"])
        self.applied_upto = {int(p): int(o) for p, o in state["applied_upto"].items()}
        self.updates = int(state["updates"])
        self.batches = int(state["batches"])
        self.duplicates = int(state["duplicates"])
        self.grads.seek(self.next_offset)
        return True

    def statistics(self) -> dict[str, Any]:
        return {
            **super().statistics(),
            "next_offset": self.next_offset,
            "checkpoints": self.checkpoints,
        }


async def run_shard(config: Config, shard: int) -> int:
    """One learner shard until SIGTERM; checkpoints on the way out."""
    if not 0 <= shard < config.training.shards:
        raise ValueError(f"shard id {shard} is outside 0..{config.training.shards - 1}")
    transport = KafkaTransport(config)
    await transport.start()
    store = ParameterStore(
        shard_slots(config.model.bits, config.training.shards, shard), ftrl_params(config)
    )
    learner = ShardLearner(
        config, shard, store, transport.channel(f"grads.{shard}"), transport.channel("weights")
    )
    restored = learner.restore()
    log.info(
        "shard %d: %s at grads offset %d",
        shard,
        "restored" if restored else "fresh",
        learner.next_offset,
    )
    crashes = Crashes()
    learner.on_crash = crashes.crashed
    await learner.start()
    code = await crashes.serve([learner], f"shard-{shard}", learner.statistics)
    learner.write_checkpoint()
    await transport.stop()
    return code


# --------------------------------------------------------------------------- trainer


class ItemsFollower(Actor):
    """Keeps a catalog replica from the items topic; knows how far it has read."""

    def __init__(self, featurizer: Featurizer, inbox: KafkaChannel) -> None:
        super().__init__("items", inbox)
        self.featurizer = featurizer
        self.channel = inbox
        self.upto: dict[int, int] = {}
        self._progress = asyncio.Event()

    async def handle(self, message: EventBatch) -> None:
        self.featurizer.featurize(message)
        assert self.channel.position is not None
        partition, offset = self.channel.position
        self.upto[partition] = offset
        self._progress.set()

    async def wait_for(self, upto: Sequence[int]) -> None:
        """Until every items record an events batch depends on is in the catalog."""
        while any(self.upto.get(p, -1) < off for p, off in enumerate(upto) if off >= 0):
            self._progress.clear()
            await self._progress.wait()


class EventsWorker(Actor):
    """events record → featurize → train → gradients acknowledged → commit the offset."""

    def __init__(
        self,
        featurizer: Featurizer,
        trainer: TrainerActor,
        items: ItemsFollower,
        inbox: KafkaChannel,
    ) -> None:
        super().__init__("events", inbox)
        self.featurizer = featurizer
        self.trainer = trainer
        self.items = items
        self.channel = inbox
        self.records = 0

    async def handle(self, message: EventBatch) -> None:
        assert self.channel.position is not None
        message.source_partition, message.source_offset = self.channel.position
        await self.items.wait_for(message.items_upto)
        await self.trainer.handle(self.featurizer.featurize(message))
        await self.channel.commit()
        self.records += 1


async def run_trainer(config: Config, index: int) -> int:
    """One trainer in the consumer group until SIGTERM."""
    name = f"trainer-{index}-{os.getpid()}"
    transport = KafkaTransport(config, group_id=f"{config.kafka.topic_prefix}-trainers")
    await transport.start()
    space, catalog = feature_space(config), Catalog()
    users = UserState(recent_len=config.model.history)
    store = ParameterStore(space.size, ftrl_params(config))
    fp = factor_params(config)
    factors = FactorStore(fp) if fp else None
    featurizer = Featurizer(space, catalog, users)
    t = config.training
    metrics = ProgressiveMetrics(t.rank_k, t.popularity_baseline, t.auc_window or None)
    trainer = TrainerActor(
        space, store, catalog, users,
        negatives=t.negatives, sync=t.sync, max_staleness=t.max_staleness, exclude_seen=t.exclude_seen, seed=config.model.seed,
        metrics=metrics, inbox=None,
        grads=[transport.channel(f"grads.{k}") for k in range(t.shards)],
        weights=transport.channel("weights"), name=name, shared_replica=False, factors=factors,
        dense_factors=config.model.factors_dense,
    )  # fmt: skip
    items = ItemsFollower(featurizer, transport.channel("items"))
    events = EventsWorker(featurizer, trainer, items, transport.channel("events"))

    def stats() -> dict[str, Any]:
        return {
            "trainer": trainer.statistics(),
            "events_records": events.records,
            "catalog_items": len(catalog),
        }

    crashes = Crashes()
    for actor in (trainer, items, events):
        actor.on_crash = crashes.crashed
    await trainer.start()
    await items.start()
    await transport.channel("weights").caught_up()
    await events.start()
    code = await crashes.serve([events, items, trainer], name, stats)
    stats_file = Path(config.cluster.checkpoint_dir) / f"trainer-{index}.json"
    write_atomically(stats_file, json.dumps(clean(stats()), indent=2).encode())
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
        upserts = np.flatnonzero(batch.kind == 1)
        if upserts.size:
            items = self.transport.channel("items")
            await items.send(take_events(batch, upserts), key=0)
            assert items.last_sent is not None
            partition, offset = items.last_sent
            self.items_upto[partition] = offset
        interactions = np.flatnonzero(batch.kind == 0)
        if interactions.size:
            part = batch if interactions.size == len(batch) else take_events(batch, interactions)
            part.items_upto = list(self.items_upto)
            await self.transport.channel("events").send(part, key=batch.seq)
            self.published += int(interactions.size)
            self.records += 1


class ClusterFront:
    """What the HTTP API needs (ingest, recommend, statistics) in a ranker process."""

    def __init__(self, config: Config, index: int) -> None:
        self.config = config
        self.name = f"ranker-{index}"
        self.transport = KafkaTransport(config, group_id=None)
        self.space = feature_space(config)
        self.catalog = Catalog()
        self.users = UserState(recent_len=config.model.history)
        self.store = ParameterStore(self.space.size, ftrl_params(config))
        fp = factor_params(config)
        self.factors = FactorStore(fp) if fp else None
        self.featurizer = Featurizer(self.space, self.catalog, self.users)
        self.ranker = Ranker(
            self.space,
            self.store.w,
            self.catalog,
            self.users,
            config.training.exclude_seen,
            factors=self.factors,
        )
        self.limits = EventLimits(
            max_string_len=config.ingest.max_string_len,
            max_features=config.ingest.max_features_per_event,
        )
        self.publisher = Publisher(self.transport, config)
        self.freshness = LatencyWindow()
        self.deltas = 0
        self.failure: BaseException | None = None
        self.actors: list[Actor] = []

    async def start(self) -> None:
        await self.transport.start()
        self.actors = [
            _Follower("weights", self.transport.channel("weights"), self._apply_delta),
            _Follower("items", self.transport.channel("items"), self._apply_items),
            _Follower("history", self.transport.channel("events"), self._apply_events),
        ]
        for actor in self.actors:
            actor.on_crash = self._crashed
            await actor.start()

    async def stop(self) -> None:
        for actor in self.actors:
            await actor.stop()
        await self.transport.stop()

    def _crashed(self, actor: Actor, error: BaseException) -> None:
        self.failure = self.failure or error

    async def _apply_delta(self, delta: WeightDelta) -> None:
        self.store.w[delta.index] = delta.w
        if self.factors is not None and delta.factor_index.size:
            self.factors.v[delta.factor_index] = delta.factor_v
            self.factors.version += 1
        self.deltas += 1
        if delta.created_at and delta.index.size:
            self.freshness.add(time.time() - delta.created_at)

    async def _apply_items(self, batch: EventBatch) -> None:
        self.featurizer.featurize(batch)

    async def _apply_events(self, batch: EventBatch) -> None:
        features = self.featurizer.featurize(batch)
        for user, row in zip(features.users, features.item_rows, strict=False):
            if user and row >= 0:
                self.users.add(user, int(row))

    async def ingest(self, events: Any, *, wait: bool = True, source: str = "api") -> IngestResult:
        if self.failure is not None:
            raise SystemFailed(f"a follower crashed: {self.failure!r}")
        result = IngestResult()
        good, rejected = [], []
        for index, obj in enumerate(events):
            try:
                good.append(validate_event(obj, self.limits))
            except InvalidEvent as error:
                result.errors.append({"index": index, "reason": str(error)})
                rejected.append((str(error), _payload_text(obj)))
        result.accepted, result.rejected = len(good), len(rejected)
        if rejected:
            await self.reject(rejected, source)
        size = self.config.training.batch_size
        for lo in range(0, len(good), size):
            await self.publisher.publish(batch_from_events(good[lo : lo + size]))
        return result

    async def reject(self, rejected: Sequence[tuple[str, str]], source: str) -> None:
        letters = DeadLetters(
            source=source,
            reasons=[r for r, _ in rejected],
            payloads=[p for _, p in rejected],
            ts=time.time(),
        )
        await self.transport.channel("dlq").send(letters)

    async def recommend(self, user: str, k: int = 10, candidates: Sequence[str] | None = None,
                        context: dict[str, Any] | None = None, explain: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        if self.failure is not None:
            raise SystemFailed(f"a follower crashed: {self.failure!r}")
        features = []
        if context:
            features = validate_event(
                {"item": "-", "user": user, "context": context}, self.limits
            ).features
        return self.ranker.recommend(user, k, candidates, features, explain)

    def statistics(self) -> dict[str, Any]:
        return {
            "role": self.name,
            "seq": self.publisher.seq,
            "catalog_items": len(self.catalog),
            "users": len(self.users.history),
            "weight_deltas": self.deltas,
            "freshness": self.freshness.summary(),
            "ranker": self.ranker.statistics(),
            "queues": self.transport.statistics(),
            "published": self.publisher.published,
            "trainer": {"learned_seq": None},
            "failed": repr(self.failure) if self.failure else None,
        }


class _Follower(Actor):
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
    front = ClusterFront(config, index)
    await front.start()
    runner = await start_site(make_app(front), config.http)  # type: ignore[arg-type]
    host, port = runner.addresses[0][:2]
    print(f"freshrank ranker ready http://{host}:{port}", flush=True)
    code = await _wait_for_signal(front.name)
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


async def _wait_for_signal(name: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("%s: stopping", name)
    return 0


class Crashes:
    """Collects the first actor crash of a process; ``serve`` runs until it or SIGTERM."""

    def __init__(self) -> None:
        self.failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    def crashed(self, actor: Actor, error: BaseException) -> None:
        if not self.failed.done():
            self.failed.set_result(error)

    async def serve(self, actors: Sequence[Actor], name: str, stats: Callable[[], Any]) -> int:
        """Until SIGTERM (exit 0, actors stopped) or a crash (exit 1)."""
        print(f"freshrank {name} ready pid={os.getpid()}", flush=True)
        stopping: asyncio.Future[Any] = asyncio.ensure_future(_wait_for_signal(name))
        waiting: set[asyncio.Future[Any]] = {stopping, self.failed}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for actor in actors:
            await actor.stop()
        if self.failed.done():
            stopping.cancel()
            log.error("%s: crashed: %r", name, self.failed.result())
            return 1
        log.info("%s: stopped %s", name, stats())
        return 0
