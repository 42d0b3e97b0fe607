"""The first requests after "ready" (issue 11, "ready means ready").

Starts ``freshrank run --port P`` (P free on loopback, in an empty working directory),
times how long
the process takes to print its ready line, then times, one after the other, the
first ``POST /v1/events`` of 50 items, the first and second single clicks, and three
``GET /v1/recommend`` calls; SIGTERM after.  Repeated ``--runs`` times, each in a
fresh process: once with numba's on-disk cache warm (a restarted daemon) and once with
an empty cache (``NUMBA_CACHE_DIR`` a new directory: the first start after an
install).  ``--freshrank`` names another checkout's executable, so an older commit
is measured in the same run::

    python bench/first_request.py --runs 3 --freshrank /path/to/old/.venv/bin/freshrank \
        --freshrank .venv/bin/freshrank
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.benchutil import code_version, machine, median, venv_tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def call(port: int, method: str, path: str, body: Any = None) -> float:
    """Milliseconds from send to the fully read answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as answer:
        answer.read()
    return (time.perf_counter() - started) * 1000


def one_run(freshrank: str, cold_cache: bool) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir, tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache} if cold_cache else None
        started = time.perf_counter()
        process = subprocess.Popen(
            [freshrank, "run", "--port", str(port)], cwd=workdir, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("freshrank ready"):
                    break
            out = {"ready_s": time.perf_counter() - started}
            items = [
                {"item": f"i{k}", "item_features": {"genre": [f"g{k % 5}"]}} for k in range(50)
            ]
            out["items_ms"] = call(port, "POST", "/v1/events", items)
            out["click_ms"] = call(port, "POST", "/v1/events", [{"user": "u1", "item": "i3"}])
            out["click2_ms"] = call(port, "POST", "/v1/events", [{"user": "u2", "item": "i4"}])
            for n in range(3):
                out[f"recommend{n + 1}_ms"] = call(port, "GET", "/v1/recommend?user=u1&k=10")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--freshrank", action="append", default=[],
                        help="executables to compare (default: this venv's)")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    executables = args.freshrank or [venv_tool("freshrank")]
    cases = [(exe, cold) for cold in (False, True) for exe in executables]
    runs: dict[tuple[str, bool], list[dict[str, float]]] = {case: [] for case in cases}
    for _ in range(args.runs):  # interleaved, so every case meets the same machine
        for exe, cold in cases:
            runs[exe, cold].append(one_run(exe, cold))
    report: dict[str, Any] = {"machine": machine(), "code": code_version(), "medians": []}
    for (exe, cold), results in runs.items():
        medians = {key: round(median([r[key] for r in results]), 3) for key in results[0]}
        report["medians"].append({"freshrank": exe, "cold_cache": cold, **medians})
        print(exe, "cold cache" if cold else "warm cache", json.dumps(medians))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
