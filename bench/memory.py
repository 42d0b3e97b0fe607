"""Resident memory of the model state: a System with 2^22 slots, 1 shard vs 4 shards.

In freshrank ``model.bits`` sizes the *whole* index space and shards split it
(shard k owns the slots i with i % shards == k): the ParameterStore holds FTRL's
``z`` and ``n`` (and, since commit cdc2d78, the weight replica ``w``) as float64
for all 2^bits slots (the shards are strided views of them in one process), and
the trainer's GradientAggregator holds one int32 scratch slot per coordinate:
8 + 8 + 8 + 4 = 28 bytes per slot.  The script lists whatever per-slot arrays the
store and the aggregator hold, so the expected figure follows the code.
"2^22 weights per shard" is therefore ``bits=22, shards=1`` or ``bits=24, shards=4``;
``bits=22, shards=4`` shows that sharding alone adds nothing in one process.

Each configuration runs in a fresh child process, which reports VmRSS from
``/proc/self/status`` at each stage:

1. ``baseline``: interpreter with every module imported and the numba kernels
   loaded (a throw-away 16-slot System replays a few events first);
2. ``started``: the System built and started (numpy's zeroed arrays are not
   resident until written);
3. ``touched``: after writing every slot of every store array (values kept);
4. ``replayed``: after replaying the synthetic CTR stream (``bench/out/ctr.tsv``
   from gen_ctr.py, when present) through it, as ``freshrank replay`` does: what
   a real run adds on top of the weights (metric buffers, allocator pools);
5. ``trimmed``: the same after Arrow's ``release_unused()`` and glibc's
   ``malloc_trim(0)`` (what of that growth was free memory the allocators kept,
   rather than live objects).

``(touched - baseline) / 2^bits`` is the bytes per slot (weight).

    python bench/memory.py
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchutil import machine, median

BENCH_DIR = Path(__file__).resolve().parent
MIB = 1024 * 1024


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM, ...)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def arrays_of(obj: Any) -> dict[str, Any]:
    """The numpy arrays an object holds as attributes (the per-slot state)."""
    import numpy as np

    return {k: v for k, v in vars(obj).items() if isinstance(v, np.ndarray)}


def malloc_trim() -> bool:
    """Give glibc's free heap memory back to the OS (to tell retained-free from live memory)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def rss_mib() -> float:
    gc.collect()
    return status_kib("VmRSS") / 1024


