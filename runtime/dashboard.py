"""The live dashboard: ``GET /`` serves a static page that polls two JSON endpoints.

``GET /v1/dashboard/series?since=T``
    the time series newer than ``T`` (unix seconds): ingest/learn throughput,
    progressive logloss/AUC and HR@k, freshness latency, queue depths, shard sizes, each
    experiment variant's metrics; plus the current rejections by reason, a few headline
    numbers and the latest experiments report (``GET /v1/experiments``, null without).
``GET /v1/dashboard/top?k=10``
    the items interacted with most recently (exponentially decayed counts).

History is kept from the process's start: when the HTTP app starts, a sampling task
owned by the process's supervisor samples ``statistics()`` every ``http.dashboard_sample_s``
seconds (less often when ``statistics()`` is slow, see :class:`StatsHistory`) into a
ring buffer of ``http.dashboard_history_s`` seconds, so a page opened for the first time
shows the recent past.  Requests only read the buffer; a first load of a long history
gets at most ``MAX_POINTS`` points, each the mean of a run of samples.

The page and uPlot (vendored, MIT; see ``static/vendor/README.md``) are package data:
the dashboard works offline and needs no front-end build.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from actors.features import ITEM_NS, Catalog
from actors.metrics import PopularityBaseline, ProgressiveMetrics
from runtime.supervisor import Supervisor

log = logging.getLogger("freshrank.dashboard")

STATIC_DIR = Path(__file__).with_name("static")
SAMPLE_INTERVAL_S = 5.0
HISTORY_CAPACITY = 17_280  # a day at one sample every 5 s
MAX_POINTS = 2_000  # samples in one answer: a day's history is thinned to this
MAX_SAMPLING_COST_FACTOR = 20.0  # sampling takes at most 5% of the event loop
TRENDING_HALF_LIFE_S = 60.0
MAX_TOP_K = 100

Stats = Mapping[str, Any]
Values = dict[str, float | None]


# --------------------------------------------------------------------------- sampling


def number(stats: Any, *path: str | int) -> float | None:
    """``stats[path[0]][path[1]]...`` as a finite float, or None when absent or not a number.

    Statistics differ between a System and a cluster ranker, and metrics are absent until
    the first labelled event: a missing value is a gap in a chart, never an error.
    """
    value = stats
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


COUNTERS = {
    "ingested": ("hasher", "events"),
    "learned": ("trainer", "events"),
    "learned rows": ("trainer", "rows"),
    "rejected": ("dead_letters", "records"),
}
"""Cumulative counters whose per-second rates make the throughput chart."""


def counters(stats: Stats) -> Values:
    return {name: number(stats, *path) for name, path in COUNTERS.items()}


def rates(now: Values, before: Values, seconds: float) -> Values:
    """Per-second increase of each counter (None without two readings or time passing)."""
    out: Values = {}
    for name, value in now.items():
        old = before.get(name)
        if value is None or old is None or not seconds > 0 or value < old:
            out[name] = None  # `not >`: the first reading has no time before it (NaN)
        else:
            out[name] = (value - old) / seconds
    return out


def quality(stats: Stats) -> Values:
    """Progressive metrics: logloss and AUC of the CTR model, HR/NDCG@k against popularity,
    precision, recall and F1."""
    metrics = stats.get("metrics") or {}
    out: Values = {
        "logloss/model": number(metrics, "logloss"),
        "logloss/mean-CTR baseline": number(metrics, "baseline_mean_ctr_logloss"),
        "auc/model": number(metrics, "auc"),
    }
    ks = sorted(key[len("hr@") :] for key in metrics if key.startswith("hr@"))
    for k in ks:  # the model first, then the popularity baseline it has to beat
        for source, label in (("", ""), ("baseline_popularity_", "popularity ")):
            if f"{source}hr@{k}" not in metrics:
                continue
            out[f"ranking/{label}HR@{k}"] = number(metrics, f"{source}hr@{k}")
            out[f"ranking/{label}NDCG@{k}"] = number(metrics, f"{source}ndcg@{k}")
    for key in sorted(metrics):  # next-item precision@k, recall@k, F1@k
        name, _, k = key.partition("@")
        if name in ("precision", "recall", "f1") and k.isdigit():
            out[f"f1/{'F1' if name == 'f1' else name}@{k}"] = number(metrics, key)
    for key, label in (("precision", "labelled precision"), ("recall", "labelled recall"),
                       ("f1", "labelled F1"), ("best_f1", "labelled best F1")):  # fmt: skip
        if key in metrics:
            out[f"f1/{label}"] = number(metrics, key)
    return out


def freshness(stats: Stats) -> Values:
    """Event creation to learned weights (a System's trainer, or a cluster ranker's own)."""
    summary = (stats.get("trainer") or {}).get("freshness") or stats.get("freshness") or {}
    return {"freshness/p50": number(summary, "p50_ms"), "freshness/p99": number(summary, "p99_ms")}


def queue_depths(stats: Stats) -> Values:
    """Messages waiting in each channel, and batches the trainer has in flight."""
    out: Values = {}
    queues = stats.get("queues") or {}
    for name in sorted(queues):
        depth = number(queues, name, "depth")
        if depth is not None:
            out[f"queues/{name}"] = depth
    in_flight = number(stats, "trainer", "in_flight")
    if in_flight is not None:
        out["queues/trainer in flight"] = in_flight
    return out


def shard_sizes(stats: Stats) -> Values:
    """Non-zero weights held by each learner shard."""
    out: Values = {}
    for learner in stats.get("learners") or []:
        shard = number(learner, "shard")
        if shard is not None:
            out[f"shards/shard {int(shard)}"] = number(learner, "nonzero_weights")
    return out


def experiment_metrics(stats: Stats) -> Values:
    """Each experiment variant's progressive metrics and click-through (runtime/experiments.py)."""
    out: Values = {}
    variants = (stats.get("experiments") or {}).get("variants") or {}
    for variant in sorted(variants):
        for metric, estimate in variants[variant].items():
            if isinstance(estimate, Mapping):
                out[f"experiments/{variant} {metric}"] = number(estimate, "value")
    return out


