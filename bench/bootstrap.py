"""Ready time of a cluster ranker started late (issue 11, item 7: bootstrap from snapshots).

One cluster (Tansu broker, ``--shards`` shards, one asynchronous trainer, real
processes as ``bench/cluster.py`` starts them) learns the synthetic CTR stream of
``bench/gen_ctr.py``: first ``--early`` events, then the rest up to ``--events``.
After each phase, once everything is learned, a ranker is started with
``cluster.bootstrap`` on (it loads the shards' newest weight snapshots and reads the
weights records after them) and one with it off (it reads the whole weights topic),
one after the other; each is timed from the spawn of its process to its ``ready``
line, which it prints once its weights replica has read the topic as it was at start.
Its ``/v1/stats`` then gives what it loaded (``bootstrap``) and the deltas it applied.

    python bench/gen_ctr.py                    # bench/out/ctr.tsv, 1,000,000 events
    python bench/bootstrap.py --json bench/out/bootstrap.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cluster as bench_cluster
from benchutil import machine
from cluster import CTR, Child, end_offsets, http_json, spawn, start_broker, write_config

from runtime.cluster import publish_log
from runtime.config import Config
from runtime.kafka import shards_answered, wait_until_consumed
from runtime.replay import open_log

BENCH_DIR = Path(__file__).resolve().parent
LEARN_TIMEOUT = 1800.0


def cluster_sections(args: argparse.Namespace, bootstrap: str, workdir: Path) -> dict[str, Any]:
    return {
        "training": {"shards": args.shards, "sync": False, "max_staleness": 1,
                     "batch_size": args.batch_size},
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": "boot", "events_partitions": 1,
                  "items_partitions": 1, "connect_timeout": 30.0},
        "cluster": {"checkpoint_dir": str(workdir / "state"),
                    "snapshot_every": args.snapshot_every},
        "http": {"host": "127.0.0.1", "port": 0},
        "state": {"restore": False},
        "ingest": {"dead_letter_path": ""},
    }  # fmt: skip


def split_stream(events: int, early: int, workdir: Path) -> tuple[Path, Path]:
    """The first ``early`` rows of bench/out/ctr.tsv and the rows after them up to
    ``events``, as two TSV files with the header."""
    if not CTR.exists():
        raise SystemExit(f"{CTR} is missing: run python bench/gen_ctr.py first")
    paths = (workdir / "early.tsv", workdir / "rest.tsv")
    with CTR.open("rb") as src, paths[0].open("wb") as head, paths[1].open("wb") as tail:
        header = src.readline()
        head.write(header)
        tail.write(header)
        for n, line in enumerate(src):
            if n >= events:
                break
            (head if n < early else tail).write(line)
    return paths


async def learned(config: Config) -> None:
    prefix = config.kafka.topic_prefix
    await asyncio.wait_for(
        wait_until_consumed(config, f"{prefix}-trainers", "events", 1), LEARN_TIMEOUT
    )
    await asyncio.wait_for(shards_answered(config), LEARN_TIMEOUT)


async def timed_ranker(index: int, path: Path, workdir: Path) -> dict[str, Any]:
    """Spawn → ready of one ranker, and what its statistics say it started from."""
    argv = [sys.executable, "-m", "runtime", "ranker", "--id", str(index), "--config", str(path),
            "--port", "0"]  # fmt: skip
    started = time.perf_counter()
    child = await spawn(f"ranker-{index}", "ranker", argv, workdir)
    try:
        await child.wait_ready("ranker ready")
        ready_s = time.perf_counter() - started
        stats = await http_json(f"{child.ready_line.split()[3]}/v1/stats")
    finally:
        await child.stop()
    return {
        "ready_s": round(ready_s, 3),
        "bootstrap": stats["bootstrap"],
        "weight_deltas_applied": stats["weight_deltas"],
    }


async def phase(
    name: str, args: argparse.Namespace, paths: dict[str, Path], workdir: Path, index: int
) -> dict[str, Any]:
    config = Config.load(paths["on"])
    result: dict[str, Any] = {
        "phase": name,
        "weights_records": await end_offsets(config, "weights", args.shards),
    }
    for mode in ("on", "off"):
        result[f"bootstrap_{mode}"] = await timed_ranker(index, paths[mode], workdir)
        index += 1
    print(json.dumps(result), flush=True)
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bootstrap-bench-", dir=args.workdir))
    early_log, rest_log = split_stream(args.events, args.early, workdir)
    children: list[Child] = []
    try:
        broker, bootstrap = await start_broker(workdir)
        children.append(broker)
        sections = cluster_sections(args, bootstrap, workdir)
        paths = {"on": write_config(workdir / "on.toml", sections)}
        off = {**sections, "cluster": {**sections["cluster"], "bootstrap": False}}
        paths["off"] = write_config(workdir / "off.toml", off)
        config = Config.load(paths["on"])
        cfg = ["--config", str(paths["on"])]
        py = [sys.executable, "-m", "runtime"]
        roles = [(f"shard-{k}", [*py, "shard", "--id", str(k), *cfg]) for k in range(args.shards)]
        roles.append(("trainer-0", [*py, "trainer", "--id", "0", *cfg]))
        for name, argv in roles:
            children.append(await spawn(name, name.split("-")[0], argv, workdir))
        for child in children[1:]:
            await child.wait_ready(" ready")
        phases: list[dict[str, Any]] = []
        early = await publish_log(config, open_log(early_log, "tsv", args.batch_size))
        await learned(config)
        phases.append(await phase(f"after {early['published']:,} events", args, paths, workdir, 0))
        t0 = time.perf_counter()
        rest = await publish_log(config, open_log(rest_log, "tsv", args.batch_size))
        await learned(config)
        learn_s = time.perf_counter() - t0
        total = early["published"] + rest["published"]
        phases.append(await phase(f"after {total:,} events", args, paths, workdir, 2))
        return {"phases": phases, "events": total, "learn_rest_s": round(learn_s, 1),
                "args": {k: str(v) for k, v in vars(args).items()}, "machine": machine()}  # fmt: skip
    finally:
        for child in reversed(children):
            await child.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--early", type=int, default=1_000, help="events before the first rankers")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512, help="as deploy/cluster.toml")
    parser.add_argument("--snapshot-every", type=int, default=200, help="cluster.snapshot_every")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "bootstrap.json")
    args = parser.parse_args(argv)
    bench_cluster.READY_TIMEOUT = LEARN_TIMEOUT  # a ranker reading 1M events' weights
    result = asyncio.run(run(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["phases"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
