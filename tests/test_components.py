"""A model component added in one place (``model.components``) is built, saved, restored
and served by every wiring of the model: the embedded System and the cluster roles."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from actors.model import ComponentError, build_model
from runtime.config import Config, ConfigError
from runtime.system import SnapshotError, System
from tests.conftest import Broker
from tests.test_cluster import READY_TIMEOUT, all_learned, cluster_config, processes

ROOT = Path(__file__).resolve().parents[1]
COUNTER = "tests.test_components:ItemCounter"


class ItemCounter:
    """The tiny component of the acceptance test: interactions per catalog row."""

    name = "item_counter"
    STATE_VERSION: ClassVar[int] = 1

    def __init__(self, config: Config) -> None:
        self.counts: dict[int, int] = {}

    def to_state(self) -> dict[str, Any]:
        return {"rows": list(self.counts), "counts": list(self.counts.values())}

    def load_state(self, state: dict[str, Any]) -> None:
        self.counts = dict(zip(state["rows"], state["counts"], strict=True))

    def observe(self, users: Sequence[str], item_rows: np.ndarray) -> None:
        for row in item_rows[item_rows >= 0].tolist():
            self.counts[row] = self.counts.get(row, 0) + 1

    def statistics(self) -> dict[str, Any]:
        return {"items": len(self.counts), "interactions": sum(self.counts.values())}


def counter_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 16, "components": [COUNTER]},
            "state": {"snapshot_path": str(tmp_path / "s.msgpack"), "restore": True},
            "ingest": {"dead_letter_path": ""},
            "http": {"enabled": False},
            **sections,
        }
    )


CLICKS = [{"user": f"u{k % 3}", "item": f"i{k % 4}"} for k in range(10)]


async def test_a_component_is_built_saved_restored_and_served_embedded(tmp_path: Path) -> None:
    config = counter_config(tmp_path)
    async with System(config) as system:
        await system.ingest(CLICKS)
        assert system.statistics()["components"]["item_counter"] == {
            "items": 4,
            "interactions": 10,
        }
        system.write_snapshot()
    async with System(config) as restarted:
        counter = restarted.model.components["item_counter"]
        assert isinstance(counter, ItemCounter)
        assert counter.counts == {0: 3, 1: 3, 2: 2, 3: 2}
        await restarted.ingest(CLICKS[:1])
        assert restarted.statistics()["components"]["item_counter"]["interactions"] == 11


async def test_a_snapshot_without_the_component_is_refused(tmp_path: Path) -> None:
    plain = counter_config(tmp_path, model={"bits": 16})
    async with System(plain) as system:
        await system.ingest(CLICKS)
        system.write_snapshot()
    with pytest.raises(SnapshotError, match="test_components:ItemCounter"):
        System(counter_config(tmp_path)).restore(tmp_path / "s.msgpack")


def test_bad_component_paths_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="module:factory"):
        Config.from_dict({"model": {"components": ["no_colon"]}})
    with pytest.raises(ComponentError, match="cannot import"):
        build_model(Config.from_dict({"model": {"components": ["tests.nowhere:Thing"]}}))
    duplicate = Config.from_dict({"model": {"components": [COUNTER, COUNTER]}})
    with pytest.raises(ComponentError, match="taken"):
        build_model(duplicate)


async def test_a_component_is_served_by_a_cluster_ranker(
    tmp_path: Path, broker: Broker, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiohttp

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the subprocesses import this module
    path = cluster_config(
        tmp_path, broker, topic_prefix,
        training={"shards": 1}, model={"components": [COUNTER]}, http={"port": 0},
    )  # fmt: skip
    config = Config.load(path)
    async with processes(path, ("shard", 0), ("trainer", 0)) as procs:
        ranker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime", "ranker", "--id", "0", "--config", str(path),
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=(tmp_path / "ranker.log").open("w"),
            env={**os.environ},
        )  # fmt: skip
        try:
            assert ranker.stdout is not None
            line = (await asyncio.wait_for(ranker.stdout.readline(), READY_TIMEOUT)).decode()
            assert line.startswith("freshrank ranker ready"), (tmp_path / "ranker.log").read_text()
            url = line.split()[3]
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{url}/v1/events", json=CLICKS) as resp:
                    assert resp.status == 200
                await all_learned(config)
                served: dict[str, Any] = {}
                for _ in range(1200):  # the ranker follows the events topic
                    async with http.get(f"{url}/v1/stats") as resp:
                        served = (await resp.json())["components"]["item_counter"]
                    if served["interactions"] >= len(CLICKS):
                        break
                    await asyncio.sleep(0.05)  # another process's progress
            assert served == {"items": 4, "interactions": 10}
        finally:
            ranker.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(ranker.wait(), READY_TIMEOUT) == 0
        for proc in procs.values():
            assert await proc.stop() == 0
    trainer_stats = json.loads((tmp_path / "state" / "trainer-0.json").read_text())
    assert trainer_stats["components"]["item_counter"] == {"items": 4, "interactions": 10}
