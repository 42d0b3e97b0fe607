"""``freshrank tune``: search the learning settings by progressive validation.

Every trial is a replay of the log (``runtime.replay``: one pass, test-then-train) with
one candidate config, so its score is the replay's own progressive metric: HR@K when the
replay ranks (implicit interactions such as MovieLens), logloss when events are labelled.

The search is **random search with successive halving on prefixes of the log**:

* Random search (seeded) samples distinct settings from a discrete space
  (``section.key -> [candidates]``); with few settings that matter it covers each of them
  better than a grid of the same size (Bergstra & Bengio, 2012).  The base config is
  always trial 0.
* Successive halving (Jamieson & Talwalkar, 2016): every trial first replays the first
  ``min_fraction`` of the log; the best ``1/eta`` of them (and the base config, so the
  comparison with it is always on the whole log) replay ``eta`` times more, and so on up
  to the whole log.  A progressive metric on a prefix is exactly the full replay's metric
  at that point: a cheap early look (noisier, and only at the early part of the log), in
  which a bad learning rate or too strong a regularisation already shows.  With the
  defaults (12 trials, eta 3, prefix 1/3) this costs 8 to 9 full replays instead of 12.
  Ranking replays learn their first 20 % without evaluating, so ``min_fraction`` must be
  above 0.2 there (1/3 sees 1/6 of the ranked events); ``min_fraction = 1`` is plain
  random search.

Trials run in worker processes (``--jobs``), each with its own config (state and dead
letters in a temporary directory, no HTTP, no snapshot restore, no simulator).  Each
worker process is its own single-process executor, so a worker that dies (a crash, the
OOM killer) fails only the trial it was running; an exception in a trial or an invalid
value (``ConfigError``) is reported with its message and the tune goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

import tomli_w

from actors.readers import Chunk
from runtime.config import Config, ConfigError, ModelConfig
from runtime.replay import FORMATS, clean, open_log, replay
from runtime.snapshots import write_atomically
from runtime.system import System

Space = dict[str, list[Any]]
Settings = dict[str, Any]

DEFAULT_OUT = "freshrank-tuned.toml"
LOWER_IS_BETTER = frozenset({"logloss"})
METRIC_PATTERN = re.compile(r"logloss|auc|(hr|ndcg)@[1-9][0-9]*")
# demographic x genre crosses: namespaces absent from a log simply yield no features
GENRE_CROSSES = [["user", "i.genre"], ["u.age", "i.genre"], ["u.gender", "i.genre"]]
GENRE_CROSSES += [["u.occupation", "i.genre"], ["c.device", "i.genre"]]


# --------------------------------------------------------------------------- search space


def default_space(base: Config) -> Space:
    """The default candidates per key; ``model.factors`` only when the model has factors."""
    space: Space = {
        "ftrl.alpha": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
        "ftrl.beta": [0.1, 0.5, 1.0, 2.0],
        "ftrl.l1": [0.0, 0.01, 0.1, 0.5],
        "ftrl.l2": [0.0, 0.01, 0.1, 1.0],
        "model.bits": [18, 20, 22],
    }
    if "factors" in {f.name for f in fields(ModelConfig)}:
        space["model.factors"] = [0, 4, 8, 16]
    space["model.crosses"] = _unique([base.model.crosses, [], [["user", "i.genre"]], GENRE_CROSSES])
    space["training.negatives"] = [1, 2, 4, 8]
    return space


def _unique(values: list[Any]) -> list[Any]:
    kept: list[Any] = []
    for value in values:
        if value not in kept:
            kept.append(value)
    return kept


def load_space(path: str | Path) -> Space:
    """A space file: TOML (``[ftrl] alpha = [0.05, 0.1]``) or JSON (``{"ftrl.alpha": [..]}``).

    Nested tables and dotted keys are the same thing; every leaf is a list of candidates.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"search space {path}: {error.strerror or error}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"search space {path}: not valid {kind}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"search space {path}: must be a table of key = [candidates]")
    return _flatten(data, "", str(path))


