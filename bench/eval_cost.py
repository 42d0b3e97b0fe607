"""What the progressive ranking evaluation costs the daemon's learning (issue 11 item 4).

Ingest goes through ``System.ingest`` in this process, as the daemon's HTTP handler
calls it: ``--items`` item upserts, then requests of 1,000 labelled interaction
events with ``wait=True``, the load test's traffic (``loadtest.make_traffic``: items
with genres and a price, clicks on Zipf-popular items by 10,000 users with an age and
a device).  Each round times the same requests under three settings of
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

from benchutil import machine, median
from loadtest import make_traffic

from runtime import Config, System

SETTINGS: dict[str, dict[str, Any]] = {
    "off": {"rank_eval_every": 0},
    "every 20": {"rank_eval_every": 20, "rank_eval_rows": 0},
    "defaults": {},
}


def traffic(items: int, requests: int) -> tuple[list[Any], list[list[Any]]]:
    """The load test's item upserts and event bodies (``loadtest.make_traffic``), decoded."""
    args = argparse.Namespace(
        items=items, users=10_000, bodies=requests, batch_size=1000, seed=7, body="json"
    )
    made = make_traffic(args)
    catalog = [item for body in made.item_bodies for item in json.loads(body)]
    return catalog, [json.loads(body) for body in made.event_bodies]


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
