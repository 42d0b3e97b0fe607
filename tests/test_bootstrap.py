"""Cluster bootstrap: weights replicas start from the shards' snapshots (runtime/bootstrap.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from actors.model import Model, build_model, build_shard
from actors.readers import read_movielens
from runtime.bootstrap import (
    SnapshotPublisher,
    as_delta,
    bootstrap_weights,
    read_snapshots,
    shard_settings,
    snapshot_columns,
    split_pieces,
)
from runtime.cluster import publish_log
from runtime.codec import encode_message
from runtime.config import Config
from runtime.kafka import KafkaTransport
from runtime.messages import WeightDelta, WeightSnapshot
from tests.conftest import Broker
from tests.test_cluster import (
    LEARN_TIMEOUT,
    _until,
    all_learned,
    cluster_config,
    ml_subset,
    processes,
)

__all__ = ["ml_subset"]  # the fixture, used by name


def trained_shard(config: Config, shard: int, seed: int = 0) -> Any:
    """A shard whose FTRL sums and factor rows were set as if it had learned."""
    model = build_shard(config, shard)
    rng = np.random.default_rng(seed)
    local = rng.choice(model.store.n.size, 3000, replace=False)
    model.store.z[local] = rng.normal(size=local.size)
    model.store.n[local] = rng.uniform(0.1, 4.0, size=local.size)
    model.store.refresh()
    assert model.factors is not None
    rows = rng.choice(model.factors.v.shape[0], 200, replace=False)
    model.factors.v[rows] = rng.normal(size=(rows.size, model.factors.v.shape[1]))
    model.factors.n[rows] = rng.uniform(size=(rows.size, model.factors.v.shape[1]))
    model.factors.active[rows] = True
    return model


def pieces_of(
    config: Config, shard: Any, piece_bytes: int, covers: int = 0
) -> list[WeightSnapshot]:
    columns = split_pieces(snapshot_columns(shard), piece_bytes)
    return [
        WeightSnapshot(shard=shard.shard, shards=config.training.shards,
                       settings=shard_settings(config, shard.shard), generation=1, slot=0,
                       piece=i, pieces=len(columns), covers=covers, created_at=0.0, **c)
        for i, c in enumerate(columns)
    ]  # fmt: skip


def test_a_snapshot_in_pieces_gives_a_replica_the_shards_state() -> None:
    config = Config.from_dict({"model": {"bits": 16, "factors": 4, "factor_bits": 12},
                               "training": {"shards": 2}})  # fmt: skip
    replica = build_model(config)
    shards = [trained_shard(config, k, seed=k) for k in range(2)]
    for shard in shards:
        pieces = pieces_of(config, shard, piece_bytes=16_384)
        assert len(pieces) > 4  # 3,000 coordinates of 32 bytes and 200 vector rows
        assert all(len(encode_message(p)) <= 16_384 for p in pieces)
        for piece in pieces:
            replica.apply_delta(as_delta(piece))
    assert replica.factors is not None
    for k, shard in enumerate(shards):
        np.testing.assert_array_equal(replica.store.z[k::2], shard.store.z)
        np.testing.assert_array_equal(replica.store.n[k::2], shard.store.n)
        np.testing.assert_array_equal(replica.store.w[k::2], shard.store.w)
        np.testing.assert_array_equal(replica.factors.v[k::2], shard.factors.v)
        np.testing.assert_array_equal(replica.factors.n[k::2], shard.factors.n)
        np.testing.assert_array_equal(replica.factors.active[k::2], shard.factors.active)


def test_an_untrained_shard_is_one_empty_piece() -> None:
    config = Config.from_dict({"model": {"bits": 12, "factors": 0}})
    pieces = split_pieces(snapshot_columns(build_shard(config, 0)), 4096)
    assert len(pieces) == 1 and pieces[0]["index"].size == 0


async def test_the_newest_whole_snapshot_of_this_config_is_chosen_else_the_reason(
    broker: Broker, topic_prefix: str
) -> None:
    model = {"bits": 14, "factors": 2, "factor_bits": 10}
    config = broker.config(topic_prefix, model=model, training={"shards": 2})
    transport = KafkaTransport(config)
    await transport.start()
    try:
        verdicts = await read_snapshots(config)
        assert [v.reason for v in verdicts] == ["no snapshot", "no snapshot"]

        weights, snapshots = transport.channel("weights"), transport.channel("snapshots")
        for _ in range(3):  # shard 0's weights records, offsets 0..2
            await weights.send(
                WeightDelta(0, 0, "t", np.zeros(0, np.int64), np.zeros(0), 0.0), key=0
            )
        publisher = SnapshotPublisher(trained_shard(config, 0), snapshots, weights)
        assert await publisher.publish(next_grads_offset=0)
        idle = SnapshotPublisher(build_shard(config, 1), snapshots, weights)
        assert not await idle.publish(next_grads_offset=0)  # its weights partition is empty

        (zero, one) = await read_snapshots(config)
        assert zero.pieces is not None and zero.covers == 2 and zero.reason == ""
        assert one.reason == "no snapshot"

        # a write cut short in the other slot: the whole one is still chosen
        stray = dataclasses.replace(zero.pieces[0], generation=zero.pieces[0].generation + 1,
                                    slot=1, pieces=2, covers=2)  # fmt: skip
        await snapshots.send(stray, key=0, record_key=b"0:1:0")
        (zero, _) = await read_snapshots(config)
        assert zero.pieces is not None and zero.pieces[0].slot == 0
        # and in both slots: no whole snapshot left
        await snapshots.send(dataclasses.replace(stray, slot=0, generation=stray.generation + 1),
                             key=0, record_key=b"0:0:0")  # fmt: skip
        (zero, _) = await read_snapshots(config)
        assert (
            zero.pieces is None and zero.reason == "only partial snapshots (1 of 2, 1 of 2 pieces)"
        )

        # a snapshot that covers more than the weights partition holds
        beyond = dataclasses.replace(stray, shard=1, settings=shard_settings(config, 1), slot=0,
                                     pieces=1, covers=50)  # fmt: skip
        await snapshots.send(beyond, key=1, record_key=b"1:0:0")
        (_, one) = await read_snapshots(config)
        assert one.reason == "the snapshot covers offset 50, the weights partition ends at 0"

        other = broker.config(topic_prefix, model={**model, "seed": 7}, training={"shards": 2})
        await publisher.publish(next_grads_offset=0)
        (zero, _) = await read_snapshots(other)
        assert zero.pieces is None and zero.reason.startswith("the snapshot is of another config")
    finally:
        await transport.stop()


async def test_a_restarted_shard_publishes_no_snapshot_before_it_has_replayed(
    broker: Broker, topic_prefix: str
) -> None:
    config = broker.config(topic_prefix, model={"bits": 12, "factors": 0})
    transport = KafkaTransport(config)
    await transport.start()
    try:
        weights = transport.channel("weights")
        await weights.send(WeightDelta(0, 0, "t", np.zeros(0, np.int64), np.zeros(0), 0.0), key=0)
        publisher = SnapshotPublisher(
            build_shard(config, 0), transport.channel("snapshots"), weights
        )
        publisher.replay_until = 5
        assert not publisher.due(4) and not await publisher.publish(4)
        assert await publisher.publish(5)
    finally:
        await transport.stop()


async def follow_weights(config: Config) -> tuple[Model, dict[str, Any], int]:
    """A weights replica as a ranker starts one (``cluster.bootstrap`` decides from where),
    once it has read the weights topic to its end; and the deltas it applied."""
    transport = KafkaTransport(config, group_id=None)
    await transport.start()
    try:
        model, weights = build_model(config), transport.channel("weights")
        started = await bootstrap_weights(config, model, weights)
        ends, applied = await weights.end_offsets(), 0
        while any(weights.positions.get(p, -1) < end - 1 for p, end in ends.items()):
            envelope = await weights.receive()
            model.apply_delta(envelope.message)
            applied += 1
        return model, started.statistics(), applied
    finally:
        await transport.stop()


async def snapshot_and_topic_at_its_offsets(config: Config) -> tuple[Model, Model]:
    """The newest snapshots alone, applied to a fresh model; and a fresh model that read
    each weights partition from its start through the offset its shard's snapshot covers."""
    verdicts = await read_snapshots(config)
    alone, through = build_model(config), build_model(config)
    for verdict in verdicts:
        assert verdict.pieces is not None, verdict.reason
        for piece in verdict.pieces:
            alone.apply_delta(as_delta(piece))
    covers = {v.shard: v.covers for v in verdicts}
    transport = KafkaTransport(config, group_id=None)
    await transport.start()
    try:
        weights = transport.channel("weights")
        while any(weights.positions.get(k, -1) < offset for k, offset in covers.items()):
            envelope = await weights.receive()
            assert envelope.position is not None
            if envelope.position[1] <= covers[envelope.position[0]]:
                through.apply_delta(envelope.message)
    finally:
        await transport.stop()
    return alone, through


