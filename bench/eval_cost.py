"""What the progressive ranking evaluation costs the daemon's learning (issue 11 item 4).

Ingest goes through ``System.ingest`` in this process, as the daemon's HTTP handler
calls it: ``--items`` item upserts, then requests of 1,000 labelled interaction
events with ``wait=True`` (the load test's traffic: Zipf-popular items, 10,000 users,
a device context).  Each round times the same requests under three settings of
``[training]``, in turn:

* ``off``: ``rank_eval_every = 0``, no ranking evaluation (the learning alone);
* ``every 20``: ``rank_eval_rows = 0``, every 20th interaction ranked against the
  whole catalog (the default before ``rank_eval_rows``);
* ``defaults``: every 20th interaction, but no closer than catalog rows /
  ``rank_eval_rows`` interactions to the last one ranked.

It prints learned events/s (median of ``--rounds``) and each setting's evaluation
cost as a share of the learning time, ``t / t_off - 1``; writes ``bench/out/eval_cost.json``.

    PYTHONPATH=. python bench/eval_cost.py --items 2000 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import machine, median

from runtime import Config, System

SETTINGS: dict[str, dict[str, Any]] = {
    "off": {"rank_eval_every": 0},
    "every 20": {"rank_eval_every": 20, "rank_eval_rows": 0},
    "defaults": {},
}


def traffic(items: int, requests: int, seed: int = 7) -> tuple[list[Any], list[list[Any]]]:
    rng = np.random.default_rng(seed)
    genres = [f"g{g}" for g in range(12)]
    catalog = [
        {"item": f"i{i}", "item_features": {"genre": list(rng.choice(genres, 2, False))}}
        for i in range(items)
    ]
    popular = np.minimum(rng.zipf(1.3, requests * 1000), items) - 1
    users = rng.integers(0, 10_000, requests * 1000)
    bodies = [
        [
            {
                "user": f"u{users[r * 1000 + e]}",
                "item": f"i{popular[r * 1000 + e]}",
                "label": int(rng.random() < 0.3),
                "context": {"device": f"d{int(rng.integers(3))}"},
            }
            for e in range(1000)
        ]
        for r in range(requests)
    ]
    return catalog, bodies


async def learned_per_second(
    setting: dict[str, Any], catalog: list[Any], bodies: list[Any]
) -> float:
    """Events/s over ``bodies`` after the first fifth (the catalog's statistics fill up)."""
    warm = len(bodies) // 5
    async with System(Config.from_dict({"training": setting})) as system:
        await system.ingest(catalog)
        for body in bodies[:warm]:
            await system.ingest(body)
        started = time.perf_counter()
        for body in bodies[warm:]:
            await system.ingest(body)
        return 1000 * (len(bodies) - warm) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--requests", type=int, default=100, help="of 1,000 events each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "out" / "eval_cost.json"
    )
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "catalogs": {}}
    print(result["machine"])
    for items in args.items:
        catalog, bodies = traffic(items, args.requests)
        await learned_per_second({}, catalog, bodies[:10])  # kernels loaded, first touches
        rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name, setting in SETTINGS.items():
                rates[name].append(await learned_per_second(setting, catalog, bodies))
        off = median(rates["off"])
        result["catalogs"][items] = {
            name: {"events_per_s": values, "share": off / median(values) - 1}
            for name, values in rates.items()
        }
        for name, values in rates.items():
            rate = median(values)
            print(
                f"{items:>7,} items  {name:<9} {rate:>9,.0f} events/s"
                f"  evaluation {off / rate - 1:+.1%} of the learning time"
                f"  (rounds: {', '.join(f'{v:,.0f}' for v in values)})"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
