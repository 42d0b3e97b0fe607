"""The Kafka transport against a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiokafka import TopicPartition

from runtime.codec import CodecError
from runtime.kafka import BrokerUnavailable, KafkaChannel, KafkaTransport, TopicLayoutError
from runtime.messages import GradBatch, WeightDelta
from tests.conftest import Broker, free_port


def grad(seq: int, shard: int) -> GradBatch:
    return GradBatch(seq=seq, shard=shard, index=np.arange(seq + 1), grad=np.full(seq + 1, 0.5))


async def test_partition_channels_route_and_resume_from_an_offset(
    broker: Broker, topic_prefix: str
) -> None:
    config = broker.config(topic_prefix, training={"shards": 3})
    transport = KafkaTransport(config)
    await transport.start()
    try:
        for seq in range(5):
            for shard in range(3):
                await transport.channel(f"grads.{shard}").send(grad(seq, shard))
        reader = KafkaTransport(config)
        await reader.start()
        try:
            got = [await reader.channel("grads.1").recv() for _ in range(5)]
            assert [g.seq for g in got] == [0, 1, 2, 3, 4] and {g.shard for g in got} == {1}
            assert np.array_equal(got[3].index, np.arange(4))
            resumed = KafkaTransport(config)
            await resumed.start()
            channel = resumed.channel("grads.2")
            channel.seek(3)
            first = await channel.recv()
            assert (first.seq, first.shard) == (3, 2) and channel.position == (2, 3)
            await resumed.stop()
        finally:
            await reader.stop()
    finally:
        await transport.stop()


async def test_keyed_sends_and_replicas_read_every_partition(
    broker: Broker, topic_prefix: str
) -> None:
    config = broker.config(topic_prefix, training={"shards": 4})
    transport = KafkaTransport(config)
    await transport.start()
    try:
        for shard in range(4):
            delta = WeightDelta(
                seq=0,
                shard=shard,
                trainer="t",
                index=np.array([shard]),
                w=np.array([0.1]),
                created_at=1.0,
            )
            await transport.channel("weights").send(delta, key=shard)
        replica = KafkaTransport(config)
        await replica.start()
        try:
            channel = replica.channel("weights")
            seen = [await channel.recv() for _ in range(4)]
            assert sorted(d.shard for d in seen) == [0, 1, 2, 3]
            ends = await channel.end_offsets()
            assert ends == {0: 1, 1: 1, 2: 1, 3: 1}  # key k went to partition k
        finally:
            await replica.stop()
    finally:
        await transport.stop()


async def test_wrong_partition_count_is_a_clear_error(broker: Broker, topic_prefix: str) -> None:
    first = KafkaTransport(broker.config(topic_prefix, training={"shards": 4}))
    await first.start()
    await first.stop()
    second = KafkaTransport(broker.config(topic_prefix, training={"shards": 2}))
    with pytest.raises(
        TopicLayoutError, match=r"grads has 4 partitions but this deploy config needs 2"
    ):
        await second.start()


async def test_unreachable_broker_retries_then_fails_clearly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from runtime.config import Config

    config = Config.from_dict(
        {"kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "connect_timeout": 1.5}}
    )
    transport = KafkaTransport(config)
    with pytest.raises(BrokerUnavailable, match=r"not reachable after 1\.5 s"):
        await transport.start()
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert 2 <= len(retries) <= 10  # backoff, not a storm


async def test_corrupt_records_are_skipped_and_reported(broker: Broker, topic_prefix: str) -> None:
    config = broker.config(topic_prefix, training={"shards": 1})
    seen: list[tuple[int, str]] = []

    async def corrupt(
        channel: KafkaChannel, partition: int, offset: int, error: CodecError
    ) -> None:
        seen.append((offset, str(error)))

    transport = KafkaTransport(config, on_corrupt=corrupt)
    await transport.start()
    try:
        producer = transport.producer()
        await producer.send_and_wait(transport.topics["grads"], b"\xc1 not msgpack", partition=0)
        await transport.channel("grads.0").send(grad(7, 0))
        got = await transport.channel("grads.0").recv()
        assert got.seq == 7
        assert transport.channel("grads.0").corrupt == 1 and seen[0][0] == 0
    finally:
        await transport.stop()


async def test_a_commit_lost_to_a_rebalance_is_counted_and_the_record_redelivered(
    broker: Broker, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A member that lost its partitions (its event loop stalled past the session
    timeout, say) goes on: the commit is refused, logged and counted, and the member
    that owns the partition now receives the record again from the last commit."""
    config = broker.config(topic_prefix, training={"shards": 1})
    group = f"{topic_prefix}-trainers"
    first = KafkaTransport(config, group_id=group, group_topics=("grads",))
    await first.start()
    second = KafkaTransport(config, group_id=group, group_topics=("grads",))
    try:
        await first.channel("grads").send(grad(3, 0))
        envelope = await first.channel("grads").receive()
        consumer = first.channel("grads")._consumer
        assert consumer is not None
        consumer.unsubscribe()  # as the group does to a member it evicted
        assert await first.channel("grads").commit(envelope.position or (0, 0)) is False
        assert first.statistics()["grads"]["lost_commits"] == 1
        assert "not committed, the group rebalanced" in caplog.text
        await second.start()
        again = await second.channel("grads").receive()
        assert again.position == envelope.position and again.message.seq == 3
        assert await second.channel("grads").commit(again.position or (0, 0)) is True
        assert second.statistics()["grads"]["lost_commits"] == 0
    finally:
        await first.stop()
        await second.stop()