def assert_same_weights(one: Model, other: Model) -> None:
    for name in ("z", "n", "w"):
        np.testing.assert_allclose(
            getattr(one.store, name), getattr(other.store, name), rtol=0, atol=1e-9
        )
    assert one.factors is not None and other.factors is not None
    np.testing.assert_allclose(one.factors.v, other.factors.v, rtol=0, atol=1e-9)
    np.testing.assert_allclose(one.factors.n, other.factors.n, rtol=0, atol=1e-9)
    assert np.array_equal(one.factors.active, other.factors.active)


async def test_a_replica_from_the_snapshots_equals_one_that_read_the_whole_weights_topic(
    tmp_path: Path, broker: Broker, topic_prefix: str, ml_subset: Path
) -> None:
    """Two shards learn 12,000 ML-100K events (47 batches each) and publish a snapshot every
    10: a replica from the snapshots (covering 40 batches) and the 7 deltas after them
    equals one that read all 47 deltas of each shard, and a ranker started now starts so."""
    path = cluster_config(
        tmp_path, broker, topic_prefix, training={"shards": 2}, http={"port": 0},
        model={"bits": 18, "factors": 4}, cluster={"snapshot_every": 10, "snapshot_interval_s": 0},
    )  # fmt: skip
    config = Config.load(path)
    async with processes(path, ("shard", 0), ("shard", 1), ("trainer", 0)):
        published = await publish_log(config, read_movielens(ml_subset, 256))
        await all_learned(config)
        snapshot, started, deltas = await follow_weights(config)
        alone, through = await snapshot_and_topic_at_its_offsets(config)
        config.cluster.bootstrap = False
        whole, from_start, all_deltas = await follow_weights(config)
        async with processes(path, ("ranker", 0)) as rankers:
            url = rankers["ranker-0"].ready_line.split()[3]
            import aiohttp

            async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/stats") as resp:
                ranker = await resp.json()
    assert published["records"] == 47
    assert started["from_snapshot"] == [0, 1] and from_start["from_beginning"] == [0, 1]
    assert all_deltas == 2 * 47 and deltas == 2 * 7
    assert ranker["bootstrap"]["from_snapshot"] == [0, 1] and ranker["weight_deltas"] == 14
    assert np.count_nonzero(whole.store.n) > 10_000
    assert_same_weights(snapshot, whole)
    # the snapshot is the replica's state at the offset it covers, not only in the end
    assert_same_weights(alone, through)
    assert not np.array_equal(alone.store.z, whole.store.z)  # 7 batches of each shard later


