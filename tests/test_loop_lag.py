"""No request or probe stalls the event loop (issue 12): while each of the cases the issue
measured runs against a real in-process server, a ticker task records the loop's longest
gap between wake-ups. The issue's bound is 10 ms; the test allows LAG_BOUND_S (10x) so
a shared machine with twice as many busy processes as cores does not fail it, and the
model has 2^24 slots so that what grows with the model shows clearly above it: before
the fixes a scan of the weights took 300-440 ms there, a 100,000-event request
520-580 ms, a snapshot 135-210 ms (bench/README.md, "Event-loop lag").

``python -m tests.test_loop_lag`` prints the figures (bench/README.md, "Event-loop lag").
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.batching import batch_from_events
from actors.events import validate_event
from actors.trainer import EVENTS_PER_PAUSE, RANKINGS_PER_PAUSE
from runtime.config import Config
from runtime.http import make_app
from runtime.system import System
from runtime.warmup import warm_up

LAG_BOUND_S = 0.1
ATTEMPTS = 3
BITS = 24
TICK_S = 0.001


class LagMeter:
    """The longest time the loop took to run a task due every TICK_S, past TICK_S."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time()
            self.worst = max(self.worst, now - last - TICK_S)
            last = now

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LagMeter]:
        task = asyncio.create_task(self._tick())
        await asyncio.sleep(TICK_S * 2)  # the ticker is running before the work starts
        try:
            yield self
            await asyncio.sleep(TICK_S * 2)  # the ticker wakes after the last stall, too
        finally:
            task.cancel()


Case = Callable[[System, TestClient], Awaitable[None]]


async def healthz(system: System, client: TestClient) -> None:
    for _ in range(20):
        assert (await client.get("/v1/healthz")).status == 200


async def stats_and_metrics(system: System, client: TestClient) -> None:
    for path in ("/v1/stats", "/metrics", "/v1/stats"):
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()


async def huge_k(system: System, client: TestClient) -> None:
    resp = await client.get("/v1/recommend", params={"user": "u1", "k": str(10**9)})
    assert resp.status == 400
    assert "'k' must be in 1..1000" in (await resp.json())["error"]
    assert 0 < len(await system.recommend("u1", k=10**9)) <= len(system.catalog)


async def ingest_100k(system: System, client: TestClient) -> None:
    resp = await client.post(
        "/v1/events", data=BIG_BODY, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["accepted"] == 100_000


async def snapshot(system: System, client: TestClient) -> None:
    path = await system.save_snapshot()
    assert path.stat().st_size > 0


BIG_BODY = json.dumps(
    [{"user": f"u{i % 5000}", "item": f"i{i % 2000}", "label": i % 2} for i in range(100_000)]
).encode()
CASES: dict[str, Case] = {
    "healthz": healthz,
    "stats_and_metrics": stats_and_metrics,
    "huge_k": huge_k,
    "ingest_100k": ingest_100k,
    "write_snapshot": snapshot,
}


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[System, TestClient]]:
    """A System behind a real server, its kernels warmed up first as ``freshrank run``
    does before it says ready (without, a kernel's first call, loaded from numba's disk
    cache or compiled, stalled the loop 10-250 ms inside whichever case met it first)."""
    config = Config.from_dict(
        {
            "model": {"bits": BITS},
            "state": {"restore": False, "snapshot_path": str(tmp_path / "snap.msgpack")},
            "ingest": {"dead_letter_path": str(tmp_path / "dlq.jsonl")},
        }
    )
    await warm_up(config)
    async with System(config) as system:
        warm = [
            {"user": f"u{i % 300}", "item": f"i{i % 500}", "item_features": {"genre": f"g{i % 7}"}}
            for i in range(5_000)
        ]
        assert (await system.ingest(warm)).rejected == 0
        async with TestClient(TestServer(make_app(system), host="127.0.0.1", port=0)) as client:
            await CASES["healthz"](system, client)  # first requests: JIT and route caches
            await client.get("/v1/recommend", params={"user": "u1"})
            yield system, client


async def measure(case: Case, system: System, client: TestClient) -> float:
    async with LagMeter().running() as meter:
        await case(system, client)
    return meter.worst


@pytest.mark.parametrize("name", list(CASES))
async def test_the_loop_never_stalls(tmp_path: Path, name: str) -> None:
    """A stall of the code shows in every run; one of the shared machine (another
    process holding the core) does not, so the best of up to ATTEMPTS runs counts."""
    lags = []
    async with served(tmp_path) as (system, client):
        for _ in range(ATTEMPTS):
            lags.append(await measure(CASES[name], system, client))
            if lags[-1] <= LAG_BOUND_S:
                return
    figures = ", ".join(f"{lag * 1000:.1f}" for lag in lags)
    pytest.fail(f"{name}: the loop stalled in every run: {figures} ms")


async def _report(runs: int) -> dict[str, Any]:
    import tempfile

    figures: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            async with served(Path(tmp)) as (system, client):
                for name, case in CASES.items():
                    figures[name].append(await measure(case, system, client) * 1000)
    return {name: sorted(ms) for name, ms in figures.items()}


if __name__ == "__main__":  # pragma: no cover - the figures of bench/README.md
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for name, ms in asyncio.run(_report(runs)).items():
        print(f"{name:>18}: max lag ms, sorted: {', '.join(f'{m:.1f}' for m in ms)}")


