"""Where ``freshrank replay`` spends its time: each pipeline stage timed on its own.

Runs the stages of the replay of ``bench/out/ctr.tsv`` synchronously, in one
process, with no event loop, each over the whole stream before the next:

* ``read``: ``open_log(..., "tsv", B)``: pyarrow CSV blocks to columnar EventBatches;
* ``hash``: ``Featurizer.featurize``: MurmurHash3 of every column value;
* ``train``: ``TrainerActor.train_batch`` (predict, logloss/AUC, gradients, per-coordinate
  sum) and, split out, ``apply_gradients`` (the learner's FTRL step);
* ``auc``: the final exact AUC (one sort over every prediction), done at summary time;

and compares their sum with a real in-process replay through the actors
(``runtime.replay.replay``, the same code ``freshrank replay`` runs): the
difference is queueing/actor overhead.  Also times interpreter start-up and the
imports in a fresh process.  Median of ``--runs``; numba kernels warmed first.

    python bench/breakdown.py --batch-sizes 1024 8192
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchutil import machine, median, wait_quiet

BENCH_DIR = Path(__file__).resolve().parent


def config(batch_size: int) -> Any:
    from runtime.config import Config

    return Config.from_dict(
        {
            "training": {"batch_size": batch_size},
            "state": {"restore": False},
            "ingest": {"dead_letter_path": ""},
            "http": {"port": 0},
        }
    )


def stages(path: Path, batch_size: int) -> dict[str, float]:
    """Each stage over the whole file, in order, without the actors' queues."""
    from runtime.replay import open_log
    from runtime.system import System

    system = System(config(batch_size))
    out: dict[str, float] = {}
    t = time.perf_counter()
    batches = [chunk.batch for chunk in open_log(path, "tsv", batch_size) if chunk.batch]
    out["read"] = time.perf_counter() - t
    for seq, batch in enumerate(batches):
        batch.seq = seq
    t = time.perf_counter()
    features = [system.hasher.featurizer.featurize(b) for b in batches]
    out["hash"] = time.perf_counter() - t
    del batches
    train, learn = asyncio.run(train_and_learn(system, features))
    out["train (predict, metrics, gradients)"] = train
    out["learn (FTRL apply)"] = learn
    t = time.perf_counter()
    summary = system.metrics.summary()
    out["final AUC + summary"] = time.perf_counter() - t
    out["logloss"] = summary["logloss"]
    return out


async def train_and_learn(system: Any, features: list[Any]) -> tuple[float, float]:
    """The trainer's and the learners' own code (``train_batch``, ``LearnerActor.handle``)
    batch by batch, timed apart; the acknowledgements just pile up in their queue."""
    from actors.learner import split_by_shard
    from runtime.messages import GradBatch

    train = learn = 0.0
    shards = len(system.learners)
    for fb in features:
        t0 = time.perf_counter()
        step = system.trainer.train_batch(fb)
        t1 = time.perf_counter()
        for k, (i, g) in enumerate(split_by_shard(step.index, step.grad, shards)):
            await system.learners[k].handle(GradBatch(seq=fb.seq, shard=k, index=i, grad=g))
        learn += time.perf_counter() - t1
        train += t1 - t0
    return train, learn


async def real_replay(path: Path, batch_size: int) -> float:
    from runtime.replay import open_log, replay
    from runtime.system import System

    cfg = config(batch_size)
    async with System(cfg) as system:
        result = await replay(system, open_log(path, "tsv", batch_size))
    return float(result["seconds"])


def fresh_process(code: str) -> float:
    """Wall time of a fresh interpreter running ``code``."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=BENCH_DIR / "out" / "ctr.tsv")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "breakdown.json")
    args = parser.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"{args.data} is missing: run `python bench/gen_ctr.py` first")
    import uvloop

    for b in args.batch_sizes:  # warm the numba cache / page cache
        stages(args.data, b)
    startup = {
        "python -c pass": median([fresh_process("pass") for _ in range(args.runs)]),
        "python: import runtime.cli, runtime.system, pyarrow.csv, uvloop, tqdm": median(
            [
                fresh_process("import runtime.cli, runtime.system, pyarrow.csv, uvloop, tqdm")
                for _ in range(args.runs)
            ]
        ),
    }
    results: dict[str, Any] = {}
    for b in args.batch_sizes:
        runs = []
        for _ in range(args.runs):
            wait_quiet()
            s = stages(args.data, b)
            wait_quiet()
            s["real replay (actors, queues)"] = uvloop.run(real_replay(args.data, b))
            runs.append(s)
        med = {k: round(median([r[k] for r in runs]), 4) for k in runs[0]}
        parts = [k for k in med if k not in ("logloss", "real replay (actors, queues)")]
        med["sum of stages"] = round(sum(med[k] for k in parts), 4)
        med["actor/queue overhead (real - sum)"] = round(
            med["real replay (actors, queues)"] - med["sum of stages"], 4
        )
        results[str(b)] = med
    result = {
        "benchmark": "breakdown",
        "machine": machine(),
        "runs": args.runs,
        "startup_s": {k: round(v, 3) for k, v in startup.items()},
        "seconds_by_batch_size": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    names = list(next(iter(results.values())))
    print(f"seconds, median of {args.runs} runs")
    print(f"{'stage':42s}" + "".join(f" {'B=' + b:>9s}" for b in results))
    for name in names:
        print(f"{name:42s}" + "".join(f" {results[b][name]:9.3f}" for b in results))
    for name, value in startup.items():
        print(f"fresh process, {name}: {value:.3f} s")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