async def test_after_a_kill_9_of_a_shard_the_snapshots_still_equal_the_whole_topic(
    tmp_path: Path, broker: Broker, topic_prefix: str, ml_subset: Path
) -> None:
    """Shard 1 dies mid-stream after a checkpoint and publishes again what it replays: a
    replica from the snapshots still equals one that read the whole weights topic."""
    path = cluster_config(
        tmp_path, broker, topic_prefix, training={"shards": 2}, model={"bits": 18},
        cluster={"snapshot_every": 3, "snapshot_interval_s": 0, "checkpoint_every": 10},
    )  # fmt: skip
    config = Config.load(path)
    async with processes(path, ("shard", 0), ("shard", 1), ("trainer", 0)) as procs:
        publishing = asyncio.ensure_future(publish_log(config, read_movielens(ml_subset, 256)))
        checkpoint = tmp_path / "state" / "shard-1.msgpack"
        await asyncio.wait_for(_until(checkpoint.exists), LEARN_TIMEOUT)
        procs["shard-1"].process.kill()
        await procs["shard-1"].process.wait()
        async with processes(path, ("shard", 1)):
            await publishing
            await all_learned(config)
            snapshot, started, _ = await follow_weights(config)
            config.cluster.bootstrap = False
            whole, _, _ = await follow_weights(config)
    assert started["from_snapshot"] == [0, 1]
    assert_same_weights(snapshot, whole)


def test_a_row_larger_than_a_piece_still_travels_one_per_piece() -> None:
    columns = {
        "index": np.arange(3), "w": np.ones(3), "z": np.ones(3), "n": np.ones(3),
        "factor_index": np.arange(2), "factor_v": np.ones((2, 600)), "factor_n": np.ones((2, 600)),
    }  # fmt: skip
    pieces = split_pieces(columns, 4096)
    assert [p["index"].size for p in pieces] == [3, 0, 0]
    assert [p["factor_index"].size for p in pieces] == [0, 1, 1]
