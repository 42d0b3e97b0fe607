"""What the factorization terms cost: learn throughput and recommend latency, with and without.

Three model settings, measured in the same run on the same data:

* ``linear``: ``model.factors = 0``, ``model.history = 0`` (the model before factors);
* ``factors``: ``model.factors = 8``, no history features;
* ``default``: the shipped defaults (8 factors, 10 recent items as features, h.item x item).

1. Learn throughput, in-process (``System.ingest`` / replay, validated, hashed, learned):
   a. the interaction stream of ``bench/latency.py`` (10,000 items, 1,000 users, 50,000
      implicit positives, 4 sampled negatives each: 250,000 training rows);
   b. the synthetic CTR stream ``bench/out/ctr.tsv`` (``python bench/gen_ctr.py``), its first
      ``--ctr-rows`` rows through the replay fast path (no items, so no history features).
   Target: with factors on, at least half the linear model's throughput.
2. Recommend latency in-process for the 10,000-item catalog (``System.recommend(user, k=10)``,
   the protocol of ``bench/latency.py``).  Target: p99 <= 2 ms with factors on.  Also
   ``--interleaved`` rounds of "learn 20 events, then one recommend": after learning, the
   per-item factor sums are stale and the request rebuilds them.

    python bench/gen_ctr.py && python bench/factors.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchutil import machine, median, wait_quiet
from latency import make_data, summarise, timed_calls

BENCH_DIR = Path(__file__).resolve().parent
BASE = {
    "state": {"restore": False, "snapshot_path": ""},
    "ingest": {"dead_letter_path": ""},
    "http": {"enabled": False},
}
MODELS: dict[str, dict[str, Any]] = {
    "linear": {"factors": 0, "history": 0},
    "factors": {"factors": 8, "history": 0},
    "default": {},
}


def config(model: dict[str, Any], batch_size: int | None = None) -> Any:
    from runtime.config import Config

    sections: dict[str, Any] = {**BASE, "model": model}
    if batch_size:
        sections["training"] = {"batch_size": batch_size}
    return Config.from_dict(sections)


async def interactions(
    model: dict[str, Any], data: Any, args: argparse.Namespace
) -> dict[str, Any]:
    from runtime.system import System

    items, events, users = data
    async with System(config(model)) as s:
        for lo in range(0, len(items), 2000):
            await s.ingest(items[lo : lo + 2000])
        wait_quiet()
        started = time.perf_counter()
        for lo in range(0, len(events), 5000):
            await s.ingest(events[lo : lo + 5000])
        learn_s = time.perf_counter() - started

        async def call(user: str) -> Any:
            return await s.recommend(user, k=10)

        samples = await timed_calls(call, users, args.warmup, args.requests, args.seed)
        interleaved = []  # each request right after a learned batch: item sums are stale
        for i in range(args.interleaved):
            await s.ingest(events[(i * 20) % len(events) :][:20])
            started = time.perf_counter_ns()
            await s.recommend(users[i % len(users)], k=10)
            interleaved.append(time.perf_counter_ns() - started)
        stats = s.statistics()
        return {
            "learn_s": round(learn_s, 3),
            "events_per_s": round(len(events) / learn_s, 1),
            "rows": stats["trainer"]["rows"],
            "recommend": summarise(samples),
            "recommend_after_learning": summarise(interleaved),
            "metrics": stats["metrics"],
        }


async def ctr(model: dict[str, Any], path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from runtime.replay import open_log, replay
    from runtime.system import System

    cfg = config(model, args.batch_size)
    async with System(cfg) as s:
        chunks = open_log(path, "tsv", args.batch_size)
        wait_quiet()
        started = time.perf_counter()
        report = await replay(s, _take(chunks, args.ctr_rows))
        seconds = time.perf_counter() - started
        return {
            "events": report["events"],
            "seconds": round(seconds, 3),
            "events_per_s": round(report["events"] / seconds, 1),
            "logloss": report.get("logloss"),
        }


def _take(chunks: Any, rows: int) -> Any:
    taken = 0
    for chunk in chunks:
        if taken >= rows:
            return
        taken += len(chunk.batch) if chunk.batch is not None else 0
        yield chunk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--interleaved", type=int, default=300, help="learn-then-recommend rounds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ctr", type=Path, default=BENCH_DIR / "out" / "ctr.tsv")
    parser.add_argument("--ctr-rows", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "factors.json")
    args = parser.parse_args(argv)
    import uvloop

    data = make_data(10_000, 1_000, 50_000, args.seed)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {"inter": [], "ctr": []} for m in MODELS}
    for r in range(args.runs):
        for name, model in MODELS.items():  # interleaved, so drift hits every setting alike
            res = uvloop.run(interactions(model, data, args))
            runs[name]["inter"].append(res)
            line = (
                f"run {r + 1} {name:8s} interactions {res['events_per_s']:9.0f} ev/s  "
                f"recommend p50 {res['recommend']['p50_ms']:.3f} p99 {res['recommend']['p99_ms']:.3f} ms"
            )
            if args.ctr.exists() and name != "default":
                c = uvloop.run(ctr(model, args.ctr, args))
                runs[name]["ctr"].append(c)
                line += f"  ctr {c['events_per_s']:9.0f} ev/s"
            print(line, flush=True)
    summary: dict[str, Any] = {}
    for name in MODELS:
        inter = runs[name]["inter"]
        summary[name] = {
            "interactions_events_per_s": median([x["events_per_s"] for x in inter]),
            "recommend_p50_ms": median([x["recommend"]["p50_ms"] for x in inter]),
            "recommend_p99_ms": median([x["recommend"]["p99_ms"] for x in inter]),
            "after_learning_p50_ms": median(
                [x["recommend_after_learning"]["p50_ms"] for x in inter]
            ),
            "after_learning_p99_ms": median(
                [x["recommend_after_learning"]["p99_ms"] for x in inter]
            ),
            "hr@10": inter[0]["metrics"].get("hr@10"),
        }
        if runs[name]["ctr"]:
            summary[name]["ctr_events_per_s"] = median(
                [x["events_per_s"] for x in runs[name]["ctr"]]
            )
    base = summary["linear"]
    print(f"\nmedians of {args.runs} runs ({machine()['cpu_model']})")
    print(f"{'model':8s} {'interactions ev/s':>18s} {'ratio':>6s} {'ctr ev/s':>10s} {'ratio':>6s} "
          f"{'p50 ms':>7s} {'p99 ms':>7s} {'after-learning p50/p99 ms':>26s} {'hr@10':>6s}")  # fmt: skip
    for name, m in summary.items():
        ratio = m["interactions_events_per_s"] / base["interactions_events_per_s"]
        ctr_s = m.get("ctr_events_per_s")
        ctr_ratio = f"{ctr_s / base['ctr_events_per_s']:6.2f}" if ctr_s else "     -"
        print(
            f"{name:8s} {m['interactions_events_per_s']:18.0f} {ratio:6.2f} "
            f"{(ctr_s or 0):10.0f} {ctr_ratio} {m['recommend_p50_ms']:7.3f} "
            f"{m['recommend_p99_ms']:7.3f} {m['after_learning_p50_ms']:12.3f} "
            f"{m['after_learning_p99_ms']:13.3f} {m['hr@10'] or 0:6.3f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"machine": machine(), "summary": summary, "runs": runs}, indent=2) + "\n"
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
