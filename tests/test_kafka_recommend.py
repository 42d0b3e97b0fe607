"""Recommend over Kafka (``kafka.recommend_requests``): a ranker answers a request on
the replies topic with the list ``GET /v1/recommend`` gives, and a request nobody
answers in time, or that a ranker reads too late, is reported, never dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.config import Config
from runtime.errors import BadInput
from runtime.kafka_recommend import (
    KafkaRecommender,
    RecommendRefused,
    RecommendTimeout,
    RequestServer,
)
from runtime.messages import RecommendRequest
from tests.conftest import Broker
from tests.test_cluster import all_learned, cluster_config, processes
from tests.test_sink import ITEMS, STEPS

USERS = ("alice", "bob", "carol", "dave")


async def caught_up(http: Any, url: str, config: Config) -> None:
    """Until the ranker's replicas hold every weights and events record published."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka.bootstrap_servers)
    await consumer.start()
    try:
        prefix = config.kafka.topic_prefix
        wanted = {
            "weights": [TopicPartition(f"{prefix}.weights", p) for p in range(config.training.shards)],
            "events": [TopicPartition(f"{prefix}.events", p) for p in range(config.kafka.events_partitions)],
        }  # fmt: skip
        ends = {name: await consumer.end_offsets(tps) for name, tps in wanted.items()}
    finally:
        await consumer.stop()
    want = {name: [ends[name][tp] - 1 for tp in tps] for name, tps in wanted.items()}
    for _ in range(1200):  # another process's progress, seen through its statistics
        async with http.get(f"{url}/v1/stats") as resp:
            offsets = (await resp.json())["followed_offsets"]
        if all(offsets[name] == want[name] for name in want):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the ranker did not catch up: {offsets} vs {want}")


async def test_a_ranker_answers_over_kafka_as_over_http_and_silence_is_reported(
    tmp_path: Path, broker: Broker, topic_prefix: str
) -> None:
    import aiohttp

    path = cluster_config(
        tmp_path, broker, topic_prefix, training={"shards": 2}, http={"port": 0},
        kafka={"recommend_requests": True},
    )  # fmt: skip
    config = Config.load(path)
    client = KafkaRecommender(config)
    async with processes(path, ("shard", 0), ("shard", 1), ("trainer", 0), ("ranker", 0)) as procs:
        url = procs["ranker-0"].ready_line.split()[3]
        await client.start()
        try:
            async with aiohttp.ClientSession() as http:
                for batch in [ITEMS, *STEPS]:
                    async with http.post(f"{url}/v1/events", json=batch) as resp:
                        assert resp.status == 200
                await all_learned(config)
                await caught_up(http, url, config)
                for user in USERS:
                    async with http.get(
                        f"{url}/v1/recommend", params={"user": user, "k": "5"}
                    ) as resp:
                        served = (await resp.json())["items"]
                    answered = await client.recommend(user, 5, timeout_s=60.0)
                    assert [it["item"] for it in answered] == [it["item"] for it in served]
                    np.testing.assert_allclose(
                        [it["score"] for it in answered], [it["score"] for it in served], atol=1e-12
                    )
                    assert len(served) == 5
                with pytest.raises(RecommendRefused, match="k must be in"):
                    await client.recommend("alice", 0, timeout_s=60.0)
                async with http.get(f"{url}/v1/stats") as resp:
                    requests = (await resp.json())["requests"]
                async with http.get(f"{url}/metrics") as resp:
                    scraped = await resp.text()
                assert f"freshrank_kafka_recommend_answered_total {float(len(USERS))}" in scraped
                assert "freshrank_kafka_recommend_refused_total 1.0" in scraped
            assert requests["answered"] == len(USERS) and requests["refused"] == 1
            assert await procs["ranker-0"].stop() == 0
            with pytest.raises(RecommendTimeout, match="within 1 s"):
                await client.recommend("alice", 5, timeout_s=1.0)
            assert client.statistics()["timed_out"] == 1
        finally:
            await client.stop()
        for name, proc in procs.items():
            if name != "ranker-0":
                assert await proc.stop() == 0, proc.log.read_text()[-2000:]


class Replies:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(
        self, message: Any, key: int | None = None, record_key: bytes | None = None
    ) -> None:
        self.sent.append(message)


async def test_a_request_read_after_its_deadline_or_refused_is_answered_with_the_reason() -> None:
    async def recommend(user: str, k: int) -> list[dict[str, Any]]:
        if user == "bad":
            raise BadInput("user ids are at most 256 characters")
        return [{"item": f"i{j}", "score": 1.0 / (j + 1)} for j in range(k)]

    server = RequestServer("ranker-0", recommend, None, Replies(), max_k=10, clock=lambda: 100.0)  # type: ignore[arg-type]
    late = await server.answer(RecommendRequest("c1", "u", 3, deadline=99.0))
    assert late.error == "the request's deadline passed before a ranker read it" and not late.items
    refused = await server.answer(RecommendRequest("c2", "bad", 3, deadline=101.0))
    assert refused.error == "user ids are at most 256 characters"
    too_many = await server.answer(RecommendRequest("c3", "u", 11, deadline=101.0))
    assert "k must be in 1..10" in too_many.error
    fine = await server.answer(RecommendRequest("c4", "u", 2, deadline=101.0))
    assert (fine.correlation_id, fine.items, fine.scores, fine.error) == (
        "c4",
        ["i0", "i1"],
        [1.0, 0.5],
        "",
    )
    assert {k: server.statistics()[k] for k in ("answered", "expired", "refused")} == {
        "answered": 1, "expired": 1, "refused": 2
    }  # fmt: skip
