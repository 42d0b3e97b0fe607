"""Kafka transport: the same :class:`Channel` interface as the in-memory queues.

A channel name maps to a topic, or to one partition of it:

* ``"events"``  — the whole topic; received through a consumer group (trainers
  share the partitions, Kafka rebalances them when one dies);
* ``"grads.3"`` — partition 3 of the grads topic, manually assigned (shard 3 is
  its only reader and its checkpoint says where to resume);
* ``"weights"``, ``"items"`` — every partition, from the beginning (every replica
  reads everything; a weights replica that started from a snapshot seeks each
  partition past the offset its snapshot covers: ``seek_partitions``); sending with
  ``key=k`` writes partition ``k % partitions``;
* ``"snapshots"`` — the shards' weight snapshots (compacted, one partition per shard).

Topics are created with the right partition counts when missing and checked when
present: a mismatch is a :class:`TopicLayoutError`, never a silent misroute.  An
unreachable broker is retried with exponential backoff and then reported as
:class:`BrokerUnavailable`.  A record that does not decode is counted and skipped
(handed to ``on_corrupt``), so bad bytes never crash an actor.  A partition of a
topic that is never compacted is read without gaps: a jump past an offset is read
again from the gap (:meth:`KafkaChannel._reread_gap`).  A group member that lost its
partitions to a rebalance goes on: its refused commit is logged and counted, and the
record is delivered again to the partition's new owner.

The design does not rely on idempotent producers or transactions (the test
broker lacks them): duplicates are made harmless by the receivers instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaError

from runtime.codec import CodecError, decode_message, encode_message
from runtime.config import Config
from runtime.errors import SetupError
from runtime.transport import Channel, Envelope, Transport

log = logging.getLogger("freshrank.kafka")
T = TypeVar("T")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GAP_REREADS = 20


class BrokerUnavailable(SetupError, RuntimeError):
    """Kafka could not be reached within ``kafka.connect_timeout``."""


class TopicLayoutError(SetupError, RuntimeError):
    """An existing topic does not have the partitions the deploy config needs."""


class BrokerLostLog(SetupError, RuntimeError):
    """A topic's log ends before a record this process already read from it: the broker
    lost the records (a broker with memory storage restarted, or the topic was deleted
    and created anew).  A log only grows, so this never happens by itself; what the
    process learned no longer matches the cluster, and it stops with the reason."""


@dataclass(frozen=True)
class TopicSpec:
    partitions: int
    compacted: bool = False
    configs: tuple[tuple[str, str], ...] = ()  # more topic settings, at creation


# the snapshots topic rolls a segment every 10 minutes so the cleaner can compact it:
# the active segment is never compacted, and a replica reads what is not yet
SNAPSHOT_TOPIC_CONFIGS = (("segment.ms", "600000"), ("min.cleanable.dirty.ratio", "0.1"))


def topic_layout(config: Config) -> dict[str, TopicSpec]:
    """docs/architecture.md's topics: short name → partitions (grads and weights: one per shard)."""
    shards = config.training.shards
    return {
        "events": TopicSpec(config.kafka.events_partitions),
        "grads": TopicSpec(shards),
        "weights": TopicSpec(shards),
        "snapshots": TopicSpec(shards, compacted=True, configs=SNAPSHOT_TOPIC_CONFIGS),
        "items": TopicSpec(config.kafka.items_partitions, compacted=True),
        "dlq": TopicSpec(1),
        **(
            {"recommendations": TopicSpec(config.sink.partitions, compacted=True)}
            if config.sink.recommendations
            else {}
        ),
        **({"scores": TopicSpec(config.sink.partitions)} if config.sink.scores else {}),
        **(
            {
                "requests": TopicSpec(config.kafka.requests_partitions),
                "replies": TopicSpec(config.kafka.requests_partitions),
            }
            if config.kafka.recommend_requests
            else {}
        ),
    }


