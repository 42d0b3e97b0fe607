"""The daemon as a real subprocess: ready, HTTP on a free port, SIGTERM drains and
exits 0, and a restart restores the learned state."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from actors.simulator import Simulator, SimulatorConfig

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0


@asynccontextmanager
async def daemon(state: Path, *extra: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runtime", "run", "--port", "0", "--state", str(state), *extra,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
        assert line.startswith("freshrank ready http://"), line + await _stderr(proc)
        yield proc, line.split()[2]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _stderr(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.kill()
    _, err = await proc.communicate()
    return err.decode(errors="replace")


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode(errors="replace")


def events() -> list[dict[str, Any]]:
    sim = Simulator(SimulatorConfig(seed=3, n_users=60, n_items=80))
    return sim.items() + sim.next_batch(1500)


async def recommendations(
    http: aiohttp.ClientSession, url: str, users: list[str]
) -> dict[str, Any]:
    out = {}
    for user in users:
        async with http.get(f"{url}/v1/recommend", params={"user": user, "k": "10"}) as resp:
            assert resp.status == 200
            out[user] = (await resp.json())["items"]
    return out


async def test_daemon_serves_drains_on_sigterm_and_restores(tmp_path: Path) -> None:
    users = ["u0", "u1", "u2", "u7", "new-user"]
    async with daemon(tmp_path) as (proc, url), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        batch = events()
        interactions = sum(1 for e in batch if "user" in e)
        items = len({e["item"] for e in batch})
        async with http.post(f"{url}/v1/events", json=batch) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert body["accepted"] == len(batch) and body["rejected"] == 0
        # queued without waiting: SIGTERM must still learn these (drain, nothing lost)
        tail = [{"user": "u1", "item": "i3", "label": 1}] * 40
        async with http.post(f"{url}/v1/events", params={"wait": "false"}, json=tail) as resp:
            assert resp.status == 200
        before = await recommendations(http, url, users)
        code, output = await stop(proc)
    assert code == 0, output
    assert "stopped cleanly" in output
    assert list((tmp_path / "snapshots").glob("snapshot-*.msgpack"))

    async with daemon(tmp_path) as (proc, url), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/stats") as resp:
            stats = json.loads(await resp.text())
        assert stats["trainer"]["events"] == interactions + 40
        assert stats["catalog_items"] == items
        after = await recommendations(http, url, users)
        code, output = await stop(proc)
    assert code == 0, output
    assert after == before
    assert all(len(items) == 10 for items in after.values())


async def test_daemon_with_simulator_learns_without_clients(tmp_path: Path) -> None:
    async with daemon(tmp_path, "--simulate") as (proc, url), aiohttp.ClientSession() as http:
        learned = 0
        for _ in range(600):  # poll the real counter; bounded
            async with http.get(f"{url}/v1/stats") as resp:
                stats = await resp.json()
            learned = stats["trainer"]["events"]
            if learned >= 200:
                break
            await asyncio.sleep(0.05)  # waiting for wall-clock simulated traffic, not synchronising
        assert learned >= 200
        code, output = await stop(proc)
    assert code == 0, output
