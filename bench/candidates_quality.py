"""What candidate generation costs in quality: on each recommendation set, the
replay protocol's ranked events are answered twice by the ranker, once from the
whole catalog and once from generated candidates only (``[candidates]`` as if the
catalog were above ``whole_catalog_below``), with the same model at the same
moment; HR@10 of both and the overlap of their top 10 are reported.

Events go through ``System.submit`` one at a time, in the replay's order; before a
ranked event the model has learned exactly the events before it.  Exploration is
off (``explore=None``) so both answers are the model's ranking.  The top-trending
list is refreshed for every request (``refresh_s = 0``): a replay compresses days
into seconds, so a 1-second refresh would be staler in event time than in service.

    python bench/candidates_quality.py                      # the three sets, ~5 min
    python bench/candidates_quality.py --sets ml-100k:movielens
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SETS = (
    "ml-100k:movielens",
    "movietweetings-100k:movietweetings",
    "amazon-grocery-rechorus:rechorus",
)
CONFIG = {
    "training": {"rank_eval_every": 0},
    "state": {"restore": False, "snapshot_path": ""},
    "ingest": {"dead_letter_path": ""},
    "http": {"enabled": False},
}


async def evaluate(directory: Path, fmt: str, k: int) -> dict[str, Any]:
    from runtime.config import Config
    from runtime.replay import open_log
    from runtime.system import System

    started = time.perf_counter()
    hits = {"whole_catalog": 0, "generated": 0}
    overlap = candidates = ranked = 0
    async with System(Config.from_dict(CONFIG)) as s:
        generator = s.ranker.candidates
        assert generator is not None, "sequence signals are off: nothing generates candidates"
        whole = generator.params
        generated = dataclasses.replace(whole, whole_catalog_below=0, refresh_s=0.0)
        seq = 0
        for chunk in open_log(directory, fmt, batch_size=1):
            batch = chunk.batch
            if batch is None or not len(batch):
                continue
            if len(batch.users) and bool(batch.rank_eval[0]):
                await s.wait_learned(seq)
                user, item = batch.users[0], batch.items[0]
                answers = {}
                for mode, params in (("whole_catalog", whole), ("generated", generated)):
                    generator.params = params
                    before = generator.candidates
                    answers[mode] = [e["item"] for e in s.ranker.recommend(user, k=k)]
                    hits[mode] += item in answers[mode]
                    if mode == "generated":
                        candidates += generator.candidates - before
                generator.params = whole
                overlap += len(set(answers["whole_catalog"]) & set(answers["generated"]))
                ranked += 1
            seq = await s.submit(batch)
        await s.drain()
        catalog = len(s.catalog)
    return {
        "ranked": ranked,
        "catalog_items": catalog,
        "hr@10_whole_catalog": round(hits["whole_catalog"] / max(ranked, 1), 5),
        "hr@10_generated": round(hits["generated"] / max(ranked, 1), 5),
        "top10_overlap": round(overlap / max(ranked * k, 1), 4),
        "mean_candidates": round(candidates / max(ranked, 1), 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    for spec in args.sets:
        name, fmt = spec.split(":")
        results[name] = await evaluate(args.data / name, fmt, 10)
        print(name, json.dumps(results[name]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sets", nargs="+", default=list(SETS), metavar="DIR:FORMAT")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(run(args))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