def sample_values(stats: Stats, throughput: Values) -> Values:
    """One sample: every chart's series, keyed ``chart/series label``."""
    values: Values = {f"throughput/{name}": rate for name, rate in throughput.items()}
    for part in (quality, freshness, queue_depths, shard_sizes, experiment_metrics):
        values.update(part(stats))
    return values


def rejections(stats: Stats) -> dict[str, Any]:
    """Rejected events so far, by reason (the dead-letter sink keeps the 50 most common)."""
    by_reason = (stats.get("dead_letters") or {}).get("by_reason") or {}
    return {
        "total": number(stats, "dead_letters", "records"),
        "by_reason": [{"reason": str(r), "count": c} for r, c in by_reason.items()],
    }


def headline(stats: Stats) -> dict[str, Any]:
    """The numbers shown at the top of the page."""
    return {
        "status": "failed" if stats.get("failed") else "ok",
        "failed": stats.get("failed"),
        "uptime_s": number(stats, "uptime_s"),
        "learned_events": number(stats, "trainer", "events"),
        "users": number(stats, "users"),
        "catalog_items": number(stats, "catalog_items"),
        "rejected": number(stats, "dead_letters", "records"),
        "shards": number(stats, "shards"),
    }


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample, packed: a day of them must stay a few megabytes, not a dict per sample.

    ``keys`` is shared by every sample with the same series (see StatsHistory._keys_of);
    a gap is stored as NaN (``number`` never lets a NaN through as a value).
    """

    t: float
    keys: tuple[str, ...]
    packed: array[float]

    @property
    def values(self) -> Values:
        return {
            k: None if math.isnan(v) else v for k, v in zip(self.keys, self.packed, strict=True)
        }


@dataclass
class StatsHistory:
    """A ring buffer of samples of a ``statistics()`` callable, taken at most once per interval.

    ``statistics()`` runs on the event loop and can be slow (it sorts the AUC window:
    about a second for a million pairs on a busy 2-core machine), so the interval
    stretches to ``cost_factor`` times the last call's duration: sampling takes at most
    1/cost_factor of the loop's time, however large the state grows.
    """

    source: Callable[[], Stats]
    interval_s: float = SAMPLE_INTERVAL_S
    capacity: int = HISTORY_CAPACITY
    clock: Callable[[], float] = time.time
    timer: Callable[[], float] = time.perf_counter
    cost_factor: float = MAX_SAMPLING_COST_FACTOR
    samples: deque[Sample] = field(init=False)
    latest: Stats | None = field(init=False, default=None)
    next_due: float = field(init=False, default=-math.inf)
    last_cost_s: float = field(init=False, default=0.0)
    _counters: Values = field(init=False, default_factory=dict)
    _counted_at: float = field(init=False, default=math.nan)
    _keys: dict[tuple[str, ...], tuple[str, ...]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=self.capacity)

    @property
    def effective_interval_s(self) -> float:
        return max(self.interval_s, self.cost_factor * self.last_cost_s)

    def maybe_sample(self) -> bool:
        """Take a sample if one is due; True when one was taken."""
        if self.clock() < self.next_due:
            return False
        self.sample()
        return True

    def sample(self) -> None:
        """Take a sample now."""
        now = self.clock()
        started = self.timer()
        stats = self.source()
        self.last_cost_s = self.timer() - started
        self.next_due = now + self.effective_interval_s
        count = counters(stats)
        throughput = rates(count, self._counters, now - self._counted_at)
        self._counters, self._counted_at = count, now
        values = sample_values(stats, throughput)
        packed = array("d", (math.nan if v is None else v for v in values.values()))
        self.samples.append(Sample(now, self._keys_of(tuple(values)), packed))
        self.latest = stats

    def _keys_of(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        """One shared tuple per set of series (they change only when a chart gains one)."""
        if len(self._keys) > 1000:  # bounded whatever the statistics report
            self._keys.clear()
        return self._keys.setdefault(keys, keys)

    def since(self, t: float, max_points: int = MAX_POINTS) -> dict[str, Any]:
        """The samples newer than ``t`` as columns: ``t`` and one list per series (None: gap).

        More than ``max_points`` are averaged in runs of consecutive samples, each shown
        at its newest one's time: the newest sample keeps its time (it is the page's next
        ``since``), and a burst between two shown samples still counts."""
        newer: list[Sample] = []
        for sample in reversed(self.samples):  # newest first: a follow-up reads a few
            if sample.t <= t:
                break
            newer.append(sample)
        stride = max(1, math.ceil(len(newer) / max_points))
        index, table = tabulate(newer)
        means = run_means(table, stride)[::-1]
        cells = means.astype(object)
        cells[np.isnan(means)] = None
        return {
            "t": [s.t for s in newer[::stride][::-1]],
            "series": {key: cells[:, column].tolist() for key, column in index.items()},
        }


def tabulate(samples: list[Sample]) -> tuple[dict[str, int], np.ndarray]:
    """The samples as a table, a row each and a column per series (NaN where a sample lacks
    it): the columns of a day of samples come from numpy, not from a loop per value."""
    groups: dict[tuple[str, ...], list[int]] = {}  # rows by their set of series: one or few
    for row, sample in enumerate(samples):
        groups.setdefault(sample.keys, []).append(row)
    index: dict[str, int] = {}
    for keys in groups:
        for key in keys:
            index.setdefault(key, len(index))
    table = np.full((len(samples), len(index)), np.nan)
    for keys, rows in groups.items():
        packed = np.frombuffer(b"".join(samples[row].packed for row in rows))
        where = [index[key] for key in keys]
        block = packed.reshape(len(rows), len(keys))
        if len(rows) == len(samples):  # the usual case: one set of series throughout
            table[:, where] = block
        else:
            table[np.ix_(rows, where)] = block
    return index, table


def run_means(table: np.ndarray, stride: int) -> np.ndarray:
    """The mean of each run of ``stride`` rows, ignoring NaN (a run of only NaN: NaN)."""
    if stride == 1:
        return table
    runs = -(-table.shape[0] // stride)
    padded = np.full((runs * stride, table.shape[1]), np.nan)
    padded[: table.shape[0]] = table
    shaped = padded.reshape(runs, stride, table.shape[1])
    present = (~np.isnan(shaped)).sum(axis=1)
    sums = np.nansum(shaped, axis=1)
    return np.where(present > 0, sums / np.maximum(present, 1), np.nan)


# --------------------------------------------------------------------------- top items


class Trending:
    """Interactions per catalog row with exponentially decaying weight: "popular recently".

    Fed with the all-time counts the trainer's popularity baseline keeps: each update
    decays the previous scores by ``2 ** (-dt / half_life_s)`` and adds the new counts.
    The first update only sets the reference, so history from before the dashboard was
    first asked counts as all-time, not as recent.
    """

    def __init__(self, half_life_s: float = TRENDING_HALF_LIFE_S) -> None:
        self.half_life_s = half_life_s
        self.recent = np.zeros(0)
        self.totals = np.zeros(0, np.int64)
        self._t: float | None = None

    def update(self, totals: np.ndarray, t: float) -> None:
        totals = np.asarray(totals, np.int64)
        grown = totals.shape[0] - self.totals.shape[0]
        if grown < 0 or self._t is None:  # first reading, or counts from another run
            self.recent = np.zeros(totals.shape[0])
        else:
            before = np.concatenate([self.totals, np.zeros(grown, np.int64)])
            decay = 2.0 ** (-max(t - self._t, 0.0) / self.half_life_s)
            recent = np.concatenate([self.recent * decay, np.zeros(grown)])
            self.recent = recent + np.maximum(totals - before, 0)
        self.totals, self._t = totals, t

    def top(self, k: int) -> list[tuple[int, float, int]]:
        """(row, recent, total) of the k rows with the most recent interactions; ties (and
        rows with none recently) by all-time count, then by row."""
        n = self.totals.shape[0]
        if n == 0:
            return []
        candidates = np.union1d(_largest(self.recent, k), _largest(self.totals, k))
        order = np.lexsort((candidates, -self.totals[candidates], -self.recent[candidates]))
        best = candidates[order][:k]
        return [(int(r), float(self.recent[r]), int(self.totals[r])) for r in best]


def _largest(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest values (any order)."""
    if values.shape[0] <= k:
        return np.arange(values.shape[0])
    return np.argpartition(-values, k - 1)[:k]


