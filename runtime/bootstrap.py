"""Cluster bootstrap: replicas start from the shards' weight snapshots, not the topic's start.

A weights replica (a trainer's, a ranker's) used to read the whole weights topic, so
its start-up time grew with the age of the cluster.  Each shard now also publishes
its whole slice (:class:`WeightSnapshot` pieces) to the compacted ``snapshots``
topic, every ``cluster.snapshot_every`` grad batches or ``cluster.snapshot_interval_s``
seconds and at a clean stop, stamped with the offset of its weights partition that
the state follows (``covers``).  A replica reads the newest complete snapshot of each
shard, applies it as it applies deltas, and follows that partition from ``covers + 1``.

Why the replica then equals one that read the whole topic: deltas carry absolute
values, so reading a partition through ``covers`` leaves every coordinate at the last
value the shard published for it, and a snapshot holds every coordinate that differs
from a fresh model at the moment the shard had published exactly the deltas through
``covers``.  Two conditions make "the shard's state" and "the last published values"
the same thing: the snapshot is copied right after a delta is sent, with no batch
applied in between, and a restarted shard publishes none until it has re-applied every
grads record that existed when it started (``SnapshotPublisher.replay_until``): until
then its checkpoint may be older than values its previous run already published.

A shard with no usable snapshot (none, a partial one, another config's, one that
covers more of the weights partition than the broker holds) is read from the
beginning of its partition instead, with the reason logged in one line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from actors.model import Model, ShardModel, model_settings
from runtime.codec import CodecError, decode_message
from runtime.config import Config
from runtime.kafka import KafkaChannel, reading_consumer, with_backoff
from runtime.messages import WeightDelta, WeightSnapshot

log = logging.getLogger("freshrank.bootstrap")
NO_SNAPSHOT = "no snapshot"
PIECE_OVERHEAD = 1024  # bytes of a piece besides its arrays (field names, settings)


def shard_settings(config: Config, shard: int) -> str:
    """What a shard's snapshot means, as the replica compares it (the checkpoint's settings)."""
    settings = {**model_settings(config), "shard": shard, "shards": config.training.shards}
    return json.dumps(settings, sort_keys=True)


def snapshot_columns(model: ShardModel) -> dict[str, np.ndarray]:
    """A copy of the shard's slice as delta columns: every coordinate and vector row that
    differs from a fresh model, on global indices."""
    store, shards, shard = model.store, model.config.training.shards, model.shard
    changed = (store.n != 0) | (store.w != 0)
    if store.z.size:
        changed |= store.z != 0
    local = np.flatnonzero(changed)
    columns = {
        "index": local * shards + shard,
        "w": store.w[local],
        "z": store.z[local] if store.z.size else np.zeros(0),
        "n": store.n[local] if store.z.size else np.zeros(0),  # a delta carries n with z
    }
    factors = model.factors
    rows = np.flatnonzero(factors.active) if factors is not None else np.zeros(0, np.int64)
    columns["factor_index"] = rows * shards + shard
    columns["factor_v"] = factors.v[rows] if factors is not None else np.zeros((0, 0))
    columns["factor_n"] = factors.n[rows] if factors is not None else np.zeros((0, 0))
    return columns


def split_pieces(columns: dict[str, np.ndarray], piece_bytes: int) -> list[dict[str, np.ndarray]]:
    """The columns cut into pieces of at most ``piece_bytes`` (linear coordinates and vector
    rows in separate pieces; at least one piece, empty for an untrained shard)."""
    linear = ("index", "w", "z", "n")
    vector = ("factor_index", "factor_v", "factor_n")
    empty = {name: columns[name][:0] for name in (*linear, *vector)}
    room = max(piece_bytes - PIECE_OVERHEAD, 1)
    pieces: list[dict[str, np.ndarray]] = []
    for names in (linear, vector):
        count = columns[names[0]].shape[0]
        row_bytes = sum(columns[name][:1].nbytes for name in names) or 1
        step = max(room // row_bytes, 1)
        for lo in range(0, count, step):
            part = {name: columns[name][lo : lo + step] for name in names}
            pieces.append({**empty, **part})
    return pieces or [empty]


class SnapshotPublisher:
    """A shard's side: when to publish a snapshot, and publishing it."""

    def __init__(self, model: ShardModel, snapshots: KafkaChannel, weights: KafkaChannel) -> None:
        self.model = model
        self.cluster = model.config.cluster
        self.snapshots = snapshots
        self.weights = weights
        self.settings = shard_settings(model.config, model.shard)
        self.replay_until = 0  # grads offset the previous run may have reached
        self.since = 0
        self.last_at = time.monotonic()
        self.published = 0
        self.generation = time.time_ns()

    def due(self, next_grads_offset: int) -> bool:
        """After a grad batch: whether a snapshot is due now (``since`` counts the batches)."""
        self.since += 1
        if next_grads_offset < self.replay_until:
            return False
        every, interval = self.cluster.snapshot_every, self.cluster.snapshot_interval_s
        by_count = every > 0 and self.since >= every
        by_time = interval > 0 and time.monotonic() - self.last_at >= interval
        return by_count or by_time

    async def publish(self, next_grads_offset: int) -> bool:
        """The shard's slice now, stamped with its last weights offset; False when nothing
        can be stamped (still replaying, or no weights record yet)."""
        if next_grads_offset < self.replay_until:
            return False
        covers = await self._covers()
        if covers < 0:
            return False
        pieces = split_pieces(snapshot_columns(self.model), self.cluster.snapshot_piece_bytes)
        self.generation += 1
        slot = self.published % 2
        for number, columns in enumerate(pieces):
            piece = WeightSnapshot(
                shard=self.model.shard, shards=self.model.config.training.shards,
                settings=self.settings, generation=self.generation, slot=slot, piece=number,
                pieces=len(pieces), covers=covers, created_at=time.time(), **columns,
            )  # fmt: skip
            key = f"{self.model.shard}:{slot}:{number}".encode()
            await self.snapshots.send(piece, key=self.model.shard, record_key=key)
        self.published += 1
        self.since = 0
        self.last_at = time.monotonic()
        return True

    async def _covers(self) -> int:
        """The shard's last record in its weights partition (it is the partition's only
        writer; before this run sent one, the partition's end says)."""
        sent = self.weights.last_sent
        if sent is not None and sent[0] == self.model.shard:
            return sent[1]
        ends = await self.weights.end_offsets()
        return ends.get(self.model.shard, 0) - 1

    def statistics(self) -> dict[str, Any]:
        return {"published": self.published, "replay_until": self.replay_until}


