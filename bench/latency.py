"""Recommend latency for a 10,000-item catalog: in-process and over HTTP on loopback.

Data (fixed seed): 10,000 items with 1-3 genres (of 20) and a price; 1,000 users
with age/gender/occupation profiles (so every default cross of the model is
exercised); ~50,000 implicit-positive interactions, each user mostly picking
items of two favourite genres, with Zipf-popular items.

1. In-process: ``System(Config.from_dict({"state": {"restore": False}, "ingest":
   {"dead_letter_path": ""}, "http": {"port": 0}}))``, the items and events go in
   through ``await s.ingest(...)`` (validated, hashed, learned), then ``--requests``
   timed ``await s.recommend(user, k=10)`` calls (after ``--warmup`` untimed ones),
   with the default ``[candidates]`` (generated from 5,000 items), then the same calls
   scoring the whole catalog (``whole_catalog`` in the JSON).  Target p99 <= 1 ms.
2. HTTP: the real daemon ``freshrank run --port 0 --state <tmpdir>`` in its own
   process (stopped with SIGTERM); this process is the client: the same items and
   events via ``POST /v1/events`` (JSON arrays), then ``--requests`` sequential
   ``GET /v1/recommend?user=U&k=10`` on one keep-alive aiohttp ClientSession, each
   timed from send to the fully read body.  Target p99 <= 10 ms.

Requests go to users drawn uniformly from those with at least one event.

Both run on uvloop (the daemon does).  Loopback only, bounded request count.

    python bench/latency.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import machine, median, percentile, venv_tool, wait_quiet

BENCH_DIR = Path(__file__).resolve().parent
GENRES = [f"g{i:02d}" for i in range(20)]
AGES = ["<18", "18-24", "25-34", "35-44", "45-54", "55+"]
OCCUPATIONS = [f"occ{i}" for i in range(21)]
CONFIG = {"state": {"restore": False}, "ingest": {"dead_letter_path": ""}, "http": {"port": 0}}


def make_data(
    n_items: int, n_users: int, n_events: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Item upserts, interaction events (stream order), ids of the users with events."""
    rng = np.random.default_rng(seed)
    items: list[dict[str, Any]] = []
    item_genres: list[list[int]] = []
    for i in range(n_items):
        k = int(rng.integers(1, 4))
        genres = sorted(int(g) for g in rng.choice(len(GENRES), k, replace=False))
        item_genres.append(genres)
        items.append(
            {
                "item": f"i{i}",
                "item_features": {
                    "genre": [GENRES[g] for g in genres],
                    "price": round(float(rng.lognormal(2.5, 0.8)), 2),
                },
            }
        )
    by_genre: list[np.ndarray] = [
        np.array([i for i, gs in enumerate(item_genres) if g in gs]) for g in range(len(GENRES))
    ]
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity /= popularity.sum()
    users = [f"u{u}" for u in range(n_users)]
    profiles = [
        {
            "age": AGES[int(rng.integers(len(AGES)))],
            "gender": "F" if rng.random() < 0.5 else "M",
            "occupation": OCCUPATIONS[int(rng.integers(len(OCCUPATIONS)))],
        }
        for _ in users
    ]
    favourites = [rng.choice(len(GENRES), 2, replace=False) for _ in users]
    activity = rng.zipf(1.5, n_users).astype(np.float64).clip(1, 200)
    activity /= activity.sum()
    who = rng.choice(n_users, n_events, p=activity)
    events: list[dict[str, Any]] = []
    base_ts = 1_700_000_000.0
    for t, u in enumerate(who.tolist()):
        if rng.random() < 0.7:
            pool = by_genre[int(rng.choice(favourites[u]))]
            item = int(pool[int(rng.integers(pool.size))])
        else:
            item = int(rng.choice(n_items, p=popularity))
        events.append(
            {
                "user": users[u],
                "item": f"i{item}",
                "ts": base_ts + t,
                "user_features": profiles[u],
            }
        )
    active = sorted(set(who.tolist()))
    return items, events, [users[u] for u in active]


