"""Load test of the daemon over HTTP: sustained load, then past saturation (issue 5).

The daemon is the real ``freshrank run`` in its own process, configured from a TOML
file in a temporary directory (HTTP on a port the OS picks, snapshot and dead letters
in that directory); this process is the client (aiohttp, ``--concurrency``
connections, uvloop when available).  Request bodies are encoded before the clock
starts, so the client spends its time sending.

Phases (times are the defaults; the whole run takes about 45-55 s):

0. warm-up: ``--items`` item upserts (the recommend catalog).
1. calibration (``--calibrate`` s): closed loop, clients posting batches of
   ``--batch-size`` events with ``wait=true`` back to back (as many as fill half of
   ``--max-pending-events``, at most ``--concurrency``): the learned events/s at
   saturation, its capacity ``C``.
2. sustained (``--duration`` s): open loop at ``--load`` x C ingested events/s
   (``wait=true``: answered once learned), plus recommend requests so that a share
   ``--mix`` of all requests is ingest.  Throughput and latency p50/p99/p99.9.
3. overload (``--duration`` s): open loop at ``--overload`` x C events/s with
   ``wait=false`` (producers that outrun the learner); recommend requests at the
   sustained phase's rate (the overload is on ingest: recommend has no bound).  Counts the 429s
   and whether each had a Retry-After, samples /v1/healthz and the daemon's RSS
   every second; then waits for the drain and checks that the events the server
   accepted (sum of ``accepted`` over every 200) equal the events it learned
   (``/v1/stats`` trainer.events), and that SIGTERM stops it cleanly.

The daemon runs the embedded default config except for those paths and the
admission bounds, which come from ``--max-pending-events`` (10,000 here, 100,000 by
default: with 100-event requests the pipeline's own queues hold about 13,000 events,
so the default bound is reached only through ``--max-inflight-requests``) and
``--max-inflight-requests`` (256, the default).  Item upserts update the catalog and
are not counted in ``trainer.events``; they are checked against ``catalog_items``.

Latency is measured from a request's *scheduled* send time in the open-loop phases
(so waiting for a free connection counts: no coordinated omission), from its actual
send time in calibration.  ``send lag`` is how late the client sent (its own limit).

    python bench/loadtest.py                      # ~50 s; --duration, --concurrency, ...
    python bench/loadtest.py --batch-size 20 --mix 0.2 --overload 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import msgpack
import numpy as np
from benchutil import machine, percentile, venv_tool

BENCH_DIR = Path(__file__).resolve().parent
READY = "freshrank ready http://"
GENRES = [f"g{i:02d}" for i in range(20)]
AGES = ["<18", "18-24", "25-34", "35-44", "45-54", "55+"]
DEVICES = ["mobile", "desktop", "tv"]
REQUEST_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """Pre-encoded request bodies and the users to recommend for."""

    item_bodies: list[bytes]
    event_bodies: list[bytes]
    users: list[str]
    content_type: str = "application/json"  # of the event bodies


def make_traffic(args: argparse.Namespace) -> Traffic:
    """Item upserts (1-3 genres, a price), then labelled clicks on Zipf-popular items."""
    rng = np.random.default_rng(args.seed)
    items = [
        {
            "item": f"i{i}",
            "item_features": {
                "genre": sorted(str(g) for g in rng.choice(GENRES, int(rng.integers(1, 4)), False)),
                "price": round(float(rng.uniform(1, 50)), 2),
            },
        }
        for i in range(args.items)
    ]
    item_bodies = [json.dumps(items[lo : lo + 1000]).encode() for lo in range(0, len(items), 1000)]
    users = [f"u{u}" for u in range(args.users)]
    ages = {user: AGES[int(rng.integers(len(AGES)))] for user in users}
    popular = np.minimum(rng.zipf(1.3, args.bodies * args.batch_size), args.items) - 1
    event_bodies = []
    for body in range(args.bodies):
        events = []
        for row in range(args.batch_size):
            user = users[int(rng.integers(len(users)))]
            events.append(
                {
                    "user": user,
                    "item": f"i{popular[body * args.batch_size + row]}",
                    "label": int(rng.random() < 0.3),
                    "user_features": {"age": ages[user]},
                    "context": {"device": DEVICES[int(rng.integers(len(DEVICES)))]},
                }
            )
        event_bodies.append(encode_body(events, args.body))
    return Traffic(item_bodies, event_bodies, users, BODY_TYPES[args.body])


BODY_TYPES = {"json": "application/json", "msgpack": "application/msgpack"}


def encode_body(events: list[dict[str, Any]], body: str) -> bytes:
    return msgpack.packb(events) if body == "msgpack" else json.dumps(events).encode()


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """``freshrank run --config <tmp>/loadtest.toml`` as a subprocess."""

    def __init__(self, state: Path, args: argparse.Namespace) -> None:
        self.state = state
        self.config_path = state / "loadtest.toml"
        self.config_path.write_text(daemon_config(state, args), encoding="utf-8")
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self.stdout: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._log: IO[bytes] | None = None

    async def start(self, timeout_s: float = 120.0) -> None:
        self._log = (self.state / "daemon.log").open("wb")
        self.process = await asyncio.create_subprocess_exec(
            venv_tool("freshrank"),
            "run",
            "--config",
            str(self.config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
        )
        assert self.process.stdout is not None
        line = (await asyncio.wait_for(self.process.stdout.readline(), timeout_s)).decode()
        if not line.startswith(READY):
            raise RuntimeError(f"daemon did not start: {line!r}; see {self.state}/daemon.log")
        self.url = line.split()[2]
        self._reader = asyncio.create_task(self._read_stdout())

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            self.stdout.append(line.decode().rstrip())

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def rss_mib(self) -> float | None:
        if not self.alive:
            return None
        assert self.process is not None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text(encoding="ascii")
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return None

    async def stop(self, timeout_s: float = 120.0) -> int | None:
        """SIGTERM (drain, snapshot, exit 0); killed when it does not stop in time."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            await self._reader
        if self._log is not None:
            self._log.close()
        return self.process.returncode