def popularity_of(system: object) -> PopularityBaseline | None:
    """The trainer's all-time interaction counts; None when there are none to show
    (``training.popularity_baseline = false``, or a cluster ranker without a trainer)."""
    metrics = getattr(system, "metrics", None)
    return metrics.popularity if isinstance(metrics, ProgressiveMetrics) else None


def interaction_counts(popularity: PopularityBaseline) -> np.ndarray:
    """All-time interactions per catalog row, through the baseline's public state."""
    return np.frombuffer(popularity.to_state()["counts"], "<i8")


def describe(catalog: Catalog, row: int) -> tuple[str, list[str]]:
    """An item's id and its feature names other than the id itself."""
    item = catalog.ids[row] if row < len(catalog.ids) else f"row {row}"
    names = catalog.names[row] if row < len(catalog.names) else []
    return item, [n for n in names if not n.startswith(f"{ITEM_NS}=")]


# --------------------------------------------------------------------------- HTTP


class Dashboard:
    """State behind the dashboard endpoints of one app: the history :meth:`run` keeps."""

    def __init__(self, system: Any) -> None:
        self.system = system
        http = system.config.http
        capacity = max(1, math.ceil(http.dashboard_history_s / http.dashboard_sample_s))
        self.history = StatsHistory(system.statistics, http.dashboard_sample_s, capacity)
        self.trending = Trending()
        self.sample_failures = 0

    async def run(self) -> None:
        """Sample for as long as the process serves (the first sample is taken at start)."""
        while True:
            await asyncio.sleep(self.history.effective_interval_s)
            try:
                self.tick()
            except Exception:  # a broken chart must not take the serving process down
                self.sample_failures += 1
                log.exception("dashboard: sampling statistics() failed")

    def tick(self) -> None:
        """Sample statistics and the popularity counts when the interval has passed."""
        if self.history.clock() >= self.history.next_due:
            self.sample()

    def sample(self) -> None:
        """Sample statistics and the popularity counts now."""
        self.history.sample()
        popularity = popularity_of(self.system)
        if popularity is not None:
            self.trending.update(interaction_counts(popularity), self.history.samples[-1].t)

    def series(self, since: float) -> dict[str, Any]:
        latest = self.history.latest or {}
        return {
            "now": self.history.clock(),
            "interval_s": round(self.history.effective_interval_s, 3),
            "sample_cost_ms": round(self.history.last_cost_s * 1000, 3),
            "capacity": self.history.capacity,
            "sample_failures": self.sample_failures,
            **self.history.since(since),
            "rejected": rejections(latest),
            "headline": headline(latest),
            "experiments": latest.get("experiments"),  # None: no [experiments] section
        }

    def top(self, k: int) -> dict[str, Any]:
        if popularity_of(self.system) is None:
            return {
                "available": False,
                "reason": "no interaction counts here (training.popularity_baseline is off, "
                "or this process has no trainer)",
                "items": [],
            }
        return {
            "available": True,
            "half_life_s": self.trending.half_life_s,
            "items": list(self._items(self.trending.top(k))),
        }

    def _items(self, rows: Iterable[tuple[int, float, int]]) -> Iterable[dict[str, Any]]:
        for row, recent, total in rows:
            item, features = describe(self.system.catalog, row)
            yield {"item": item, "recent": round(recent, 3), "total": total, "features": features}


