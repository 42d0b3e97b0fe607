"""The cost of the event journal: appends per second and events per second for each
fsync policy, at 1, 100 and 1,000 events per request, on this machine's disk.

* ``write only``: ``write(2)`` of each record, never an fsync (what survives ``kill -9``);
* ``interval``: the same, with the background thread fsyncing every 100 ms;
* ``always, 1 client``: each append waits for its own fsync (one request at a time);
* ``always, 32 clients``: 32 concurrent requests, sharing fsyncs (group commit).

Also the time of one fsync of a small append.  Writes to ``bench/out/journal/`` (the
disk of the state directory matters: pass ``--dir`` to measure another one).

    python bench/journal.py            # ~1 min; --seconds S per case
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.benchutil import machine
from runtime.journal import Journal, encode_entry

OUT = Path(__file__).resolve().parent / "out"


def events_of(size: int) -> list[dict[str, Any]]:
    """``size`` events like an HTTP client's."""
    return [
        {"user": f"u{i % 997}", "item": f"i{i % 4999}", "label": i % 2,
         "user_features": {"age": "25-34"}, "context": {"device": "mobile"}}
        for i in range(size)
    ]  # fmt: skip


def encode_us_per_event(size: int, rounds: int = 200) -> float:
    """What the System adds on the event loop per event: msgpack of the record."""
    events = events_of(size)
    started = time.perf_counter()
    for _ in range(rounds):
        encode_entry(time.time(), "http", events)
    return (time.perf_counter() - started) / rounds / size * 1e6


async def run_case(
    directory: Path, policy: str, payload: bytes, clients: int, seconds: float
) -> float:
    """Appends per second over ``seconds``."""
    shutil.rmtree(directory, ignore_errors=True)
    journal = Journal(directory, "always" if policy == "always" else "interval", 100.0)
    journal.open()
    if policy == "write":
        journal._stop.set()  # no interval thread: write(2) only
    deadline = time.perf_counter() + seconds
    count = 0

    async def client() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            seq = journal.append(payload)
            await journal.durable(seq)
            count += 1
            await asyncio.sleep(0)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    journal.close()
    return count / elapsed


def fsync_ms(directory: Path, rounds: int = 200) -> float:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    times = []
    try:
        for _ in range(rounds):
            os.write(fd, b"x" * 300)
            started = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1e3


CASES = [("write", 1, "write only"), ("interval", 1, "interval 100 ms"),
         ("always", 1, "always, 1 client"), ("always", 32, "always, 32 clients")]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=str(OUT / "journal"))
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    directory = Path(args.dir)
    results: dict[str, Any] = {"machine": machine(), "fsync_ms_median": fsync_ms(directory)}
    print(f"fsync of a 300-byte append: {results['fsync_ms_median']:.3f} ms (median)")
    rows = []
    for size in (1, 100, 1000):
        payload = encode_entry(time.time(), "http", events_of(size))
        encode_us = encode_us_per_event(size)
        print(f"{size:>5} events/request  encoding {encode_us:.2f} µs/event")
        rows.append({"events_per_request": size, "encode_us_per_event": round(encode_us, 3)})
        for policy, clients, label in CASES:
            rate = asyncio.run(run_case(directory / "log", policy, payload, clients, args.seconds))
            rows.append({"events_per_request": size, "policy": label, "record_bytes": len(payload),
                         "appends_per_s": round(rate), "events_per_s": round(rate * size)})  # fmt: skip
            print(f"{size:>5} events/request  {label:<20} {rate:>10,.0f} appends/s "
                  f"{rate * size:>12,.0f} events/s")  # fmt: skip
    results["rows"] = rows
    shutil.rmtree(directory, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "journal.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