def daemon_config(state: Path, args: argparse.Namespace) -> str:
    return f"""\
[http]
host = "127.0.0.1"
port = 0

[state]
snapshot_path = "{state / "snapshot.msgpack"}"
restore = false

[ingest]
dead_letter_path = "{state / "dead_letters.jsonl"}"
max_events_per_request = {max(args.batch_size, 1000)}
max_pending_events = {args.max_pending_events}
max_inflight_requests = {args.max_inflight_requests}
retry_after_s = 1
"""


# --------------------------------------------------------------------------- recording


@dataclass
class Sample:
    kind: str  # "ingest" | "recommend"
    status: int  # 0: no response (connection error or timeout)
    latency_s: float
    accepted: int = 0
    retry_after: bool = False
    error: str = ""


@dataclass
class Phase:
    name: str
    wait: bool = True  # ingest with ?wait=true (answered once learned) or wait=false
    samples: list[Sample] = field(default_factory=list)
    lags_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    offered: dict[str, float] = field(default_factory=dict)  # requests/s by kind

    @property
    def accepted(self) -> int:
        return sum(s.accepted for s in self.samples)

    def offered_text(self) -> str:
        rates = ", ".join(f"{kind} {rate:,.0f}/s" for kind, rate in self.offered.items())
        return f"{rates} (ingest wait={str(self.wait).lower()})"


class Client:
    """Sends the two request kinds and records one Sample each."""

    def __init__(self, session: aiohttp.ClientSession, traffic: Traffic, seed: int) -> None:
        self.session = session
        self.traffic = traffic
        self.rng = random.Random(seed)

    async def ingest(self, phase: Phase, wait: bool, since: float | None = None) -> None:
        body = self.rng.choice(self.traffic.event_bodies)
        query = "" if wait else "?wait=false"
        started = since if since is not None else time.perf_counter()
        sample = Sample("ingest", 0, 0.0)
        try:
            async with self.session.post(
                "/v1/events" + query, data=body, headers={"Content-Type": self.traffic.content_type}
            ) as resp:
                payload = await resp.read()
                sample.status = resp.status
                sample.retry_after = "Retry-After" in resp.headers
                if resp.status == 200:
                    sample.accepted = int(json.loads(payload)["accepted"])
        except (aiohttp.ClientError, TimeoutError) as error:
            sample.error = type(error).__name__
        sample.latency_s = time.perf_counter() - started
        phase.samples.append(sample)

    async def recommend(self, phase: Phase, since: float | None = None) -> None:
        user = self.rng.choice(self.traffic.users)
        started = since if since is not None else time.perf_counter()
        sample = Sample("recommend", 0, 0.0)
        try:
            async with self.session.get("/v1/recommend", params={"user": user, "k": "10"}) as resp:
                await resp.read()
                sample.status = resp.status
                sample.retry_after = "Retry-After" in resp.headers
        except (aiohttp.ClientError, TimeoutError) as error:
            sample.error = type(error).__name__
        sample.latency_s = time.perf_counter() - started
        phase.samples.append(sample)