def client_options(config: Config) -> dict[str, Any]:
    """Passthrough client settings (TLS/SASL); ``"env:NAME"`` values come from the environment
    so secrets stay out of config files and logs."""
    options: dict[str, Any] = {}
    for key, value in config.kafka.client.items():
        if value.startswith("env:"):
            name = value[4:]
            if name not in os.environ:
                raise ValueError(f"kafka.client.{key} names ${name}, which is not set")
            value = os.environ[name]
        options[key] = value
    ssl_files = {
        k: options.pop(k) for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if k in options
    }
    if ssl_files:
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context(
            cafile=ssl_files.get("ssl_cafile"),
            certfile=ssl_files.get("ssl_certfile"),
            keyfile=ssl_files.get("ssl_keyfile"),
        )
    return options


async def with_backoff(
    attempt: Callable[[], Awaitable[T]], what: str, config: Config, first_delay: float = 0.2
) -> T:
    """Retry ``attempt`` on connection errors with exponential backoff, one log line each."""
    deadline = time.monotonic() + config.kafka.connect_timeout
    delay = first_delay
    while True:
        try:
            return await attempt()
        except (KafkaConnectionError, OSError, KafkaError) as error:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnavailable(
                    f"{what}: Kafka at {config.kafka.bootstrap_servers} not reachable "
                    f"after {config.kafka.connect_timeout:g} s ({error})"
                ) from None
            log.warning(
                "%s: Kafka at %s not reachable (%s); retrying in %.1f s",
                what,
                config.kafka.bootstrap_servers,
                type(error).__name__,
                min(delay, left),
            )
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


async def ensure_topics(config: Config) -> dict[str, str]:
    """Create missing topics, check existing ones; returns short name → full topic name."""
    prefix = config.kafka.topic_prefix
    layout = {f"{prefix}.{name}": spec for name, spec in topic_layout(config).items()}
    admin = AIOKafkaAdminClient(
        bootstrap_servers=config.kafka.bootstrap_servers, **client_options(config)
    )
    await with_backoff(admin.start, "topic check", config)
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, spec.partitions, 1, topic_configs=topic_configs(spec) or None)
            for name, spec in layout.items()
            if name not in existing
        ]
        if missing:
            await admin.create_topics(missing)
        present = [name for name in layout if name in existing]
        for described in await admin.describe_topics(present) if present else []:
            name = described["topic"]
            actual = len(described["partitions"])
            expected = layout[name].partitions
            if actual != expected:
                raise TopicLayoutError(
                    f"topic {name} has {actual} partitions but this deploy config needs "
                    f"{expected} (grads and weights need exactly one per shard, "
                    f"training.shards = {config.training.shards}); delete the topic or fix the config"
                )
    finally:
        await admin.close()
    return {name: f"{prefix}.{name}" for name in topic_layout(config)}


def topic_configs(spec: TopicSpec) -> dict[str, str]:
    return {**({"cleanup.policy": "compact"} if spec.compacted else {}), **dict(spec.configs)}


def reading_consumer(config: Config, **options: Any) -> AIOKafkaConsumer:
    """A consumer (without auto-commit) that fetches records as large as our producer sends."""
    return AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_bytes=MAX_MESSAGE_BYTES,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        **client_options(config),
        **options,
    )


