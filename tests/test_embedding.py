"""freshrank embedded as a library in another asyncio application."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from actors.simulator import Simulator, SimulatorConfig
from runtime import Config, System, SystemFailed


def quiet_config(**sections: Any) -> Config:
    return Config.from_dict(
        {"state": {"restore": False}, "ingest": {"dead_letter_path": ""}, **sections}
    )


async def test_system_inside_a_host_application() -> None:
    """A host app with its own web handler and background tasks shares one event loop with freshrank."""
    sim = Simulator(SimulatorConfig(seed=5, n_users=50, n_items=60))
    async with System(quiet_config()) as recommender:
        await recommender.ingest(sim.items())

        async def host_handler(request: web.Request) -> web.Response:
            user = request.match_info["user"]
            items = await recommender.recommend(user, k=5)
            return web.json_response({"for": user, "items": [it["item"] for it in items]})

        host = web.Application()
        host.router.add_get("/home/{user}", host_handler)
        async with TestClient(TestServer(host)) as client:

            async def producer() -> int:
                sent = 0
                for _ in range(10):
                    batch = sim.next_batch(100)
                    await recommender.ingest(batch, wait=False)
                    sent += sum(1 for e in batch if "user" in e)
                return sent

            async def consumer() -> list[int]:
                sizes = []
                for i in range(20):
                    resp = await client.get(f"/home/u{i % 7}")
                    assert resp.status == 200
                    sizes.append(len((await resp.json())["items"]))
                return sizes

            async with asyncio.TaskGroup() as group:
                produced = group.create_task(producer())
                served = group.create_task(consumer())
            await recommender.drain()
        stats = recommender.statistics()
        assert stats["trainer"]["events"] == produced.result()
        assert served.result() == [5] * 20
        assert stats["failed"] is None


async def test_start_and_stop_are_idempotent() -> None:
    system = System(quiet_config())
    await system.start()
    await system.start()
    await system.ingest([{"user": "a", "item": "x"}])
    await system.stop()
    await system.stop()
    with pytest.raises(SystemFailed, match="not running"):
        await system.ingest([{"user": "a", "item": "x"}])


async def test_actor_crash_propagates_to_the_caller(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SystemFailed, match="learner state corrupted"):  # out of the block too
        async with System(quiet_config()) as system:
            await system.ingest([{"user": "a", "item": "x"}])

            def explode(batch: Any) -> Any:
                raise RuntimeError("learner state corrupted")

            monkeypatch.setattr(system.trainer, "train_steps", explode)
            with pytest.raises(SystemFailed, match="learner state corrupted"):
                await system.ingest([{"user": "a", "item": "y"}])
            assert "learner state corrupted" in system.statistics()["failed"]
            with pytest.raises(SystemFailed):
                await system.recommend("a")
            crash = await system.wait_failed()
            assert isinstance(crash, RuntimeError)
    logged = [r for r in caplog.records if "learner state corrupted" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with its traceback


async def test_snapshot_round_trip_in_process(tmp_path: Any) -> None:
    sim = Simulator(SimulatorConfig(seed=9, n_users=30, n_items=40))
    events = sim.items() + sim.next_batch(800)
    config = quiet_config(state={"restore": True, "snapshot_path": str(tmp_path / "s.msgpack")})
    async with System(config) as first:
        await first.ingest(events)
        before = [await first.recommend(f"u{i}", k=10, explain=True) for i in range(10)]
        first.write_snapshot()
    async with System(config) as second:
        after = [await second.recommend(f"u{i}", k=10, explain=True) for i in range(10)]
        assert second.metrics.summary() == first.metrics.summary()
    assert after == before


async def test_snapshot_with_other_model_settings_is_refused(tmp_path: Any) -> None:
    from runtime.system import SnapshotError

    path = tmp_path / "s.msgpack"
    async with System(quiet_config(state={"snapshot_path": str(path)})) as system:
        await system.ingest([{"user": "a", "item": "x"}])
        system.write_snapshot()
    other = quiet_config(state={"snapshot_path": str(path), "restore": True}, model={"bits": 18})
    with pytest.raises(SnapshotError, match="differ"):
        await System(other).start()


async def test_asynchronous_mode_learns_everything_and_drains() -> None:
    sim = Simulator(SimulatorConfig(seed=2, n_users=40, n_items=50))
    config = quiet_config(training={"sync": False, "shards": 3, "batch_size": 16})
    async with System(config) as system:
        await system.ingest(sim.items())
        sent = 0
        for _ in range(20):
            batch = sim.next_batch(50)
            sent += sum(1 for e in batch if "user" in e)
            await system.ingest(batch, wait=False)
        await system.drain()
        stats = system.statistics()
        assert stats["trainer"]["events"] == sent
        assert stats["trainer"]["learned_seq"] == stats["seq"]
        assert stats["trainer"]["in_flight"] == 0
        assert sum(s["batches"] for s in stats["learners"]) == 3 * (stats["seq"] + 1)
        freshness = stats["trainer"]["freshness"]
        assert freshness["count"] == stats["seq"] + 1
        assert 0 <= freshness["p50_ms"] <= freshness["p99_ms"]


async def test_synchronous_mode_has_zero_staleness() -> None:
    sim = Simulator(SimulatorConfig(seed=4, n_users=20, n_items=30))
    config = quiet_config(training={"sync": True, "shards": 2, "batch_size": 8})
    async with System(config) as system:
        await system.ingest(sim.items() + sim.next_batch(200), wait=False)
        await system.drain()
        staleness = system.statistics()["trainer"]["staleness"]
        assert staleness == {"mean_batches": 0.0, "max_batches": 0}
