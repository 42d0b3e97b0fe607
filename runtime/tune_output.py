"""What ``freshrank tune`` prints and writes: the table of trials and the best config as
TOML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomli_w

from runtime.config import Config
from runtime.snapshots import write_atomically
from runtime.tune_search import TuneReport, changed_settings
from runtime.tune_space import Settings


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


def format_number(value: float | None) -> str:
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
            f"# {report.metric} {format_number(best)} by progressive validation (base: {format_number(base)})"
        )
        header.append(
            f"# tuned: {format_settings(changed_settings(report.best.settings, report.base_config))}"
        )
    text = "\n".join(header) + "\n\n" + tomli_w.dumps(_without_none(data))
    write_atomically(target, text.encode("utf-8"))
    return target