async def committed_offsets(
    config: Config, group: str, topic: str, partitions: int
) -> dict[int, tuple[int, int]]:
    """Per partition of ``topic``: (the next offset consumer group ``group`` committed, 0
    if none; the log's end offset), read without joining the group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        **client_options(config),
    )
    await with_backoff(consumer.start, "committed offsets", config)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: ((await consumer.committed(tp)) or 0, ends[tp]) for tp in tps}
    finally:
        await consumer.stop()


async def group_lag(config: Config, group: str, topic: str, partitions: int) -> int:
    """Records of ``topic`` not yet committed by consumer group ``group`` (without joining it)."""
    offsets = await committed_offsets(config, group, topic, partitions)
    return sum(end - committed for committed, end in offsets.values())


class KafkaChannel(Channel):
    """One topic (or one partition of it) as a channel; see the module docstring."""

    def __init__(
        self,
        transport: KafkaTransport,
        topic: str,
        partitions: int,
        partition: int | None,
        contiguous: bool = False,
    ) -> None:
        self.transport = transport
        # offsets of a topic that is never compacted follow each other without a gap
        self.contiguous = contiguous
        self._next: dict[int, int] = {}  # partition -> offset the next record must have
        self._gap_rereads: dict[int, int] = {}  # partition -> re-reads of its current gap
        self.gaps_reread = 0
        self.gap_records_lost = 0
        self.name = topic if partition is None else f"{topic}.{partition}"
        self.topic = topic
        self.partitions = partitions
        self.partition = partition
        self.start_offset: int | None = None
        self.start_offsets: dict[int, int] = {}  # per partition, overriding start_offset
        self.position: tuple[int, int] | None = None  # (partition, offset) last received
        self.positions: dict[int, int] = {}  # partition -> last offset received
        self.last_sent: tuple[int, int] | None = None  # (partition, offset) last acknowledged send
        self._received = asyncio.Event()
        self.sent = 0
        self.received = 0
        self.corrupt = 0
        self.lost_commits = 0
        self.bytes = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._starting = asyncio.Lock()

    def seek(self, offset: int) -> None:
        """Start receiving this partition at ``offset`` (before the first recv)."""
        self.start_offset = offset

    def seek_partitions(self, offsets: dict[int, int]) -> None:
        """Start receiving each of these partitions at its offset (before the first recv),
        as if every record before it had been received: :meth:`caught_up` and
        :meth:`lost_records` count them read."""
        self.start_offsets.update(offsets)
        for partition, offset in offsets.items():
            self._next[partition] = offset
            if offset > 0:
                self.positions[partition] = offset - 1

    async def send(
        self, message: Any, key: int | None = None, record_key: bytes | None = None
    ) -> None:
        """``key``: the partition, modulo the partitions; ``record_key``: the record's Kafka
        key (a compacted topic keeps each key's latest record), which also picks the
        partition by Kafka's own hash when ``key`` is None."""
        data = encode_message(message)
        partition = self.partition
        if partition is None and key is not None:
            partition = key % self.partitions
        meta = await self.transport.producer().send_and_wait(
            self.topic, data, key=record_key, partition=partition
        )
        self.last_sent = (meta.partition, meta.offset)
        self.sent += 1
        self.bytes += len(data)

    async def receive(self) -> Envelope:
        consumer = await self._consumer_started()
        while True:
            record = await consumer.getone()
            if await self._reread_gap(consumer, record.partition, record.offset):
                continue
            self._next[record.partition] = record.offset + 1
            if record.partition not in self.positions:
                log.info("%s: first record of partition %d at offset %d",
                         self.name, record.partition, record.offset)  # fmt: skip
            self.position = (record.partition, record.offset)
            self.positions[record.partition] = record.offset
            self._received.set()
            try:
                message = decode_message(record.value or b"")
            except CodecError as error:
                self.corrupt += 1
                await self.transport.corrupt(self, record.partition, record.offset, error)
                continue
            self.received += 1
            return Envelope(message, (record.partition, record.offset))

    async def _reread_gap(self, consumer: AIOKafkaConsumer, partition: int, offset: int) -> bool:
        """True when ``offset`` comes after a gap this channel goes back to read.

        A log that is never compacted has no gaps, yet a broker may expose a record
        before an earlier one of a concurrent producer is readable (Tansu with memory
        storage does, and a consumer's position then passes the earlier record for
        good).  The channel seeks back to the first missing offset, a few times with a
        growing pause; a gap that stays (retention deleted the records) is logged as an
        error, counted and passed."""
        expected = self._next.get(partition)
        if not self.contiguous or expected is None or offset <= expected:
            self._gap_rereads.pop(partition, None)
            return False
        rereads = self._gap_rereads.get(partition, 0)
        if rereads >= GAP_REREADS:
            self._gap_rereads.pop(partition, None)
            self.gap_records_lost += offset - expected
            log.error("%s: offsets %d to %d of partition %d are not in the log after %d "
                      "re-reads (deleted by retention?); reading on from %d",
                      self.name, expected, offset - 1, partition, rereads, offset)  # fmt: skip
            return False
        if rereads == 0:
            self.gaps_reread += 1
            log.warning("%s: partition %d jumped from offset %d to %d; reading the gap again",
                        self.name, partition, expected, offset)  # fmt: skip
        self._gap_rereads[partition] = rereads + 1
        await asyncio.sleep(0.002 * rereads)  # the broker's pause, not a synchronisation
        tp = TopicPartition(self.topic, partition)
        if tp in consumer.assignment():  # a rebalance in the pause gave it to another member
            consumer.seek(tp, expected)
        return True

    async def caught_up(self) -> None:
        """Wait until this channel has received every record present when called
        (a replica reading its topic's history before it starts serving)."""
        ends = await self.end_offsets()
        while any(self.positions.get(p, -1) < end - 1 for p, end in ends.items() if end > 0):
            self._received.clear()
            await self._received.wait()

    async def commit(self, position: tuple[int, int]) -> bool:
        """Commit the group offset past the record at ``position`` (group channels only).

        False when the group rebalanced while the record was handled: the partition
        may be another member's now, which receives the record again from the last
        commit (receivers make the redelivery harmless).  A member whose event loop
        stalled past the session timeout (a long compile, a swap storm) meets this;
        it is logged and counted, never fatal, as Kafka's at-least-once intends."""
        if self._consumer is None or self.transport.group_id is None:
            return True
        partition, offset = position
        try:
            await self._consumer.commit({TopicPartition(self.topic, partition): offset + 1})
        except (CommitFailedError, IllegalStateError) as error:
            self.lost_commits += 1
            log.warning(
                "%s: offset %d of partition %d not committed, the group rebalanced "
                "(it is delivered again from the last commit): %s",
                self.name, offset, partition, type(error).__name__,
            )  # fmt: skip
            return False
        return True

    async def lost_records(self) -> str | None:
        """Why the topic no longer holds a record this channel read, or None."""
        if not self.positions:
            return None
        ends = await self.end_offsets()
        for partition, offset in sorted(self.positions.items()):
            end = ends.get(partition, 0)
            if end <= offset:
                return (
                    f"{self.topic} partition {partition} ends at offset {end}, but offset "
                    f"{offset} was read from it: the broker lost the topic's records (a "
                    "restart with memory storage, or the topic deleted); restart this "
                    "process to follow the topics as they are now"
                )
        return None

    async def end_offsets(self) -> dict[int, int]:
        consumer = await self._consumer_started()
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}

    def qsize(self) -> int:
        return 0

    async def _consumer_started(self) -> AIOKafkaConsumer:
        if self._consumer is not None:
            return self._consumer
        async with self._starting:  # recv() and end_offsets() may race to create it
            if self._consumer is None:
                self._consumer = await self._start_consumer()
        return self._consumer

    async def _start_consumer(self) -> AIOKafkaConsumer:
        t = self.transport
        joins = self.partition is None and self.topic in t.group_topics
        group = t.group_id if joins else None
        consumer = reading_consumer(
            t.config,
            group_id=group,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=t.config.kafka.fetch_max_wait_ms,
        )
        await with_backoff(consumer.start, f"consumer of {self.name}", t.config)
        if group is not None:
            consumer.subscribe([self.topic], listener=_ForgetRevoked(self._next))
        else:
            wanted = range(self.partitions) if self.partition is None else [self.partition]
            tps = [TopicPartition(self.topic, p) for p in wanted]
            consumer.assign(tps)
            for tp in tps:
                offset = self.start_offsets.get(tp.partition, self.start_offset)
                if offset is not None:
                    consumer.seek(tp, offset)
                    self._next[tp.partition] = offset
                else:
                    await consumer.seek_to_beginning(tp)
        return consumer

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