# --------------------------------------------------------------------------- replicas


@dataclass
class SlotReader:
    """The pieces of the last generation seen in one slot of one shard."""

    generation: int = -1
    pieces: dict[int, WeightSnapshot] = field(default_factory=dict)

    def add(self, piece: WeightSnapshot) -> None:
        if piece.generation != self.generation:
            self.generation, self.pieces = piece.generation, {}
        self.pieces[piece.piece] = piece

    def complete(self) -> list[WeightSnapshot] | None:
        first = next(iter(self.pieces.values()), None)
        if first is None or len(self.pieces) != first.pieces:
            return None
        return [self.pieces[p] for p in range(first.pieces)]


@dataclass
class ShardVerdict:
    """What a replica does with one shard: the snapshot's pieces, or the reason it reads
    the shard's weights partition from the beginning."""

    shard: int
    pieces: list[WeightSnapshot] | None
    reason: str = ""

    @property
    def covers(self) -> int:
        return self.pieces[0].covers if self.pieces else -1


def choose(
    shard: int, slots: Sequence[SlotReader], settings: str, weights_end: int
) -> ShardVerdict:
    """The newest complete snapshot of a shard that this config can use."""
    whole = [pieces for slot in slots if (pieces := slot.complete()) is not None]
    if not whole:
        held = [
            f"{len(s.pieces)} of {next(iter(s.pieces.values())).pieces}" for s in slots if s.pieces
        ]
        why = f"only partial snapshots ({', '.join(held)} pieces)" if held else NO_SNAPSHOT
        return ShardVerdict(shard, None, why)
    newest = max(whole, key=lambda pieces: pieces[0].covers)
    head = newest[0]
    if head.settings != settings:
        return ShardVerdict(shard, None, f"the snapshot is of another config ({head.settings})")
    if head.covers >= weights_end:
        why = (
            f"the snapshot covers offset {head.covers}, the weights partition ends at {weights_end}"
        )
        return ShardVerdict(shard, None, why)
    return ShardVerdict(shard, newest)


