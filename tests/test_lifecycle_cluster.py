"""Item lifecycle in cluster mode, over a real broker: a hide or a delete sent to a ranker
travels as an item upsert on the items topic, so the ranker answers without the item at
once, and the trainer's catalog replica (its sampling, its fresh lists on the
recommendations topic) follows it; forgetting a user is refused with 501."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.conftest import Broker
from tests.test_cluster import cluster_config, processes
from tests.test_sink import ITEMS, next_lists

K = 23  # every item but the one alice clicked


async def post(http: aiohttp.ClientSession, url: str, events: list[dict[str, Any]]) -> None:
    async with http.post(f"{url}/v1/events", json=events) as resp:
        assert resp.status == 200, await resp.text()


async def recommended(http: aiohttp.ClientSession, url: str, user: str) -> list[str]:
    async with http.get(f"{url}/v1/recommend", params={"user": user, "k": str(K)}) as resp:
        assert resp.status == 200, await resp.text()
        return [it["item"] for it in (await resp.json())["items"]]


async def test_hide_and_delete_reach_the_ranker_and_the_trainer(
    tmp_path: Path, broker: Broker, topic_prefix: str
) -> None:
    path = cluster_config(
        tmp_path, broker, topic_prefix, training={"shards": 1}, http={"port": 0},
        sink={"recommendations": True, "k": K},
    )  # fmt: skip
    async with processes(path, ("shard", 0), ("trainer", 0), ("ranker", 0)) as procs:
        url = procs["ranker-0"].ready_line.split()[3]
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(f"{topic_prefix}.recommendations", 0)])
            await consumer.seek_to_beginning()
            async with aiohttp.ClientSession() as http:
                await post(http, url, ITEMS)
                await post(http, url, [{"user": "alice", "item": "war-0"}])
                (fresh,) = await next_lists(consumer, {"alice"})
                assert {"war-1", "war-2"} <= set(fresh.items)
                async with http.post(f"{url}/v1/items/war-1/hide") as resp:
                    assert resp.status == 200 and (await resp.json())["hidden"] is True
                async with http.delete(f"{url}/v1/items/war-2") as resp:
                    assert resp.status == 200
                # the ranker answered once its own catalog had them
                assert not {"war-1", "war-2"} & set(await recommended(http, url, "alice"))
                async with http.get(f"{url}/v1/items/war-2") as resp:
                    assert resp.status == 404
                # the trainer's replica follows the items topic: its next list has neither
                await post(http, url, [{"user": "alice", "item": "war-3"}])
                (fresh,) = await next_lists(consumer, {"alice"})
                assert fresh.items and not {"war-1", "war-2"} & set(fresh.items)
                async with http.post(f"{url}/v1/items/war-1/unhide") as resp:
                    assert resp.status == 200
                assert "war-1" in await recommended(http, url, "alice")
                async with http.delete(f"{url}/v1/users/alice") as resp:
                    assert resp.status == 501
                    assert "cluster mode" in (await resp.json())["error"]
                async with http.get(f"{url}/v1/stats") as resp:
                    stats = (await resp.json())["lifecycle"]
                assert stats["catalog"]["deleted"] == 1 and stats["items_deleted"] == 1
        finally:
            await consumer.stop()