def _flatten(table: dict[str, Any], prefix: str, origin: str) -> Space:
    space: Space = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            space.update(_flatten(value, f"{key}.", origin))
        elif isinstance(value, list):
            space[key] = value
        else:
            raise ConfigError(
                f"search space {origin}: {key} must be a list of candidates, got {value!r}"
            )
    return space


def parse_set(item: str) -> tuple[str, list[Any]]:
    """``key=v1,v2,...`` (each value a TOML value, else a bare string) or ``key=[...]`` (a
    TOML array of candidates, for list values: ``model.crosses=[[], [["user","i.genre"]]]``)."""
    key, sep, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text:
        raise ConfigError(f"--set {item!r}: expected key=v1,v2,... (e.g. ftrl.alpha=0.05,0.1)")
    if text.startswith("["):
        values = _toml_value(text)
        if not isinstance(values, list):
            raise ConfigError(f"--set {item!r}: not a TOML array of candidates")
        return key, values
    return key, [_scalar(part.strip()) for part in text.split(",")]


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return None


def _scalar(text: str) -> Any:
    value = _toml_value(text)
    return text if value is None else value


def build_space(
    base: Config, space_file: str | None, overrides: Sequence[str], defaults: bool = True
) -> Space:
    """The defaults (unless not ``defaults``), then the space file and ``--set`` per key."""
    space = default_space(base) if defaults else {}
    if space_file:
        space.update(load_space(space_file))
    for item in overrides:
        key, values = parse_set(item)
        space[key] = values
    check_space_keys(space, base)
    return space


def check_space_keys(space: Space, base: Config) -> None:
    """A key the Config does not know fails the tune up front with Config's own error
    (rather than failing every trial); bad *values* are failed trials."""
    known = base.to_dict()
    for key, values in space.items():
        section, _, name = key.partition(".")
        if not name:
            raise ConfigError(f"search space key {key!r} must be section.key, e.g. ftrl.alpha")
        if not values:
            raise ConfigError(f"search space key {key} has no candidates")
        if not isinstance(known.get(section), dict) or name not in known[section]:
            Config.from_dict({section: {name: values[0]}}, origin="search space")