async def read_snapshots(config: Config) -> list[ShardVerdict]:
    """Every shard's verdict, from the snapshots topic as it is now (read to its end) and
    the weights topic's end offsets."""
    shards = config.training.shards
    prefix = config.kafka.topic_prefix
    # "earliest": a reset the consumer makes by itself once assigned must not race the
    # seek to the beginning to the log's end (then nothing would be read)
    consumer = reading_consumer(
        config, auto_offset_reset="earliest", fetch_max_wait_ms=config.kafka.fetch_max_wait_ms
    )
    await with_backoff(consumer.start, "snapshots reader", config)
    try:
        tps = [TopicPartition(f"{prefix}.snapshots", k) for k in range(shards)]
        weights = [TopicPartition(f"{prefix}.weights", k) for k in range(shards)]
        weights_end = await consumer.end_offsets(weights)
        slots = await _read_slots(consumer, tps)
    finally:
        await consumer.stop()
    return [
        choose(k, slots[k], shard_settings(config, k), weights_end[weights[k]])
        for k in range(shards)
    ]


async def _read_slots(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> list[tuple[SlotReader, SlotReader]]:
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    slots = [(SlotReader(), SlotReader()) for _ in tps]
    for tp in tps:
        await consumer.seek_to_beginning(tp)
    left = {tp for tp in tps if ends[tp] > 0}
    while left:
        batches = await consumer.getmany(*left, timeout_ms=1000)
        for tp, records in batches.items():
            for record in records:
                piece = _decoded_piece(record.value or b"", tp.partition)
                if piece is not None:
                    slots[tp.partition][piece.slot % 2].add(piece)
        for tp in list(left):  # a compacted log may skip offsets: ask where the reader is
            if await consumer.position(tp) >= ends[tp]:
                left.discard(tp)
    return slots


def _decoded_piece(data: bytes, shard: int) -> WeightSnapshot | None:
    try:
        message = decode_message(data)
    except CodecError as error:  # another version, damaged bytes: that piece is missing
        log.warning("snapshots partition %d: skipped an unreadable record: %s", shard, error)
        return None
    if not isinstance(message, WeightSnapshot) or message.shard != shard:
        return None
    return message


@dataclass
class Bootstrap:
    """What a replica started from (its ``statistics``)."""

    from_snapshot: list[int] = field(default_factory=list)
    from_beginning: list[int] = field(default_factory=list)
    coordinates: int = 0
    seconds: float = 0.0

    def statistics(self) -> dict[str, Any]:
        return {
            "from_snapshot": self.from_snapshot,
            "from_beginning": self.from_beginning,
            "coordinates": self.coordinates,
            "seconds": round(self.seconds, 3),
        }


async def bootstrap_weights(config: Config, model: Model, weights: KafkaChannel) -> Bootstrap:
    """Load each shard's newest usable snapshot into ``model`` and seek ``weights`` past
    it; the other shards' partitions are read from the beginning (one log line each)."""
    started, done = time.perf_counter(), Bootstrap()
    if not config.cluster.bootstrap:
        done.from_beginning = list(range(config.training.shards))
        return done
    offsets: dict[int, int] = {}
    for verdict in await read_snapshots(config):
        if verdict.pieces is None:
            # a new cluster has none yet: only a snapshot that could not be used warns
            level = logging.INFO if verdict.reason == NO_SNAPSHOT else logging.WARNING
            log.log(level, "weights shard %d: %s; reading its weights partition from the "
                    "beginning", verdict.shard, verdict.reason)  # fmt: skip
            done.from_beginning.append(verdict.shard)
            continue
        for piece in verdict.pieces:
            model.apply_delta(as_delta(piece))
            done.coordinates += int(piece.index.size + piece.factor_index.size)
        offsets[verdict.shard] = verdict.covers + 1
        done.from_snapshot.append(verdict.shard)
        await asyncio.sleep(0)  # a large model: let the loop run between shards
    weights.seek_partitions(offsets)
    done.seconds = time.perf_counter() - started
    log.info("weights replica: shards %s from snapshots (%d coordinates, %.2f s), shards %s "
             "from the topic's start", done.from_snapshot, done.coordinates, done.seconds,
             done.from_beginning)  # fmt: skip
    return done


def as_delta(piece: WeightSnapshot) -> WeightDelta:
    return WeightDelta(
        seq=-1, shard=piece.shard, trainer="snapshot", index=piece.index, w=piece.w,
        created_at=0.0, factor_index=piece.factor_index, factor_v=piece.factor_v,
        z=piece.z, n=piece.n, factor_n=piece.factor_n,
    )  # fmt: skip
