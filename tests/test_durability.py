"""Durable state of the embedded System (``state.dir``): the journal replayed after the
newest valid snapshot, fallbacks for every damaged snapshot, and the real daemon killed
with SIGKILL losing nothing it acknowledged."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from actors.simulator import Simulator, SimulatorConfig
from actors.state import decode_state, encode_state
from runtime.config import Config
from runtime.system import System

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0


def durable_config(state: Path, **sections: dict[str, Any]) -> Config:
    return Config.from_dict(
        {"state": {"dir": str(state)}, "ingest": {"dead_letter_path": ""}, **sections}
    )


def stream(n: int = 900) -> list[dict[str, Any]]:
    sim = Simulator(SimulatorConfig(seed=11, n_users=40, n_items=60))
    return sim.items() + sim.next_batch(n)


def counts(system: System) -> tuple[int, int, int]:
    stats = system.statistics()
    return stats["trainer"]["events"], stats["users"], stats["catalog_items"]


async def three_snapshots_and_a_tail(state: Path) -> tuple[list[Path], tuple[int, int, int]]:
    """Ingest in four parts with a snapshot after each of the first three, then end
    without a final snapshot (as a crash would); the snapshots and the counts reached."""
    events = stream()
    parts = [events[:300], events[300:500], events[500:700], events[700:]]
    system = System(durable_config(state))
    await system.start()
    written = []
    for part in parts[:3]:
        await system.ingest(part)
        path = await system.snapshot()
        assert path is not None
        written.append(path)
    await system.ingest(parts[3])
    reached = counts(system)
    await system.stop(drain=False)  # no snapshot on the way out
    return written, reached


async def restarted(state: Path) -> tuple[System, dict[str, Any]]:
    system = System(durable_config(state))
    await system.start()
    return system, system.statistics()


def flip_inside_arrays(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 5] = bytes(b ^ 0x5A for b in data[middle : middle + 5])
    path.write_bytes(bytes(data))


def missing_key(path: Path) -> None:
    document = decode_state(path.read_bytes())
    del document["parts"][
        "weights" if "weights" in document["parts"] else next(iter(document["parts"]))
    ]
    path.write_bytes(encode_state(document))


def wrong_version(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4] = 99  # the format version in the header
    path.write_bytes(bytes(data))


FAULTS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]),
    "empty": lambda p: p.write_bytes(b""),
    "flipped bytes": flip_inside_arrays,
    "wrong version": wrong_version,
    "a part missing": missing_key,
}


async def test_a_restart_replays_the_journal_after_the_newest_snapshot(tmp_path: Path) -> None:
    written, reached = await three_snapshots_and_a_tail(tmp_path)
    system, stats = await restarted(tmp_path)
    try:
        assert counts(system) == reached
        assert stats["snapshots"]["restored_from"] == str(written[-1])
        assert stats["snapshots"]["replayed_records"] == 1  # only the tail
        assert stats["snapshots"]["snapshots_rejected"] == 0
    finally:
        await system.stop()


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one(
    tmp_path: Path, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    written, reached = await three_snapshots_and_a_tail(tmp_path)
    assert len(written) == 3
    FAULTS[fault](written[-1])
    with caplog.at_level(logging.WARNING, "freshrank.state"):
        system, stats = await restarted(tmp_path)
    try:
        assert counts(system) == reached  # nothing lost: a longer journal replay
        assert stats["snapshots"]["restored_from"] == str(written[-2])
        assert stats["snapshots"]["snapshots_rejected"] == 1
        assert stats["snapshots"]["replayed_records"] == 2
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and str(written[-1]) in warnings[0].getMessage()
        assert "falling back to the previous one" in warnings[0].getMessage()
    finally:
        await system.stop()


async def test_another_configs_snapshot_is_refused(tmp_path: Path) -> None:
    await three_snapshots_and_a_tail(tmp_path)
    other = durable_config(tmp_path, model={"bits": 18})
    system = System(other)
    await system.start()
    try:
        stats = system.statistics()
        assert stats["snapshots"]["snapshots_rejected"] == 3
        assert stats["snapshots"]["restored_from"] is None
        assert stats["snapshots"]["replayed_records"] == 4  # the whole journal, relearned
    finally:
        await system.stop(drain=False)


async def test_a_lone_truncated_snapshot_starts_cleanly_from_the_journal(tmp_path: Path) -> None:
    events = stream()
    system = System(durable_config(tmp_path))
    await system.start()
    await system.ingest(events)
    path = await system.snapshot()
    reached = counts(system)
    await system.stop(drain=False)
    assert path is not None
    path.write_bytes(path.read_bytes()[:100])
    system, stats = await restarted(tmp_path)
    try:
        assert stats["snapshots"]["snapshots_rejected"] == 1
        assert stats["snapshots"]["restored_from"] is None
        assert counts(system) == reached  # an empty model, then the whole journal
    finally:
        await system.stop()


async def test_a_clean_stop_snapshots_and_prunes_to_the_kept_ones(tmp_path: Path) -> None:
    config = Config.from_dict({
        "state": {"dir": str(tmp_path), "keep_snapshots": 2},
        "journal": {"segment_bytes": 4096}, "ingest": {"dead_letter_path": ""},
    })  # fmt: skip
    events = stream()
    async with System(config) as system:
        for lo in range(0, len(events), 100):
            await system.ingest(events[lo : lo + 100])
            await system.snapshot()
        reached = counts(system)
    kept = sorted((tmp_path / "snapshots").glob("snapshot-*.msgpack"))
    assert len(kept) == 2
    segments = sorted((tmp_path / "journal").glob("*.journal"))
    oldest_kept = int(kept[0].name.split("-")[1].split(".")[0])
    assert int(segments[0].name.split(".")[0]) <= oldest_kept + 1  # still replayable
    assert len(segments) < len(events) // 100  # the older segments were deleted
    async with System(config) as system:
        assert counts(system) == reached
        assert system.statistics()["snapshots"]["replayed_records"] == 0


# --------------------------------------------------------------------------- the real daemon


def text_of(log: Path) -> str:
    return log.read_text(errors="replace")


async def start_daemon(state: Path, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the worktree's code, not an installed one
    with open(log, "ab") as stderr:  # noqa: ASYNC230 - a local file, opened once
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime", "run", "--port", "0", "--state", str(state),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
    if not line.startswith("freshrank ready http://"):
        proc.kill()
        await proc.wait()
        raise AssertionError(line + text_of(log))
    return proc, line.split()[2]


async def test_kill_9_loses_nothing_the_daemon_acknowledged(tmp_path: Path) -> None:
    events = stream(1500)
    interactions = sum(1 for e in events if "user" in e)
    users = len({e["user"] for e in events if "user" in e})
    items = len({e["item"] for e in events})
    log = tmp_path / "daemon.log"
    proc, url = await start_daemon(tmp_path / "state", log)
    try:
        async with aiohttp.ClientSession() as http:
            for lo in range(0, len(events), 250):
                body = events[lo : lo + 250]
                async with http.post(f"{url}/v1/events", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["accepted"] == len(body)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    proc, url = await start_daemon(tmp_path / "state", log)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/stats") as resp:
            stats = await resp.json()
        assert stats["trainer"]["events"] == interactions
        assert stats["users"] == users
        assert stats["catalog_items"] == items
        assert stats["snapshots"]["replayed_events"] == len(events)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), START_TIMEOUT)
    assert proc.returncode == 0, text_of(log)


async def test_a_journal_that_cannot_be_written_answers_503_and_accepts_nothing(
    tmp_path: Path,
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from runtime.http import make_app

    async with System(durable_config(tmp_path)) as system:
        async with TestClient(TestServer(make_app(system))) as client:
            resp = await client.post("/v1/events", json=[{"item": "i1"}])
            assert resp.status == 200
            journal = system.durability.journal  # type: ignore[union-attr]
            writable = journal._fd
            journal._fd = os.open(tmp_path / "journal", os.O_RDONLY)  # every write fails
            try:
                resp = await client.post("/v1/events", json=[{"item": "i2"}])
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert "journal cannot be written" in (await resp.json())["error"]
            finally:
                os.close(journal._fd)
                journal._fd = writable
            assert "i2" not in system.catalog.rows  # not accepted, so not learned
            resp = await client.post("/v1/events", json=[{"item": "i3"}])
            assert resp.status == 200
        assert system.statistics()["journal"]["append_errors"] == 1
    system = System(durable_config(tmp_path))
    await system.start()
    try:
        assert sorted(system.catalog.rows) == ["i1", "i3"]
    finally:
        await system.stop()