async def test_the_counts_in_statistics_equal_a_full_count(tmp_path: Path) -> None:
    """The learners keep their nonzero-weight and factor-row counts per batch instead of
    scanning on every statistics() call: the counts stay exact, also after a restore."""
    config = Config.from_dict(
        {
            "training": {"shards": 2},
            "state": {"restore": False, "snapshot_path": str(tmp_path / "snap.msgpack")},
            "ingest": {"dead_letter_path": str(tmp_path / "dlq.jsonl")},
        }
    )

    def full_counts(system: System) -> list[tuple[int, int]]:
        return [
            (
                int(np.count_nonzero(learner.w)),
                int(np.count_nonzero(learner.factors.rows("active"))) if learner.factors else 0,
            )
            for learner in system.learners
        ]

    def reported(system: System) -> list[tuple[int, int]]:
        stats = system.statistics()["learners"]
        return [(s["nonzero_weights"], s["factor_rows_learned"]) for s in stats]

    events = [{"user": f"u{i % 40}", "item": f"i{i % 60}", "label": i % 3 % 2} for i in range(2000)]
    async with System(config) as system:
        assert (await system.ingest(events)).rejected == 0
        assert reported(system) == full_counts(system) and reported(system)[0][0] > 0
        path = await system.save_snapshot()
    async with System(config) as fresh:
        fresh.restore(path)
        assert reported(fresh) == full_counts(fresh) == reported(system)


async def test_the_trainer_pauses_inside_a_batch() -> None:
    """A 256-event batch is 10-25 ms of work: the trainer lets the loop run between its
    parts (users followed, signals walked, each few rankings) instead of holding it."""
    config = Config.from_dict({"state": {"restore": False}, "ingest": {"dead_letter_path": ""}})
    async with System(config) as system:
        events = [{"user": f"u{i % 30}", "item": f"i{i % 90}"} for i in range(512)]
        assert (await system.ingest(events)).rejected == 0
        parsed = [validate_event(event) for event in events[:256]]
        flags = np.ones(len(parsed), bool)  # every event ranked: rankings to pause between
        batch = system.model.featurizer().featurize(batch_from_events(parsed, flags, seq=10**6))
        steps = system.trainer.train_steps(batch)
        pauses = 0
        with pytest.raises(StopIteration):
            while True:
                next(steps)
                pauses += 1
        assert pauses >= 256 // EVENTS_PER_PAUSE + 256 // RANKINGS_PER_PAUSE


async def test_the_item_statistics_grow_off_the_loop() -> None:
    """A catalog past the statistics' capacity doubles them: the trainer hands that copy
    (tens of MB at 300 neighbours) to a worker thread instead of doing it between two
    turns of the loop, and what was learned is kept."""
    config = Config.from_dict({"state": {"restore": False}, "ingest": {"dead_letter_path": ""}})
    async with System(config) as system:
        stats = system.model.sequence.stats  # type: ignore[union-attr]
        events = [{"user": f"u{i % 30}", "item": f"i{i % 90}"} for i in range(512)]
        assert (await system.ingest(events)).rejected == 0
        learned = stats.knn_cnt[:90].copy()
        capacity = stats.capacity
        items = [{"item": f"new{k}"} for k in range(capacity)]  # past the capacity
        parsed = [validate_event(e) for e in [*items, {"user": "u1", "item": "new3"}]]
        batch = system.model.featurizer().featurize(batch_from_events(parsed, seq=10**6))
        steps = system.trainer.train_steps(batch)
        work = next(step for step in steps if step is not None)
        assert stats.capacity == capacity  # not grown on the loop
        await asyncio.to_thread(work)
        assert stats.capacity >= len(system.catalog) > capacity
        np.testing.assert_array_equal(stats.knn_cnt[:90], learned)
        assert all(step is None for step in steps)  # the rest of the batch: pauses only


async def test_a_snapshot_hands_the_interpreter_to_the_loop_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker thread of a snapshot (a single file, or one of a state directory) runs
    with a short switch interval, so the loop waits at most about that long for the GIL
    (5 ms by default); the interval is back to what it was afterwards."""
    from runtime import durability, snapshots
    from runtime.gilshare import WORKER_SWITCH_S

    seen: list[float] = []

    def spying(encode: Callable[..., Any]) -> Callable[..., Any]:
        def spy(*args: Any) -> Any:
            seen.append(sys.getswitchinterval())
            return encode(*args)

        return spy

    monkeypatch.setattr(snapshots, "write_document", spying(snapshots.write_document))
    monkeypatch.setattr(durability, "state_pieces", spying(durability.state_pieces))
    before = sys.getswitchinterval()
    config = Config.from_dict(
        {"state": {"dir": str(tmp_path / "state")}, "ingest": {"dead_letter_path": ""}}
    )
    async with System(config) as system:
        assert (await system.ingest([{"user": "u1", "item": "i1"}])).rejected == 0
        await system.save_snapshot(tmp_path / "one.msgpack")
        assert await system.persistence.snapshot() is not None
        assert sys.getswitchinterval() == before
    assert seen == [WORKER_SWITCH_S] * 3  # the third: the snapshot of a draining stop
    assert before > WORKER_SWITCH_S