def summarise(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "requests": len(ms),
        "mean_ms": round(sum(ms) / len(ms), 4),
        "p50_ms": round(percentile(ms, 50), 4),
        "p90_ms": round(percentile(ms, 90), 4),
        "p99_ms": round(percentile(ms, 99), 4),
        "p99_9_ms": round(percentile(ms, 99.9), 4),
        "max_ms": round(ms[-1], 4),
    }


async def timed_calls(
    call: Callable[[str], Awaitable[Any]], users: list[str], warmup: int, requests: int, seed: int
) -> list[int]:
    """``warmup`` untimed then ``requests`` timed sequential calls, users drawn uniformly."""
    rng = random.Random(seed)
    for _ in range(warmup):
        await call(rng.choice(users))
    samples: list[int] = []
    for _ in range(requests):
        user = rng.choice(users)
        started = time.perf_counter_ns()
        await call(user)
        samples.append(time.perf_counter_ns() - started)
    return samples


# a request-time filter as a shop would send it: not one genre, up to a price, at most
# 3 items per genre (the README's "Filters by item features")
FILTER = {
    "exclude": {"genre": [GENRES[0]]},
    "range": {"price": [None, 30]},
    "max_per": {"genre": 3},
}


async def in_process(
    items: list[dict[str, Any]],
    events: list[dict[str, Any]],
    users: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from actors.filters import ItemFilter
    from runtime.config import Config
    from runtime.system import System

    async with System(Config.from_dict(CONFIG)) as s:
        started = time.perf_counter()
        for lo in range(0, len(items), 2000):
            result = await s.ingest(items[lo : lo + 2000])
            assert result.rejected == 0, result.errors[:3]
        for lo in range(0, len(events), 5000):
            result = await s.ingest(events[lo : lo + 5000])
            assert result.rejected == 0, result.errors[:3]
        load_s = time.perf_counter() - started
        first = await s.recommend(users[0], k=10)
        assert len(first) == 10, first

        async def call(user: str) -> Any:
            return await s.recommend(user, k=10)

        wait_quiet()
        samples = await timed_calls(call, users, args.warmup, args.requests, args.seed)
        item_filter = ItemFilter.from_dict(FILTER)

        async def filtered(user: str) -> Any:
            return await s.recommend(user, k=10, item_filter=item_filter)

        wait_quiet()
        with_filter = await timed_calls(filtered, users, args.warmup, args.requests, args.seed)
        stats = s.statistics()
        generator, s.ranker.candidates = s.ranker.candidates, None
        wait_quiet()
        whole = await timed_calls(call, users, args.warmup, args.requests, args.seed)
        s.ranker.candidates = generator
        return {
            **summarise(samples),
            "candidates": stats["ranker"].get("candidates"),
            "whole_catalog": summarise(whole),
            "filtered": summarise(with_filter),
            "load_s": round(load_s, 2),
            "catalog_items": stats["catalog_items"],
            "users": stats["users"],
            "events_learned": stats["trainer"]["events"],
            "training_rows": stats["trainer"]["rows"],
            "metrics": stats["metrics"],
        }


async def over_http(
    items: list[dict[str, Any]],
    events: list[dict[str, Any]],
    users: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    import aiohttp

    with tempfile.TemporaryDirectory(prefix="freshrank-bench-") as state:
        argv = [venv_tool("freshrank"), "run", "--port", "0", "--state", state]
        server = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            assert server.stdout is not None
            line = (await asyncio.wait_for(server.stdout.readline(), 60)).decode()
            if not line.startswith("freshrank ready http://"):
                raise RuntimeError(f"daemon did not start: {line!r}")
            base = line.split()[2]
            async with aiohttp.ClientSession(base) as session:
                started = time.perf_counter()
                for batch, size in ((items, 2000), (events, 5000)):
                    for lo in range(0, len(batch), size):
                        async with session.post("/v1/events", json=batch[lo : lo + size]) as resp:
                            body = await resp.json()
                            if resp.status != 200 or body["rejected"]:
                                raise RuntimeError(f"POST /v1/events: {resp.status} {body}")
                load_s = time.perf_counter() - started

                async def call(user: str) -> Any:
                    async with session.get(
                        "/v1/recommend", params={"user": user, "k": "10"}
                    ) as resp:
                        data = await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"GET /v1/recommend: {resp.status} {data[:200]!r}")
                        return data

                first = json.loads(await call(users[0]))
                assert len(first["items"]) == 10, first
                async with session.get("/v1/stats") as resp:
                    before = (await resp.json())["ranker"]
                wait_quiet()
                samples = await timed_calls(call, users, args.warmup, args.requests, args.seed)
                async with session.get("/v1/stats") as resp:
                    stats = await resp.json()
            ranker = stats["ranker"]
            handled = ranker["requests"] - before["requests"]
            ranker_s = ranker["seconds"] - before["seconds"]
            return {
                **summarise(samples),
                "load_s": round(load_s, 2),
                "catalog_items": stats["catalog_items"],
                "users": stats["users"],
                "events_learned": stats["trainer"]["events"],
                "server_ranker_mean_ms": round(1000 * ranker_s / handled, 4),
                "server_command": " ".join(argv),
            }
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(server.wait(), 60)
            except TimeoutError:
                server.kill()
                await server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", choices=["inproc", "http"], help="run one mode only")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "latency.json")
    args = parser.parse_args(argv)
    args.requests = min(args.requests, 100_000)  # bounded

    try:
        import uvloop

        run: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run

    items, events, users = make_data(args.items, args.users, args.events, args.seed)
    print(
        f"{len(items):,} items, {len(users):,} users with events, {len(events):,} events",
        flush=True,
    )
    modes = [("inproc", in_process, 1.0), ("http", over_http, 10.0)]
    results: dict[str, Any] = {}
    for name, fn, target in modes:
        if args.only and name != args.only:
            continue
        runs = []
        for r in range(args.runs):
            res = run(fn(items, events, users, args))
            runs.append(res)
            print(
                f"run {r + 1}/{args.runs} {name:6s} p50 {res['p50_ms']:.3f} ms  "
                f"p99 {res['p99_ms']:.3f} ms  max {res['max_ms']:.3f} ms  "
                f"(load {res['load_s']:.1f} s)"
                + (
                    f"; whole catalog p99 {res['whole_catalog']['p99_ms']:.3f} ms"
                    f"; filtered p99 {res['filtered']['p99_ms']:.3f} ms"
                    if name == "inproc"
                    else ""
                ),
                flush=True,
            )
        keys = ["mean_ms", "p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms"]
        if name == "http":
            keys.append("server_ranker_mean_ms")
        med = {k: round(median([r[k] for r in runs]), 4) for k in keys}
        if name == "inproc":
            med["whole_catalog_p99_ms"] = round(
                median([r["whole_catalog"]["p99_ms"] for r in runs]), 4
            )
        results[name] = {
            "median_of_runs": med,
            "target_p99_ms": target,
            "target_met": med["p99_ms"] <= target,
            "runs": runs,
        }
    result = {
        "benchmark": "latency",
        "machine": machine(),
        "items": args.items,
        "users": args.users,
        "events": args.events,
        "requests_per_run": args.requests,
        "warmup_per_run": args.warmup,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"median of {args.runs} runs x {args.requests} requests, k=10")
    print(f"{'mode':8s} {'mean':>8s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'p99.9':>8s}  target")
    for name, res in results.items():
        m = res["median_of_runs"]
        verdict = "met" if res["target_met"] else "MISSED"
        print(
            f"{name:8s} {m['mean_ms']:8.3f} {m['p50_ms']:8.3f} {m['p90_ms']:8.3f} "
            f"{m['p99_ms']:8.3f} {m['p99_9_ms']:8.3f}  p99 <= {res['target_p99_ms']} ms: {verdict}"
        )
    if "inproc" in results:
        whole = results["inproc"]["median_of_runs"]["whole_catalog_p99_ms"]
        print(f"in-process, scoring the whole catalog instead: p99 {whole:.3f} ms")
    if "http" in results:
        print(
            f"server-side ranker time per request (mean): "
            f"{results['http']['median_of_runs']['server_ranker_mean_ms']:.3f} ms"
        )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