# --------------------------------------------------------------------------- load shapes


async def closed_loop(
    workers: int, duration_s: float, call: Callable[[], Awaitable[None]]
) -> float:
    """``workers`` loops calling back to back until the deadline; returns the elapsed time."""
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await call()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - started


async def open_loop(
    rates: dict[str, float],
    duration_s: float,
    max_requests: int,
    fire: Callable[[str, float], Coroutine[Any, Any, None]],
    phase: Phase,
) -> None:
    """Requests of each kind at fixed rates, whatever the answers: arrivals never wait."""
    total = sum(rates.values())
    kinds = list(rates)
    weights = [rates[k] / total for k in kinds]
    rng = random.Random(0)
    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    sent = 0
    while sent < max_requests:
        scheduled = started + sent / total
        if scheduled - started >= duration_s:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        phase.lags_s.append(max(0.0, -delay))
        kind = rng.choices(kinds, weights)[0]
        task = asyncio.create_task(fire(kind, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    await asyncio.gather(*tasks)
    phase.elapsed_s = time.perf_counter() - started


@dataclass
class Watch:
    """/v1/healthz and the daemon's RSS, once a second while a phase runs."""

    health: list[tuple[int, float]] = field(default_factory=list)  # (status, latency ms)
    rss_mib: list[float] = field(default_factory=list)
    alive: bool = True

    def summary(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for status, _ in self.health:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        return {
            "healthz_statuses": statuses,
            "healthz_latency_ms": latency_ms([ms / 1e3 for _, ms in self.health]),
            "daemon_alive": self.alive,
        }


async def watch(session: aiohttp.ClientSession, daemon: Daemon, until: asyncio.Event) -> Watch:
    seen = Watch()
    while not until.is_set():
        started = time.perf_counter()
        status = 0
        try:
            async with session.get("/v1/healthz") as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            pass
        seen.health.append((status, round((time.perf_counter() - started) * 1e3, 2)))
        rss = daemon.rss_mib()
        if rss is not None:
            seen.rss_mib.append(rss)
        seen.alive = seen.alive and daemon.alive
        try:
            await asyncio.wait_for(until.wait(), 1.0)
        except TimeoutError:
            pass
    return seen


async def stats(session: aiohttp.ClientSession) -> dict[str, Any]:
    async with session.get("/v1/stats") as resp:
        result: dict[str, Any] = await resp.json()
        return result


async def wait_drained(
    session: aiohttp.ClientSession, timeout_s: float
) -> tuple[dict[str, Any], float]:
    """Poll /v1/stats until everything queued is learned; returns the stats and the wait."""
    started = time.perf_counter()
    while True:
        current = await stats(session)
        learned = current["trainer"]["learned_seq"] >= current["seq"]
        if learned and current["admission"]["pending_events"] == 0:
            return current, time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"not drained after {timeout_s} s: {current['admission']}")
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- summaries


def latency_ms(values: list[float]) -> dict[str, float | None]:
    ms = sorted(v * 1e3 for v in values)
    if not ms:
        return {"p50": None, "p99": None, "p999": None, "max": None}
    return {
        "p50": round(percentile(ms, 50), 2),
        "p99": round(percentile(ms, 99), 2),
        "p999": round(percentile(ms, 99.9), 2),
        "max": round(ms[-1], 2),
    }


def summarise(phase: Phase) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seconds": round(phase.elapsed_s, 2),
        "offered_per_s": {k: round(v, 1) for k, v in phase.offered.items()},
        "send_lag_ms": latency_ms(phase.lags_s),
    }
    for kind in ("ingest", "recommend"):
        samples = [s for s in phase.samples if s.kind == kind]
        if not samples:
            continue
        ok = [s for s in samples if s.status == 200]
        shed = [s for s in samples if s.status in (429, 503)]
        statuses: dict[str, int] = {}
        for s in samples:
            key = str(s.status) if s.status else f"error:{s.error}"
            statuses[key] = statuses.get(key, 0) + 1
        out[kind] = {
            "requests": len(samples),
            "statuses": statuses,
            "ok_per_s": round(len(ok) / phase.elapsed_s, 1),
            "latency_ok_ms": latency_ms([s.latency_s for s in ok]),
            "shed": len(shed),
            "shed_with_retry_after": sum(s.retry_after for s in shed),
            "latency_shed_ms": latency_ms([s.latency_s for s in shed]),
        }
        if kind == "ingest":
            out[kind]["accepted_events"] = sum(s.accepted for s in ok)
            out[kind]["accepted_events_per_s"] = round(
                out[kind]["accepted_events"] / phase.elapsed_s, 1
            )
    return out


def print_table(result: dict[str, Any]) -> None:
    print(f"\ncapacity (calibration, learned): {result['capacity_events_per_s']:,.0f} events/s")
    header = (
        f"{'phase':<10}{'kind':<10}{'offered/s':>10}{'req':>8}{'ok/s':>8}{'events/s':>10}"
        f"{'shed':>7}{'+R-A':>6}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
    )
    print(header)
    print("-" * len(header))
    for name in ("sustained", "overload"):
        phase = result["phases"][name]
        for kind in ("ingest", "recommend"):
            if kind not in phase:
                continue
            row = phase[kind]
            lat = row["latency_ok_ms"]
            offered = phase["offered_per_s"].get(kind, 0.0)
            events = row.get("accepted_events_per_s", "")
            print(
                f"{name:<10}{kind:<10}{offered:>10,.0f}{row['requests']:>8}{row['ok_per_s']:>8,.0f}"
                f"{events:>10}{row['shed']:>7}{row['shed_with_retry_after']:>6}"
                f"{_fmt(lat['p50']):>9}{_fmt(lat['p99']):>9}{_fmt(lat['p999']):>10}"
            )
    end = result["end"]
    print(
        f"\naccepted {end['accepted_events']:,} == learned {end['learned_events']:,}: "
        f"{end['accepted_equals_learned']} (drained in {end['drain_s']} s)"
    )
    over = result["overload_watch"]
    print(
        f"overload: healthz statuses {over['healthz_statuses']}, "
        f"p99 {over['healthz_latency_ms']['p99']} ms; daemon alive {over['daemon_alive']}"
    )
    admission = end["admission"]
    print(
        f"admission: rejected_overload {admission['rejected_overload']} "
        f"{admission['rejected_overload_by_reason']}, admitted_events "
        f"{admission['admitted_events']:,}, pending at the end {admission['pending_events']}"
    )
    print(f"item upserts accepted {end['item_upserts_accepted']}, catalog {end['catalog_items']}")
    print(
        f"daemon RSS MiB: after warm-up {result['rss_mib']['after_warmup']}, "
        f"max {result['rss_mib']['max']}, end {result['rss_mib']['end']}; "
        f"SIGTERM exit code {end['exit_code']}"
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# --------------------------------------------------------------------------- the run


async def run(args: argparse.Namespace) -> dict[str, Any]:
    traffic = make_traffic(args)
    with tempfile.TemporaryDirectory(prefix="freshrank-loadtest-") as tmp:
        daemon = Daemon(Path(tmp), args)
        started = time.perf_counter()
        await daemon.start()
        progress(f"daemon ready at {daemon.url} in {time.perf_counter() - started:.1f} s")
        try:
            return await drive(daemon, traffic, args)
        finally:
            await daemon.stop()


async def drive(daemon: Daemon, traffic: Traffic, args: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    load = aiohttp.ClientSession(
        daemon.url, connector=aiohttp.TCPConnector(limit=args.concurrency), timeout=timeout
    )
    # health and stats on their own connections: a saturated load pool must not delay them
    probe = aiohttp.ClientSession(daemon.url, timeout=timeout)
    async with load, probe:
        client = Client(load, traffic, args.seed)
        items = await warm_up(load, traffic)
        rss_after_warmup = daemon.rss_mib()
        progress(f"catalog of {items} items; calibrating for {args.calibrate} s")
        calibration = Phase("calibration")
        # enough requests in flight to keep the learner busy, not so many that they get 429s
        workers = max(1, min(args.concurrency, args.max_pending_events // args.batch_size // 2))
        calibration.elapsed_s = await closed_loop(
            workers, args.calibrate, lambda: client.ingest(calibration, wait=True)
        )
        capacity = calibration.accepted / calibration.elapsed_s
        phases = {
            "sustained": Phase("sustained", wait=True),
            "overload": Phase("overload", wait=False),
        }
        watches = {}
        for (name, phase), factor in zip(phases.items(), (args.load, args.overload), strict=True):
            phase.offered = offered_rates(factor * capacity, args.load * capacity, args)
            progress(f"{name}: {phase.offered_text()} for {args.duration} s")
            watches[name] = await run_phase(phase, client, probe, daemon, args)
        progress("waiting for the drain")
        final, drain_s = await wait_drained(probe, args.drain_timeout)
        async with probe.get("/v1/healthz") as resp:
            health_after = resp.status
        rss_end = daemon.rss_mib()
    exit_code = await daemon.stop()
    return {
        "bench": "loadtest",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "daemon_config": daemon.config_path.read_text(encoding="utf-8"),
        "capacity_events_per_s": round(capacity, 1),
        "calibration": summarise(calibration),
        "phases": {name: summarise(phase) for name, phase in phases.items()},
        "overload_watch": watches["overload"].summary(),
        "rss_mib": {
            "after_warmup": rss_after_warmup,
            "max": max([r for w in watches.values() for r in w.rss_mib] or [0.0]),
            "end": rss_end,
        },
        "end": {
            "item_upserts_accepted": items,
            "catalog_items": final["catalog_items"],
            **accounting([calibration, *phases.values()], final),
            "drain_s": round(drain_s, 2),
            "healthz_after": health_after,
            "admission": final["admission"],
            "dead_letters": final["dead_letters"]["records"],
            "exit_code": exit_code,
            "stopped_cleanly": "freshrank stopped cleanly" in daemon.stdout,
        },
    }


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def warm_up(session: aiohttp.ClientSession, traffic: Traffic) -> int:
    """The item upserts (the recommend catalog); returns how many were accepted."""
    accepted = 0
    for body in traffic.item_bodies:
        async with session.post("/v1/events", data=body) as resp:
            accepted += int((await resp.json())["accepted"])
    return accepted


def offered_rates(
    events_per_s: float, sustained_events_per_s: float, args: argparse.Namespace
) -> dict[str, float]:
    """Requests/s of each kind: ingest carries ``events_per_s``; recommend is the share
    ``1 - mix`` of the sustained phase's requests in both phases, so the overload is
    on ingest alone (recommend has no admission bound to shed it)."""
    rates = {"ingest": events_per_s / args.batch_size}
    if args.mix < 1:
        rates["recommend"] = sustained_events_per_s / args.batch_size * (1 - args.mix) / args.mix
    return rates


async def run_phase(
    phase: Phase,
    client: Client,
    probe: aiohttp.ClientSession,
    daemon: Daemon,
    args: argparse.Namespace,
) -> Watch:
    async def fire(kind: str, scheduled: float) -> None:
        if kind == "ingest":
            await client.ingest(phase, phase.wait, since=scheduled)
        else:
            await client.recommend(phase, since=scheduled)

    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(watch(probe, daemon, stop_watch))
    try:
        await open_loop(phase.offered, args.duration, args.max_requests, fire, phase)
    finally:
        stop_watch.set()
        seen = await watcher
    return seen


def accounting(phases: list[Phase], final: dict[str, Any]) -> dict[str, Any]:
    """Interaction events accepted (200s) against those the trainer learned.

    Item upserts only update the catalog (``trainer.events`` does not count them), so
    they are compared with ``catalog_items`` instead.
    """
    accepted = sum(phase.accepted for phase in phases)
    learned = int(final["trainer"]["events"])
    return {
        "accepted_events": accepted,
        "learned_events": learned,
        "accepted_equals_learned": accepted == learned,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=15.0, help="seconds per load phase (15)")
    p.add_argument("--calibrate", type=float, default=5.0, help="seconds of calibration (5)")
    p.add_argument("--concurrency", type=int, default=128, help="client connections (128)")
    p.add_argument("--batch-size", type=int, default=100, help="events per ingest request (100)")
    p.add_argument(
        "--body", choices=sorted(BODY_TYPES), default="json", help="ingest body encoding (json)"
    )
    p.add_argument("--mix", type=float, default=0.5, help="share of requests that ingest (0.5)")
    p.add_argument("--load", type=float, default=0.5, help="sustained: x capacity (0.5)")
    p.add_argument("--overload", type=float, default=4.0, help="overload: x capacity (4)")
    p.add_argument("--max-requests", type=int, default=100_000, help="per phase (100000)")
    p.add_argument("--max-pending-events", type=int, default=10_000, help="daemon bound (10000)")
    p.add_argument("--max-inflight-requests", type=int, default=256, help="daemon bound (256)")
    p.add_argument("--items", type=int, default=2000, help="catalog size (2000)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--bodies", type=int, default=200, help="distinct ingest bodies (200)")
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "loadtest.json")
    args = p.parse_args(argv)
    if not 0 < args.mix <= 1:
        p.error("--mix must be in (0, 1]")
    if args.max_pending_events < max(args.batch_size, 1000):
        p.error("--max-pending-events must be >= max(--batch-size, 1000)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json}")
    ok = result["end"]["accepted_equals_learned"] and result["overload_watch"]["daemon_alive"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