async def child(bits: int, shards: int, data: Path | None, batch_size: int) -> dict[str, Any]:
    import numpy as np
    import pyarrow
    import pyarrow.csv

    from runtime.config import Config
    from runtime.replay import open_log, replay
    from runtime.system import System

    def config(b: int) -> Config:
        return Config.from_dict(
            {
                "model": {"bits": b},
                "training": {"shards": shards, "batch_size": batch_size},
                "state": {"restore": False},
                "ingest": {"dead_letter_path": ""},
                "http": {"port": 0},
            }
        )

    # Load every numba kernel (from its cache) and pyarrow's reader with a tiny model first.
    async with System(config(4)) as tiny:
        await tiny.ingest([{"item": "i1", "item_features": {"genre": ["a"], "price": 3.0}}])
        await tiny.ingest([{"user": "u1", "item": "i1", "user_features": {"age": "25-34"}}])
        tiny.ranker.recommend("u1", 10)
        if data is not None:
            head = Path("/tmp") / f"freshrank-mem-head-{bits}-{shards}.tsv"
            with data.open() as src:
                head.write_text("".join(next(src) for _ in range(101)))
            await replay(tiny, open_log(head, "tsv", batch_size))
            head.unlink()
    del tiny
    stages: dict[str, float] = {"baseline": rss_mib()}
    system = System(config(bits))
    await system.start()
    stages["started"] = rss_mib()
    store = system.store
    for array in arrays_of(store).values():
        np.add(array, 0, out=array)  # a write to every page; values unchanged
    stages["touched"] = rss_mib()
    replayed: dict[str, Any] = {}
    if data is not None:
        started = time.perf_counter()
        result = await replay(system, open_log(data, "tsv", batch_size))
        replayed = {"events": result["events"], "seconds": round(time.perf_counter() - started, 2)}
        stages["replayed"] = rss_mib()
        auc = system.metrics.auc
        replayed["auc_buffer_mib"] = round(
            sum(getattr(auc, a).nbytes for a in ("_scores", "_labels") if hasattr(auc, a)) / MIB,
            1,
        )
        replayed["touched_slots"] = int(np.count_nonzero(store.n))
        replayed["rss_growth_mib"] = round(stages["replayed"] - stages["touched"], 1)
        pool = pyarrow.default_memory_pool()
        replayed["arrow_pool"] = pool.backend_name
        replayed["arrow_live_mib"] = round(pyarrow.total_allocated_bytes() / MIB, 1)
        replayed["arrow_peak_mib"] = round(pool.max_memory() / MIB, 1)
        pool.release_unused()
        if malloc_trim():
            stages["trimmed"] = rss_mib()
            replayed["rss_growth_after_release_mib"] = round(
                stages["trimmed"] - stages["touched"], 1
            )
    slots = store.w.size
    arrays = {f"store.{k}": v.nbytes for k, v in arrays_of(store).items()}
    arrays |= {f"aggregator.{k}": v.nbytes for k, v in arrays_of(system.trainer.aggregate).items()}
    state_mib = (stages["touched"] - stages["baseline"]) * MIB
    out = {
        "bits": bits,
        "shards": shards,
        "slots": slots,
        "slots_per_shard": [int(learner.w.shape[0]) for learner in system.learners],
        "rss_mib": {k: round(v, 1) for k, v in stages.items()},
        "peak_rss_mib": round(status_kib("VmHWM") / 1024, 1),
        "state_mib": round(state_mib / MIB, 1),
        "bytes_per_slot": round(state_mib / slots, 2),
        "array_bytes_per_slot": {k: v / slots for k, v in arrays.items()},
        "replay": replayed,
    }
    await system.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="+", default=["22x1", "22x4", "24x4"], help="BITSxSHARDS"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=BENCH_DIR / "out" / "ctr.tsv")
    parser.add_argument("--no-replay", action="store_true", help="skip the replay stage")
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "memory.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data = None if args.no_replay or not args.data.exists() else args.data

    if args.child:
        bits, shards = (int(v) for v in args.child.split("x"))
        print(json.dumps(asyncio.run(child(bits, shards, data, args.batch_size))))
        return 0

    if data is None:
        print("(no replay stage: run bench/gen_ctr.py for bench/out/ctr.tsv)")
    rows = []
    for spec in args.configs:
        runs = []
        for r in range(args.runs):
            cmd = [sys.executable, __file__, "--child", spec, "--batch-size", str(args.batch_size)]
            cmd += ["--data", str(args.data)] + (["--no-replay"] if data is None else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(f"child {spec} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(res)
            print(
                f"run {r + 1}/{args.runs} bits={res['bits']} shards={res['shards']}: "
                f"RSS {res['rss_mib']}  -> {res['bytes_per_slot']} B/slot",
                flush=True,
            )
        stages = runs[0]["rss_mib"].keys()
        rows.append(
            {
                **{k: runs[0][k] for k in ("bits", "shards", "slots", "slots_per_shard")},
                "rss_mib_median": {s: median([r["rss_mib"][s] for r in runs]) for s in stages},
                "state_mib_median": median([r["state_mib"] for r in runs]),
                "bytes_per_slot_median": median([r["bytes_per_slot"] for r in runs]),
                "peak_rss_mib_median": median([r["peak_rss_mib"] for r in runs]),
                "array_bytes_per_slot": runs[0]["array_bytes_per_slot"],
                "replay": runs[0]["replay"],
                "runs": runs,
            }
        )
    result = {"benchmark": "memory", "machine": machine(), "runs": args.runs, "results": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"median of {args.runs} runs; RSS in MiB")
    stage_names = list(rows[0]["rss_mib_median"])
    print(
        f"{'bits':>4s} {'shards':>6s} {'slots/shard':>11s} "
        + " ".join(f"{s:>9s}" for s in stage_names)
        + f" {'state MiB':>9s} {'B/slot':>7s} {'peak':>7s}"
    )
    for row in rows:
        print(
            f"{row['bits']:4d} {row['shards']:6d} {row['slots_per_shard'][0]:11,d} "
            + " ".join(f"{row['rss_mib_median'][s]:9.1f}" for s in stage_names)
            + f" {row['state_mib_median']:9.1f} {row['bytes_per_slot_median']:7.2f}"
            + f" {row['peak_rss_mib_median']:7.1f}"
        )
    parts = rows[0]["array_bytes_per_slot"]
    print(
        "expected from the arrays: "
        + " + ".join(f"{k} {v:g}" for k, v in parts.items())
        + f" = {sum(parts.values()):g} B/slot"
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
