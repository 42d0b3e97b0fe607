"""Plain and filtered recommend latency in one process, for comparing checkouts on a busy
machine: ``latency.py``'s data, config and filter, in-process, and the two kinds of
request in alternating blocks of 100 (so drift in the machine's load hits both alike),
each timed by the wall clock and by the thread's CPU time (which another process
holding the core does not inflate).  Prints one JSON line.  No waiting for an idle
machine: run it in each checkout in turn, several rounds, and compare side by side.

    PYTHONPATH=. python bench/latency_ab.py --requests 3000   # in each checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import latency
from benchutil import percentile

BLOCK = 100


def summary(samples: list[tuple[int, int]]) -> dict[str, float]:
    wall = sorted(s[0] / 1e6 for s in samples)
    cpu = sorted(s[1] / 1e6 for s in samples)
    return {
        "p50_ms": round(percentile(wall, 50), 3),
        "p99_ms": round(percentile(wall, 99), 3),
        "cpu_p50_ms": round(percentile(cpu, 50), 3),
        "cpu_p99_ms": round(percentile(cpu, 99), 3),
    }


async def measure(requests: int, seed: int) -> dict[str, Any]:
    from actors.filters import ItemFilter
    from runtime.config import Config
    from runtime.system import System

    items, events, users = latency.make_data(10_000, 1_000, 50_000, seed)
    async with System(Config.from_dict(latency.CONFIG)) as s:
        for batch, size in ((items, 2000), (events, 5000)):
            for lo in range(0, len(batch), size):
                assert (await s.ingest(batch[lo : lo + size])).rejected == 0
        kinds = {"plain": None, "filtered": ItemFilter.from_dict(latency.FILTER)}
        rng = random.Random(seed)
        for _ in range(200):  # warm-up
            for item_filter in kinds.values():
                await s.recommend(rng.choice(users), k=10, item_filter=item_filter)
        samples: dict[str, list[tuple[int, int]]] = {name: [] for name in kinds}
        for block in range(requests // BLOCK):
            order = list(kinds) if block % 2 == 0 else list(reversed(kinds))
            for name in order:
                for _ in range(BLOCK):
                    user = rng.choice(users)
                    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
                    await s.recommend(user, k=10, item_filter=kinds[name])
                    samples[name].append(
                        (time.perf_counter_ns() - wall, time.thread_time_ns() - cpu)
                    )
        code = Path(sys.modules["actors.ranker"].__file__ or "").parent.parent
        return {**{name: summary(found) for name, found in samples.items()}, "code": str(code)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="of each kind")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(measure(args.requests, args.seed))
    except ImportError:  # pragma: no cover
        result = asyncio.run(measure(args.requests, args.seed))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