async def test_a_partition_that_jumps_past_a_record_is_read_again_from_the_gap(
    broker: Broker, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that exposed a later record of a concurrent producer before an earlier
    one moved the consumer past the earlier record for good (a shard then waited for a
    gradient it had skipped); the channel goes back and reads the records in order."""
    config = broker.config(topic_prefix, training={"shards": 1})
    transport = KafkaTransport(config)
    await transport.start()
    try:
        channel = transport.channel("grads.0")
        for seq in range(5):
            await channel.send(grad(seq, 0))
        channel.seek(0)
        assert (await channel.recv()).seq == 0
        consumer = channel._consumer
        assert consumer is not None
        consumer.seek(TopicPartition(transport.topics["grads"], 0), 3)  # as that broker did
        got = [await asyncio.wait_for(channel.receive(), 30) for _ in range(4)]
        assert [e.message.seq for e in got] == [1, 2, 3, 4]
        assert [e.position for e in got] == [(0, 1), (0, 2), (0, 3), (0, 4)]
        stats = transport.statistics()["grads.0"]
        assert stats["gaps_reread"] == 1 and stats["gap_records_lost"] == 0
        assert "jumped from offset 1 to 3" in caplog.text
    finally:
        await transport.stop()


async def test_a_partition_written_by_concurrent_producers_is_read_whole_and_in_order(
    broker: Broker, topic_prefix: str
) -> None:
    """Three producers on one partition, as every trainer sends to each shard's grads
    partition: the channel reads every record once, in offset order.  (Tansu exposed
    about one record in a thousand out of order here; a consumer without the re-read
    skipped 9 of 9,000.)"""
    config = broker.config(topic_prefix, training={"shards": 1})
    senders = [KafkaTransport(config) for _ in range(3)]
    reader = KafkaTransport(config)
    per_sender = 1500
    try:
        for transport in [*senders, reader]:
            await transport.start()
        channel = reader.channel("grads.0")
        channel.seek(0)

        async def send(transport: KafkaTransport, first: int) -> None:
            for seq in range(first, first + per_sender):
                await transport.channel("grads.0").send(grad(seq, 0))

        async def read() -> list[tuple[int, int]]:
            got = []
            while len(got) < 3 * per_sender:
                envelope = await channel.receive()
                got.append((envelope.position or (0, -1))[1])
            return got

        reading = asyncio.ensure_future(read())
        await asyncio.gather(*(send(t, k * per_sender) for k, t in enumerate(senders)))
        offsets = await asyncio.wait_for(reading, 60)
        assert offsets == list(range(3 * per_sender))
        assert reader.statistics()["grads.0"]["gap_records_lost"] == 0
    finally:
        for transport in [*senders, reader]:
            await transport.stop()