def apply_settings(base: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A copy of a config dict with ``section.key`` values replaced."""
    data = copy.deepcopy(base)
    for key, value in settings.items():
        section, _, name = key.partition(".")
        table = data.setdefault(section, {})
        if isinstance(table, dict):
            table[name] = copy.deepcopy(value)
    return data


def _lookup(data: dict[str, Any], key: str) -> Any:
    section, _, name = key.partition(".")
    table = data.get(section)
    return table.get(name) if isinstance(table, dict) else None


def _fingerprint(settings: Settings) -> str:
    return json.dumps(settings, sort_keys=True, default=repr)


def sample_settings(space: Space, count: int, seed: int, base: dict[str, Any]) -> list[Settings]:
    """Up to ``count`` distinct settings, none equal to the base config, drawn uniformly
    (every combination when the space has no more than that)."""
    keys = list(space)
    sizes = [len(space[key]) for key in keys]
    rng = random.Random(seed)
    seen = {_fingerprint({key: _lookup(base, key) for key in keys})}
    picked: list[Settings] = []
    if count < 1:
        return picked
    for indices in _index_draws(sizes, count, rng):
        settings = {key: space[key][i] for key, i in zip(keys, indices, strict=True)}
        fingerprint = _fingerprint(settings)
        if fingerprint not in seen:
            seen.add(fingerprint)
            picked.append(settings)
            if len(picked) == count:
                break
    return picked


def _index_draws(sizes: list[int], count: int, rng: random.Random) -> Iterator[tuple[int, ...]]:
    total = math.prod(sizes)
    if total <= max(10_000, 2 * count):
        combos = list(itertools.product(*(range(size) for size in sizes)))
        rng.shuffle(combos)
        yield from combos
        return
    for _ in range(50 * count + 100):  # duplicates are rare in a space this large
        yield tuple(rng.randrange(size) for size in sizes)


def rung_fractions(min_fraction: float, eta: int) -> list[float]:
    """Prefix fractions of successive halving: min_fraction, x eta, ..., 1."""
    fractions = []
    fraction = min_fraction
    while fraction < 1 - 1e-9:
        fractions.append(fraction)
        fraction *= eta
    return [*fractions, 1.0]


# --------------------------------------------------------------------------- one trial


@dataclass(frozen=True)
class TrialJob:
    """What a worker process replays: a trial's config on the first ``limit`` interactions."""

    number: int
    config: Config
    log: str
    fmt: str
    limit: int | None


@dataclass
class TrialRun:
    """A worker's answer: the replay summary, or the error that stopped the trial."""

    summary: dict[str, Any] | None
    seconds: float
    error: str | None = None


def take_interactions(chunks: Iterator[Chunk], limit: int) -> Iterator[Chunk]:
    """The chunks of a log until ``limit`` interactions (at batch granularity)."""
    seen = 0
    for chunk in chunks:
        if seen >= limit:
            return
        yield chunk
        seen += chunk.interactions


async def replay_config(
    config: Config, log: str | Path, fmt: str, limit: int | None = None
) -> dict[str, Any]:
    """The replay of ``log`` (or its first ``limit`` interactions) with one config."""
    async with System(config) as system:
        chunks = open_log(log, fmt, config.training.batch_size)
        if limit is not None:
            chunks = take_interactions(chunks, limit)
        return await replay(system, chunks)


def run_trial(job: TrialJob) -> TrialRun:
    """Worker-process entry point: never raises for a bad trial, returns its error."""
    started = time.perf_counter()
    try:
        summary = _run_loop(replay_config(job.config, job.log, job.fmt, job.limit))
    except Exception as error:
        return TrialRun(None, time.perf_counter() - started, f"{type(error).__name__}: {error}")
    return TrialRun(summary, time.perf_counter() - started)


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group; the parent alone handles it (and ends us)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C while a worker is spawned: the parent's executor is never interrupted
    half-way (a worker started but not yet known would be orphaned), and the worker (or
    the fork server it is forked from) inherits SIGINT blocked: never interrupted, even
    before its initializer runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; it owns Ctrl-C
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


# --------------------------------------------------------------------------- worker slots


def _worker_context() -> Any:
    """forkserver where there is fork: a worker is a fork of a single-threaded server that
    imported this module once (a fast start, never a fork of a threaded parent); else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class WorkerSlots:
    """``size`` single-process executors: a worker that dies takes down only its own trial,
    and is replaced.  Workers are reused across trials (imports and JIT load once)."""

    def __init__(self, size: int) -> None:
        self._context = _worker_context()
        self._executors: list[ProcessPoolExecutor | None] = [None] * size

    def __enter__(self) -> WorkerSlots:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.terminate()

    def _executor(self, slot: int) -> ProcessPoolExecutor:
        executor = self._executors[slot]
        if executor is None:
            executor = ProcessPoolExecutor(1, self._context, initializer=_ignore_sigint)
            self._executors[slot] = executor
        return executor

    def _discard(self, slot: int) -> None:
        executor = self._executors[slot]
        self._executors[slot] = None
        if executor is not None:
            executor.shutdown(wait=True)

    def run(
        self,
        jobs: Sequence[TrialJob],
        on_done: Callable[[TrialJob, TrialRun], None],
        target: Callable[[TrialJob], TrialRun] = run_trial,
    ) -> dict[int, TrialRun]:
        """Run ``target`` on every job (a picklable module-level function), at most one per
        slot at a time; results by trial number."""
        pending = deque(jobs)
        free = list(range(len(self._executors)))
        running: dict[Future[TrialRun], tuple[int, TrialJob]] = {}
        runs: dict[int, TrialRun] = {}
        while pending or running:
            while pending and free:
                slot, job = free.pop(), pending.popleft()
                # built outside: its queues start multiprocessing's resource tracker, which
                # unblocks SIGINT once it is spawned
                executor = self._executor(slot)
                with _sigint_deferred():  # the first submit spawns the slot's worker
                    running[executor.submit(target, job)] = (slot, job)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                slot, job = running.pop(future)
                run = self._outcome(future, slot)
                free.append(slot)
                runs[job.number] = run
                on_done(job, run)
        return runs

    def _outcome(self, future: Future[TrialRun], slot: int) -> TrialRun:
        try:
            return future.result()
        except BrokenProcessPool:
            self._discard(slot)
            error = "the worker process died (crash, signal or out of memory)"
        except Exception as failure:  # e.g. a result that cannot be pickled
            error = f"{type(failure).__name__}: {failure}"
        return TrialRun(None, 0.0, error)

    def close(self) -> None:
        for slot in range(len(self._executors)):
            self._discard(slot)

    def terminate(self) -> None:
        """End every worker now (Ctrl-C): queued trials are cancelled, running ones killed."""
        for executor in self._executors:
            if executor is None:
                continue
            terminate_workers = getattr(executor, "terminate_workers", None)  # Python >= 3.14
            if terminate_workers is not None:
                terminate_workers()
            else:  # before 3.14 the worker processes are only reachable here
                for process in list((getattr(executor, "_processes", None) or {}).values()):
                    process.terminate()
            executor.shutdown(wait=True, cancel_futures=True)
        self._executors = [None] * len(self._executors)


# --------------------------------------------------------------------------- the search


@dataclass
class TrialOutcome:
    """A trial as far as it got: its last replay (on ``fraction`` of the log) or its error."""

    number: int
    settings: Settings
    config: dict[str, Any] | None
    fraction: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    rungs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def metric(self, name: str) -> float | None:
        value = self.summary.get(name)
        return float(value) if isinstance(value, int | float) else None


@dataclass
class TuneReport:
    """Every trial, best first, and the winner (None when no trial produced the metric)."""

    metric: str | None
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    base: TrialOutcome
    fractions: list[float]
    events: int | None
    seconds: float
    base_config: dict[str, Any]

    def best_config(self) -> dict[str, Any]:
        return self.best.config if self.best and self.best.config else self.base_config

    def to_dict(self) -> dict[str, Any]:
        def row(trial: TrialOutcome) -> dict[str, Any]:
            status = "failed" if trial.error else "ok" if trial.fraction >= 1 else "stopped"
            return {
                "trial": trial.number,
                "status": status,
                "settings": trial.settings,
                "changed": changed_settings(trial.settings, self.base_config),
                "fraction": trial.fraction,
                "metric": trial.metric(self.metric) if self.metric else None,
                "seconds": round(trial.seconds, 3),
                "error": trial.error,
                "rungs": trial.rungs,
                "result": trial.summary,
            }

        return clean(
            {
                "metric": self.metric,
                "direction": "min" if self.metric in LOWER_IS_BETTER else "max",
                "best": row(self.best) if self.best else None,
                "base": row(self.base),
                "fractions": self.fractions,
                "events": self.events,
                "seconds": round(self.seconds, 3),
                "trials": [row(trial) for trial in self.trials],
            }
        )


def choose_metric(
    summaries: Sequence[dict[str, Any]], forced: str | None, rank_k: int
) -> str | None:
    """The forced metric, else HR@K when the replay ranked, else logloss when labelled."""
    if forced:
        return forced
    for name in (f"hr@{rank_k}", "logloss"):
        if any(isinstance(s.get(name), int | float) for s in summaries):
            return name
    return None


def sort_trials(trials: Sequence[TrialOutcome], metric: str | None) -> list[TrialOutcome]:
    """Best first: further in the log, then the better metric; missing metrics, then failures, last."""
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0

    def key(trial: TrialOutcome) -> tuple[bool, float, bool, float, int]:
        value = trial.metric(metric) if metric else None
        measured = value is not None and math.isfinite(value)
        score = sign * value if value is not None and measured else 0.0
        return (not trial.ok, -trial.fraction, not measured, score, trial.number)

    return sorted(trials, key=key)


def changed_settings(settings: Settings, base: dict[str, Any]) -> Settings:
    return {key: value for key, value in settings.items() if _lookup(base, key) != value}


def count_interactions(log: str | Path, fmt: str, batch_size: int) -> int:
    return sum(chunk.interactions for chunk in open_log(log, fmt, batch_size))


@dataclass
class TuneOptions:
    log: str
    fmt: str
    base: Config
    space: Space
    trials: int = 12
    seed: int = 0
    jobs: int = 1
    metric: str | None = None
    eta: int = 3
    min_fraction: float = 1 / 3


Progress = Callable[[TrialOutcome, TrialRun, float], None]


def run_tune(options: TuneOptions, progress: Progress | None = None) -> TuneReport:
    """Run the search; raises KeyboardInterrupt after ending every worker."""
    started = time.perf_counter()
    base_dict = options.base.to_dict()
    sampled = sample_settings(options.space, options.trials - 1, options.seed, base_dict)
    outcomes = [TrialOutcome(0, {}, base_dict)]
    outcomes += [_new_outcome(n, settings, base_dict) for n, settings in enumerate(sampled, 1)]
    alive = [trial for trial in outcomes if trial.ok]
    fractions = rung_fractions(options.min_fraction, options.eta)
    events = None
    if len(fractions) > 1 and _promoted_count(len(alive), options.eta) < len(alive):
        events = count_interactions(options.log, options.fmt, options.base.training.batch_size)
    metric: str | None = None
    with (
        tempfile.TemporaryDirectory(prefix="freshrank-tune-") as workdir,
        WorkerSlots(max(1, min(options.jobs, len(alive)))) as slots,
    ):
        for rung, fraction in enumerate(fractions):
            limit = None if fraction >= 1 or events is None else math.ceil(fraction * events)
            if fraction < 1 and (
                limit is None or _promoted_count(len(alive), options.eta) >= len(alive)
            ):
                continue  # every trial would go on: the prefix tells nothing
            jobs = [
                _job(t, options, Path(workdir, f"rung{rung}", f"trial{t.number}"), limit)
                for t in alive
            ]
            slots.run(jobs, _recorder(outcomes, fraction, progress))
            alive = [trial for trial in alive if trial.ok]
            rank_k = options.base.training.rank_k
            metric = choose_metric([t.summary for t in alive], options.metric, rank_k)
            if fraction < 1:
                alive = _promote(alive, metric, options.eta)
    ranked = sort_trials(outcomes, metric)
    best = ranked[0] if _finished_with(ranked[0], metric) else None
    seconds = time.perf_counter() - started
    return TuneReport(metric, ranked, best, outcomes[0], fractions, events, seconds, base_dict)


def _recorder(
    outcomes: list[TrialOutcome], fraction: float, progress: Progress | None
) -> Callable[[TrialJob, TrialRun], None]:
    def done(job: TrialJob, run: TrialRun) -> None:
        trial = _record(outcomes[job.number], run, fraction)
        if progress is not None:
            progress(trial, run, fraction)

    return done


def _new_outcome(number: int, settings: Settings, base: dict[str, Any]) -> TrialOutcome:
    """A sampled trial; an invalid value fails it here with the ConfigError text."""
    data = apply_settings(base, settings)
    try:
        Config.from_dict(data, origin=f"trial {number}")
    except ConfigError as error:
        return TrialOutcome(number, settings, None, error=f"ConfigError: {error}")
    return TrialOutcome(number, settings, data)


def _job(trial: TrialOutcome, options: TuneOptions, workdir: Path, limit: int | None) -> TrialJob:
    assert trial.config is not None
    data = copy.deepcopy(trial.config)
    data["http"]["enabled"] = False
    data["simulator"]["enabled"] = False
    data["state"].update(restore=False, snapshot_path=str(workdir / "snapshot.msgpack"))
    data["ingest"]["dead_letter_path"] = str(workdir / "dead_letters.jsonl")
    return TrialJob(trial.number, Config.from_dict(data), options.log, options.fmt, limit)


def _record(trial: TrialOutcome, run: TrialRun, fraction: float) -> TrialOutcome:
    trial.seconds += run.seconds
    trial.error = run.error
    if run.summary is not None:
        trial.summary, trial.fraction = run.summary, fraction
    trial.rungs.append(
        {
            "fraction": fraction,
            "seconds": round(run.seconds, 3),
            "error": run.error,
            **(run.summary or {}),
        }
    )
    return trial


def _promoted_count(alive: int, eta: int) -> int:
    return math.ceil(alive / eta) + 1  # the top 1/eta, and the base config


def _promote(alive: list[TrialOutcome], metric: str | None, eta: int) -> list[TrialOutcome]:
    """The best ``1/eta`` go on, and the base config; all of them when nothing was measured."""
    if metric is None or all(trial.metric(metric) is None for trial in alive):
        return alive
    ranked = sort_trials(alive, metric)
    kept = ranked[: math.ceil(len(alive) / eta)]
    kept += [trial for trial in ranked if trial.number == 0 and trial not in kept]
    return sorted(kept, key=lambda trial: trial.number)


def _finished_with(trial: TrialOutcome, metric: str | None) -> bool:
    return (
        trial.ok and trial.fraction >= 1 and metric is not None and trial.metric(metric) is not None
    )


# --------------------------------------------------------------------------- output


def format_settings(settings: Settings) -> str:
    if not settings:
        return "(base config)"
    return " ".join(f"{key}={_show(value)}" for key, value in settings.items())


def _show(value: Any) -> str:
    if isinstance(value, list) and all(_is_pair(pair) for pair in value):
        return "[" + ",".join(f"{a}*{b}" for a, b in value) + "]"  # crosses, shortly
    return json.dumps(value, separators=(",", ":"))


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def format_table(report: TuneReport) -> str:
    """The trials best first: rank, trial number, share of the log, metric, seconds, settings."""
    metric = report.metric or "metric"
    lines = [f"{'rank':>4}  {'trial':>5}  {'log':>4}  {metric:>10}  {'seconds':>8}  settings"]
    for rank, trial in enumerate(report.trials, start=1):
        changed = format_settings(changed_settings(trial.settings, report.base_config))
        if not trial.ok:
            lines.append(
                f"{'-':>4}  {trial.number:>5}  {'-':>4}  {'failed':>10}  {trial.seconds:>8.1f}  "
                f"{changed}: {trial.error}"
            )
            continue
        value = trial.metric(report.metric) if report.metric else None
        shown = "-" if value is None else f"{value:.4f}"
        lines.append(
            f"{rank:>4}  {trial.number:>5}  {trial.fraction:>4.0%}  {shown:>10}  "
            f"{trial.seconds:>8.1f}  {changed}"
        )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _without_none(value: Any) -> Any:
    # TOML has no null: a missing key means the default
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def write_best_config(path: str | Path, report: TuneReport, log: str) -> Path:
    """The winning config as TOML (atomically), with what it scored in a comment."""
    target = Path(path)
    data = Config.from_dict(report.best_config()).to_dict()
    header = [f"# written by `freshrank tune` on {log}"]
    if report.best is not None and report.metric is not None:
        best, base = report.best.metric(report.metric), report.base.metric(report.metric)
        header.append(
            f"# {report.metric} {_number(best)} by progressive validation (base: {_number(base)})"
        )
        header.append(
            f"# tuned: {format_settings(changed_settings(report.best.settings, report.base_config))}"
        )
    text = "\n".join(header) + "\n\n" + tomli_w.dumps(_without_none(data))
    write_atomically(target, text.encode("utf-8"))
    return target


# --------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _eta(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2, got {value}")
    return value


def _metric(text: str) -> str:
    if not METRIC_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"choose logloss, auc, hr@K or ndcg@K, got {text!r}")
    return text


def add_tune_parser(sub: Any) -> None:
    """The ``tune`` subcommand (``sub``: the subparsers of the freshrank parser)."""
    p = sub.add_parser(
        "tune", help="search learning settings by progressive validation; write the best config"
    )
    p.add_argument("path", help="log file (MovieLens: the ml-100k folder or its u.data)")
    # "auto" (format detection) is used as soon as the replay readers offer it
    auto = "auto" in FORMATS
    p.add_argument("--format", required=not auto, default="auto" if auto else None, choices=FORMATS)
    p.add_argument("--config", help="base config (TOML), trial 0; default: the embedded defaults")
    p.add_argument("--space", help="search space (TOML or .json): section.key = [candidates]")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="candidates for one key, e.g. ftrl.alpha=0.05,0.1 or model.crosses=[[], [...]] "
        "(repeatable; overrides the defaults and --space for that key)",
    )
    p.add_argument(
        "--no-defaults",
        action="store_true",
        help="search only the keys of --space and --set, not the default space",
    )
    p.add_argument("--trials", type=_positive_int, default=12, help="trials, the base included")
    p.add_argument("--seed", type=int, default=0, help="random search seed")
    p.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, help="processes")
    p.add_argument(
        "--metric", type=_metric, help="logloss, auc, hr@10, ndcg@10 (default: from the data)"
    )
    p.add_argument("--eta", type=_eta, default=3, help="successive halving: keep the best 1/eta")
    p.add_argument(
        "--min-fraction",
        type=_fraction,
        default=1 / 3,
        help="share of the log of the first halving rung (1: plain random search)",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"best config (default {DEFAULT_OUT})")
    p.add_argument("--json", help="also write the results as JSON to this file ('-': stdout)")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress on stderr")
    p.set_defaults(func=cmd_tune)


def _print_progress(trial: TrialOutcome, run: TrialRun, fraction: float) -> None:
    if run.error:
        text = f"failed: {run.error}"
    else:
        shown = [
            f"{k}={v:.4f}"
            for k, v in trial.summary.items()
            if METRIC_PATTERN.fullmatch(k) and isinstance(v, int | float)
        ]
        text = " ".join(shown) or "no metric"
    print(
        f"tune: trial {trial.number} on {fraction:.0%} of the log: {text} ({run.seconds:.1f}s)",
        file=sys.stderr,
        flush=True,
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_tune(args: argparse.Namespace) -> int:
    base = Config.load(args.config) if args.config else Config()
    if not Path(args.path).exists():
        print(f"freshrank tune: {args.path} does not exist", file=sys.stderr)
        return 2
    options = TuneOptions(
        log=args.path,
        fmt=args.format,
        base=base,
        space=build_space(base, args.space, args.set, defaults=not args.no_defaults),
        trials=args.trials,
        seed=args.seed,
        jobs=args.jobs,
        metric=args.metric,
        eta=args.eta,
        min_fraction=args.min_fraction,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)  # end the workers on SIGTERM too
    try:
        report = run_tune(options, None if args.quiet else _print_progress)
    except KeyboardInterrupt:
        print("freshrank tune: interrupted, workers ended, nothing written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return _report(report, args)


def _report(report: TuneReport, args: argparse.Namespace) -> int:
    # with --json - stdout is the JSON alone; the table goes to stderr
    print(format_table(report), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        text = json.dumps(report.to_dict(), indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    if report.best is None:
        print(
            f"freshrank tune: no trial finished with {report.metric or 'a metric'}; "
            "nothing written",
            file=sys.stderr,
        )
        return 1
    path = write_best_config(args.out, report, args.path)
    metric = report.metric or ""
    best, base = _number(report.best.metric(metric)), _number(report.base.metric(metric))
    print(
        f"best: trial {report.best.number}, {metric} {best} (base config: {base}); "
        f"{report.seconds:.1f}s; wrote {path}"
    )
    return 0