class _ForgetRevoked(ConsumerRebalanceListener):
    """A partition the group took away may come back at any later offset: the offset
    expected next of it is forgotten."""

    def __init__(self, expected: dict[int, int]) -> None:
        self.expected = expected

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.expected.pop(tp.partition, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass


CorruptHandler = Callable[[KafkaChannel, int, int, CodecError], Awaitable[None]]


class KafkaTransport(Transport):
    """Channels over Kafka topics ``<prefix>.<name>``; one shared producer (acks=all)."""

    def __init__(
        self,
        config: Config,
        group_id: str | None = None,
        group_topics: tuple[str, ...] = ("events",),
        on_corrupt: CorruptHandler | None = None,
    ) -> None:
        self.config = config
        self.group_id = group_id
        self._group_short = group_topics
        self.group_topics: set[str] = set()
        self.topics: dict[str, str] = {}
        self._layout = topic_layout(config)
        self._channels: dict[str, KafkaChannel] = {}
        self._producer: AIOKafkaProducer | None = None
        self._on_corrupt = on_corrupt

    async def start(self) -> None:
        if self._producer is not None:
            return
        self.topics = await ensure_topics(self.config)
        self.group_topics = {self.topics[t] for t in self._group_short}
        producer = AIOKafkaProducer(
            bootstrap_servers=self.config.kafka.bootstrap_servers,
            acks="all",
            enable_idempotence=False,
            max_request_size=MAX_MESSAGE_BYTES,
            linger_ms=0,
            **client_options(self.config),
        )
        await with_backoff(producer.start, "producer", self.config)
        self._producer = producer

    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the Kafka transport is not started")
        return self._producer

    def channel(self, name: str, maxsize: int = 0) -> KafkaChannel:
        channel = self._channels.get(name)
        if channel is not None:
            return channel
        short, _, part = name.partition(".")
        if short not in self._layout:
            raise ValueError(
                f"no Kafka topic for channel {name!r} (known: {', '.join(self._layout)})"
            )
        partitions = self._layout[short].partitions
        partition = int(part) if part else None
        if partition is not None and not 0 <= partition < partitions:
            raise ValueError(f"channel {name!r}: topic {short} has {partitions} partitions")
        topic = self.topics.get(short, f"{self.config.kafka.topic_prefix}.{short}")
        contiguous = not self._layout[short].compacted
        channel = KafkaChannel(self, topic, partitions, partition, contiguous)
        self._channels[name] = channel
        return channel

    async def corrupt(
        self, channel: KafkaChannel, partition: int, offset: int, error: CodecError
    ) -> None:
        log.error(
            "%s: skipped undecodable record at partition %d offset %d: %s",
            channel.name,
            partition,
            offset,
            error,
        )
        if self._on_corrupt is not None:
            await self._on_corrupt(channel, partition, offset, error)

    async def stop(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def statistics(self) -> dict[str, Any]:
        return {
            name: {
                "sent": ch.sent,
                "received": ch.received,
                "corrupt": ch.corrupt,
                "lost_commits": ch.lost_commits,
                "gaps_reread": ch.gaps_reread,
                "gap_records_lost": ch.gap_records_lost,
                "bytes": ch.bytes,
            }
            for name, ch in self._channels.items()
        }


async def wait_until_consumed(
    config: Config, group: str, short_topic: str, partitions: int
) -> None:
    """Until consumer group ``group`` has committed every record of ``short_topic``.

    Another process's progress is only visible through Kafka, so this polls it.
    """
    topic = f"{config.kafka.topic_prefix}.{short_topic}"
    while (lag := await group_lag(config, group, topic, partitions)) > 0:
        log.debug("%s: %d records of %s not consumed yet", group, lag, topic)
        await asyncio.sleep(0.1)


async def shards_answered(config: Config) -> None:
    """Until every shard has answered every gradient batch sent to it so far.

    A shard publishes exactly one weights record per grads record it reads, so its
    weights partition catches up with its grads partition (seen from outside, through
    Kafka's end offsets; a shard that replayed after a restart publishes more).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers, **client_options(config)
    )
    await with_backoff(consumer.start, "shard progress", config)
    prefix = config.kafka.topic_prefix
    shards = range(config.training.shards)
    try:
        grads = [TopicPartition(f"{prefix}.grads", k) for k in shards]
        weights = [TopicPartition(f"{prefix}.weights", k) for k in shards]
        target = await consumer.end_offsets(grads)
        while True:
            done = await consumer.end_offsets(weights)
            if all(done[w] >= target[g] for g, w in zip(grads, weights, strict=True)):
                return
            await asyncio.sleep(0.1)  # another process's progress, seen only through Kafka
    finally:
        await consumer.stop()
