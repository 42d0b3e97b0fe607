"""Recommend latency on a synthetic 1,000,000-item catalog: generated candidates
(``[candidates]``, the default from 5,000 items) against scoring the whole catalog,
in the same process and run, with the memory it takes.

Data (fixed seed): ``--items`` items with one of 50 genres; ``--users`` users, each
walking ``--steps`` consecutive items (i, i+1, ...) from a Zipf-popular start, so
the item-to-item statistics have neighbours for every visited item.  Everything
goes in through ``await s.ingest(...)``; then ``--requests`` timed
``await s.recommend(user, k=10)`` per mode (after ``--warmup``), users drawn
uniformly.  Target: p99 <= 5 ms with candidate generation.

    python bench/candidates.py            # 1,000,000 items, ~4.9 GB
    python bench/candidates.py --items 200000 --users 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

import numpy as np
from benchutil import machine, wait_quiet
from latency import summarise, timed_calls

CONFIG = {
    # the progressive evaluation ranks every 20th event over the whole catalog: at
    # 1,000,000 items that is the cost of loading, so it is off here
    "training": {"rank_eval_every": 0},
    "state": {"restore": False, "snapshot_path": ""},
    "ingest": {"dead_letter_path": ""},
    "http": {"enabled": False},
}


def make_items(n_items: int) -> list[dict[str, Any]]:
    return [{"item": f"i{i}", "item_features": {"genre": f"g{i % 50}"}} for i in range(n_items)]


def make_events(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    rng = np.random.default_rng(args.seed)
    starts = (rng.zipf(1.3, args.users) * 7919) % (args.items - args.steps)
    events = []
    ts = 1_700_000_000.0
    for u, start in enumerate(starts.tolist()):
        for step in range(args.steps):
            ts += 1.0
            events.append({"user": f"u{u}", "item": f"i{start + step}", "ts": ts})
    order = rng.permutation(len(events) // args.steps)  # interleave users, keep each in order
    interleaved = [events[u * args.steps + s] for s in range(args.steps) for u in order.tolist()]
    return interleaved, [f"u{u}" for u in range(args.users)]


async def load(s: Any, items: list[dict[str, Any]], events: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for batch in (items, events):
        for lo in range(0, len(batch), 5000):
            result = await s.ingest(batch[lo : lo + 5000])
            assert result.rejected == 0, result.errors[:3]
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from runtime.config import Config
    from runtime.system import System

    items = make_items(args.items)
    events, users = make_events(args)
    async with System(Config.from_dict(CONFIG)) as s:
        load_s = await load(s, items, events)
        generator = s.ranker.candidates

        async def call(user: str) -> Any:
            return await s.recommend(user, k=10)

        results: dict[str, Any] = {}
        for mode in ("generated", "whole_catalog"):
            s.ranker.candidates = generator if mode == "generated" else None
            wait_quiet()
            samples = await timed_calls(call, users, args.warmup, args.requests, args.seed)
            results[mode] = summarise(samples)
        s.ranker.candidates = generator
        stats = s.statistics()
        return {
            **results,
            "p99_ratio_whole_over_generated": round(
                results["whole_catalog"]["p99_ms"] / results["generated"]["p99_ms"], 1
            ),
            "candidates": stats["ranker"]["candidates"],
            "load_s": round(load_s, 1),
            "catalog_items": stats["catalog_items"],
            "events_learned": stats["trainer"]["events"],
            "itemstats": s.model.sequence.statistics() if s.model.sequence else None,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(run(args))
    print(json.dumps({"machine": machine(), **result}, indent=2))


if __name__ == "__main__":
    main()
