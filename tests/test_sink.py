"""The sinks of cluster mode (``[sink]``), over a real broker: after each learned batch
a trainer publishes the fresh top k of every user the batch touched, keyed by user,
and each list equals what ``GET /v1/recommend`` answers for that user once the
ranker's replicas are at the list's model version; and the batch's labelled events
with the score the model gave each before learning it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from actors.model import build_model
from actors.trainer import Watermark
from runtime.cluster import RecommendationSink
from runtime.codec import decode_message
from runtime.config import Config
from runtime.messages import EventScores, UserRecommendations
from tests.conftest import Broker
from tests.test_cluster import cluster_config, processes

K = 5
ITEMS = [
    {"item": f"{genre}-{k}", "item_features": {"genre": [genre]}}
    for genre in ("war", "comedy", "noir")
    for k in range(8)
]
STEPS = [
    [{"user": "alice", "item": "war-0"}, {"user": "bob", "item": "comedy-1"}],
    [{"user": "alice", "item": "war-1", "label": 1}, {"user": "carol", "item": "noir-2"}],
    [{"user": "bob", "item": "comedy-2"}, {"user": "bob", "item": "comedy-3", "label": 0}],
    [{"user": "alice", "item": "war-2"}, {"user": "carol", "item": "noir-3"},
     {"user": "dave", "item": "war-3"}],
    [{"user": "carol", "item": "comedy-4"}, {"user": "alice", "item": "noir-5"}],
]  # fmt: skip


async def next_lists(consumer: AIOKafkaConsumer, users: set[str]) -> list[UserRecommendations]:
    """The records published for one batch: one per distinct user it touched."""
    lists: list[UserRecommendations] = []
    while len(lists) < len(users):
        record = await asyncio.wait_for(consumer.getone(), 60.0)
        message = decode_message(record.value or b"")
        assert isinstance(message, UserRecommendations)
        assert record.key == message.user.encode()  # keyed by user: compaction keeps the latest
        lists.append(message)
    assert {m.user for m in lists} == users
    assert (
        len({(m.events_partition, m.events_offset, tuple(m.weights_offsets)) for m in lists}) == 1
    )
    return lists


async def ranker_at(http: Any, url: str, version: UserRecommendations) -> dict[str, Any]:
    """The ranker's statistics once its replicas have applied exactly the list's version."""
    want = {"weights": version.weights_offsets, "items": version.items_offsets}
    stats: dict[str, Any] = {}
    for _ in range(1200):  # another process's progress, seen only through its statistics
        async with http.get(f"{url}/v1/stats") as resp:
            stats = await resp.json()
        offsets = stats["followed_offsets"]
        events = offsets["events"][version.events_partition]
        if {key: offsets[key] for key in want} == want and events == version.events_offset:
            return stats
        await asyncio.sleep(0.05)
    raise AssertionError(f"the ranker did not reach {version}: {stats}")


async def test_each_published_list_equals_the_rankers_answer_at_its_model_version(
    tmp_path: Path, broker: Broker, topic_prefix: str
) -> None:
    import aiohttp

    path = cluster_config(
        tmp_path, broker, topic_prefix, training={"shards": 2, "sync": True},
        http={"port": 0}, sink={"recommendations": True, "k": K, "scores": True},
    )  # fmt: skip
    config = Config.load(path)
    roles = [("shard", 0), ("shard", 1), ("trainer", 0), ("ranker", 0)]
    async with processes(path, *roles) as procs:
        url = procs["ranker-0"].ready_line.split()[3]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
        )
        scores = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        await scores.start()
        try:
            consumer.assign([TopicPartition(f"{topic_prefix}.recommendations", 0)])
            scores.assign([TopicPartition(f"{topic_prefix}.scores", 0)])
            await scores.seek_to_beginning()
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{url}/v1/events", json=ITEMS) as resp:
                    assert resp.status == 200
                compared = 0
                scored: list[tuple[str, str, float, float]] = []
                for step, clicks in enumerate(STEPS):
                    first = clicks[0]
                    if "label" in first:  # what the model says of it before learning it
                        params = {"user": first["user"], "candidates": first["item"]}
                        async with http.get(f"{url}/v1/recommend", params=params) as resp:
                            before = (await resp.json())["items"][0]["score"]
                    async with http.post(f"{url}/v1/events", json=clicks) as resp:
                        assert resp.status == 200 and (await resp.json())["accepted"] == len(clicks)
                    lists = await next_lists(consumer, {c["user"] for c in clicks})
                    labelled = [c for c in clicks if "label" in c]
                    if labelled:
                        record = await asyncio.wait_for(scores.getone(), 60.0)
                        batch = decode_message(record.value or b"")
                        assert isinstance(batch, EventScores)
                        assert batch.users == [c["user"] for c in labelled]
                        assert batch.items == [c["item"] for c in labelled]
                        assert batch.labels.tolist() == [c["label"] for c in labelled]
                        assert batch.events_offset == lists[0].events_offset
                        if "label" in first:
                            scored.append((first["user"], first["item"], before, batch.scores[0]))
                    await ranker_at(http, url, lists[0])
                    for message in lists:
                        params = {"user": message.user, "k": str(K)}
                        async with http.get(f"{url}/v1/recommend", params=params) as resp:
                            served = (await resp.json())["items"]
                        assert [it["item"] for it in served] == message.items, (step, message)
                        np.testing.assert_allclose(
                            [it["score"] for it in served], message.scores, rtol=0, atol=1e-9
                        )
                        assert len(message.items) == K
                        compared += 1
            assert len(scored) == 1
            for user, item, before, published in scored:
                assert published == pytest.approx(before, abs=1e-9), (user, item)
            assert compared == sum(len({c["user"] for c in clicks}) for clicks in STEPS) == 10
        finally:
            await consumer.stop()
            await scores.stop()
        for proc in procs.values():
            assert await proc.stop() == 0, proc.log.read_text()[-2000:]
    trainer = json.loads((Path(config.cluster.checkpoint_dir) / "trainer-0.json").read_text())
    assert trainer["sink"] == {"published": 10, "rate_limited": 0}
    assert trainer["scores_published"] == 2


class FakeChannel:
    def __init__(self) -> None:
        self.partitions = 2
        self.positions = {0: 7}
        self.sent: list[tuple[Any, bytes | None]] = []

    async def send(
        self, message: Any, key: int | None = None, record_key: bytes | None = None
    ) -> None:
        self.sent.append((message, record_key))


class FakeTransport:
    def __init__(self) -> None:
        self.channels: dict[str, FakeChannel] = {}

    def channel(self, name: str) -> FakeChannel:
        return self.channels.setdefault(name, FakeChannel())


async def test_a_users_list_is_published_at_most_every_min_interval() -> None:
    config = Config.from_dict(
        {"model": {"bits": 12, "factor_bits": 10}, "sink": {"recommendations": True,
                                                            "min_interval_s": 10.0}}
    )  # fmt: skip
    model = build_model(config)
    now = [100.0]
    trainer = SimpleNamespace(learned=Watermark(50), name="trainer-x")
    items = SimpleNamespace(upto={0: 3})
    transport = FakeTransport()
    sink = RecommendationSink(model, trainer, items, transport, clock=lambda: now[0])  # type: ignore[arg-type]
    for seq, users, at in ((1, ["a", "b", "a"], 100.0), (2, ["a", "c"], 105.0), (3, ["a"], 110.0)):
        now[0] = at
        await sink.publish(SimpleNamespace(users=users, seq=seq), (1, seq + 40))  # type: ignore[arg-type]
    sent = transport.channels["recommendations"].sent
    assert [(m.user, m.seq, key) for m, key in sent] == [
        ("a", 1, b"a"), ("b", 1, b"b"), ("c", 2, b"c"), ("a", 3, b"a")
    ]  # fmt: skip
    assert sink.statistics() == {"published": 4, "rate_limited": 1}
    first = sent[0][0]
    assert (first.weights_offsets, first.items_offsets) == ([7, -1], [3])
    assert (first.events_partition, first.events_offset, first.trainer) == (1, 41, "trainer-x")
