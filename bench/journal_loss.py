"""What ``journal.fsync = "interval"`` can lose: the real daemon under load, killed with
SIGKILL at moments a seeded RNG picks, and the window an OS crash would hit.

A client posts ``--batch``-event bodies one after another, waiting for each answer,
while a sampler reads ``/v1/stats`` every ``--sample-ms``.  Two figures:

* ``kill -9``: after each kill, before the restart, the journal is read; every
  acknowledged request must be in it (``write(2)`` completed before the answer, and
  the page cache survives the process), so the loss should be 0.
* an OS crash or a power cut loses what was written and not yet fsynced: each sample
  gives the journal's ``last_seq`` and ``synced_seq``, so the acknowledged records not
  yet on disk at that moment (records, events, and the age of the oldest of them).
  The interval policy bounds that age by ``fsync_interval_ms`` plus one fsync.

    PYTHONPATH=. .venv/bin/python bench/journal_loss.py      # ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.benchutil import machine
from runtime.journal import read_records

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def body_of(size: int, k: int) -> list[dict[str, Any]]:
    return [
        {"user": f"u{(k * size + i) % 997}", "item": f"i{(k * size + i) % 4999}",
         "label": i % 2, "user_features": {"age": "25-34"}, "context": {"device": "mobile"}}
        for i in range(size)
    ]  # fmt: skip


def last_record(state: Path) -> int:
    return max((r.seq for r in read_records(state / "journal")), default=0)


async def start(state: Path, config: Path, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as stderr:  # noqa: ASYNC230 - a local file, opened once
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime", "run", "--port", "0", "--state", str(state),
            "--config", str(config), cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 300)).decode()
    if not line.startswith("freshrank ready http://"):
        proc.kill()
        raise SystemExit(f"the daemon did not start: {line} (see {log})")
    return proc, line.split()[2]


async def life(
    url: str, http: aiohttp.ClientSession, batch: int, seconds: float, sample_s: float,
    first: int, acked: dict[int, float], samples: list[tuple[float, int, int]], query: str,
) -> None:  # fmt: skip
    """Post for ``seconds`` (request k is journal record first + k); sample meanwhile."""
    done = asyncio.Event()

    async def client() -> None:
        seq = first
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            async with http.post(f"{url}/v1/events{query}", json=body_of(batch, seq)) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            acked[seq] = time.perf_counter()
            seq += 1
        done.set()

    async def sampler() -> None:
        while not done.is_set():
            async with http.get(f"{url}/v1/stats") as resp:
                journal = (await resp.json())["journal"]
            samples.append((time.perf_counter(), journal["last_seq"], journal["synced_seq"]))
            # the sampling period is the measurement's resolution, not a synchronisation
            await asyncio.sleep(sample_s)

    await asyncio.gather(client(), sampler())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="journal-loss-"))
    state, log, config = work / "state", work / "daemon.log", work / "daemon.toml"
    config.write_text(
        f'[journal]\nfsync = "interval"\nfsync_interval_ms = {args.interval_ms}\n', "utf-8"
    )
    acked: dict[int, float] = {}
    samples: list[tuple[float, int, int]] = []
    lost = journaled_unanswered = 0
    posting = 0.0
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        for _ in range(args.kills):
            proc, url = await start(state, config, log)
            inflight: asyncio.Future[Any] | None = None
            try:
                first = last_record(state) + 1
                seconds = rng.uniform(0.5, 2 * args.seconds / args.kills)
                posting += seconds
                await life(url, http, args.batch, seconds, args.sample_ms / 1e3, first, acked,
                           samples, "" if args.wait else "?wait=false")  # fmt: skip
                # the kill meets the next request in flight
                inflight = asyncio.ensure_future(
                    http.post(f"{url}/v1/events", json=body_of(args.batch, -1))
                )
                await asyncio.sleep(rng.uniform(0, 0.005))
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            if inflight is not None:
                inflight.cancel()
            last = last_record(state)
            lost += sum(1 for seq in acked if seq > last)
            if acked and last > max(acked):  # the in-flight request was journaled
                journaled_unanswered += 1
                acked[last] = float("nan")
    shutil.rmtree(work)  # kept when the run failed: its daemon.log says why
    ages, at_risk = [], []
    for t, last, synced in samples:
        risky = [seq for seq in range(synced + 1, last + 1) if acked.get(seq, t) < t]
        at_risk.append(len(risky))
        ages.append((t - acked[risky[0]]) * 1e3 if risky else 0.0)
    answered = sum(1 for v in acked.values() if v == v)
    return {
        "machine": machine(),
        "interval_ms": args.interval_ms,
        "kills": args.kills,
        "seconds": round(time.perf_counter() - started, 1),
        "acknowledged_requests": answered,
        "events_per_request": args.batch,
        "wait": args.wait,
        "acknowledged_events_per_s": round(answered * args.batch / posting),
        "lost_on_kill_9": lost,
        "journaled_unanswered": journaled_unanswered,
        "samples": len(samples),
        "at_risk_records_max": max(at_risk),
        "at_risk_events_max": max(at_risk) * args.batch,
        "at_risk_age_ms_max": round(max(ages), 1),
        "at_risk_age_ms_median": round(statistics.median(ages), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0, help="total posting time")
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--sample-ms", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--no-wait", dest="wait", action="store_false",
        help="post with ?wait=false: answered once journaled, before learning (faster)",
    )  # fmt: skip
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    OUT.mkdir(exist_ok=True)
    (OUT / "journal_loss.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