DASHBOARD_KEY = web.AppKey("dashboard", Dashboard)


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def get_series(request: web.Request) -> web.Response:
    raw = request.query.get("since", "0")
    try:
        since = float(raw)
    except ValueError:
        return _error(400, f"'since' must be a number of unix seconds, got {raw[:40]!r}")
    if math.isnan(since):
        return _error(400, "'since' must be a number of unix seconds, got NaN")
    return web.json_response(request.app[DASHBOARD_KEY].series(since))


async def get_top(request: web.Request) -> web.Response:
    raw = request.query.get("k", "10")
    try:
        k = int(raw)
    except ValueError:
        return _error(400, f"'k' must be an integer, got {raw[:40]!r}")
    if not 1 <= k <= MAX_TOP_K:
        return _error(400, f"'k' must be in 1..{MAX_TOP_K}, got {k}")
    return web.json_response(request.app[DASHBOARD_KEY].top(k))


async def get_index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def keep_history(app: web.Application) -> AsyncIterator[None]:
    """The sampling task, from the app's start to its cleanup.

    The first sample is taken here, before the app serves: the history starts with the
    process.  The task belongs to the serving process's supervisor when it has one (a
    System, a cluster ranker), so it ends with the process.
    """
    dashboard = app[DASHBOARD_KEY]
    dashboard.sample()
    supervisor = getattr(dashboard.system, "supervisor", None)
    if isinstance(supervisor, Supervisor) and supervisor.running:
        task = supervisor.spawn(dashboard.run(), "dashboard-sampler")
    else:
        task = asyncio.create_task(dashboard.run(), name="dashboard-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def files_missing(request: web.Request) -> web.Response:
    return _error(503, f"the dashboard's files are not installed (expected {STATIC_DIR})")


def add_dashboard(app: web.Application, system: Any) -> None:
    """Serve the dashboard page at ``/``, its files under ``/static/`` and its JSON endpoints.

    ``system`` is a System or anything with ``statistics()`` and a ``catalog`` (a cluster
    ranker): whatever it does not report shows as an empty chart.
    """
    app[DASHBOARD_KEY] = Dashboard(system)
    app.cleanup_ctx.append(keep_history)
    app.router.add_get("/v1/dashboard/series", get_series)
    app.router.add_get("/v1/dashboard/top", get_top)
    if (STATIC_DIR / "index.html").is_file():
        app.router.add_get("/", get_index)
        app.router.add_static("/static/", STATIC_DIR)
    else:  # a broken install loses the page, not the daemon
        log.warning("dashboard files missing from %s: GET / answers 503", STATIC_DIR)
        app.router.add_get("/", files_missing)
