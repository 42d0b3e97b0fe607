"""Random search with successive halving on prefixes of the log: the trials, the rungs,
and the report of every trial, best first (see runtime/tune.py for the method)."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import Config, ConfigError
from runtime.replay import clean, open_log
from runtime.tune_space import Settings, Space, apply_settings, lookup_setting
from runtime.tune_trial import TrialJob, TrialRun
from runtime.tune_workers import WorkerSlots

LOWER_IS_BETTER = frozenset({"logloss"})


def _fingerprint(settings: Settings) -> str:
    return json.dumps(settings, sort_keys=True, default=repr)


def sample_settings(space: Space, count: int, seed: int, base: dict[str, Any]) -> list[Settings]:
    """Up to ``count`` distinct settings, none equal to the base config, drawn uniformly
    (every combination when the space has no more than that)."""
    keys = list(space)
    sizes = [len(space[key]) for key in keys]
    rng = random.Random(seed)
    seen = {_fingerprint({key: lookup_setting(base, key) for key in keys})}
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
    return {key: value for key, value in settings.items() if lookup_setting(base, key) != value}


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
