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

This module is the command line; the work is done by one module per job:

* runtime/tune_space.py: the search space (defaults, space file, ``--set``);
* runtime/tune_search.py: random search, successive halving, the report;
* runtime/tune_trial.py: one trial, as a worker runs it;
* runtime/tune_workers.py: the worker processes and ending them on Ctrl-C;
* runtime/tune_output.py: the table of trials and the best config as TOML.

Their public names are importable from here too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from runtime.config import Config
from runtime.replay import FORMATS
from runtime.tune_output import format_number, format_table, write_best_config
from runtime.tune_search import (
    TrialOutcome,
    TuneOptions,
    TuneReport,
    choose_metric,
    run_tune,
    rung_fractions,
    sample_settings,
    sort_trials,
)
from runtime.tune_space import build_space, default_space, load_space, parse_set
from runtime.tune_trial import TrialJob, TrialRun
from runtime.tune_workers import WorkerSlots

__all__ = [
    "TrialJob",
    "TrialOutcome",
    "TrialRun",
    "TuneOptions",
    "TuneReport",
    "WorkerSlots",
    "add_tune_parser",
    "build_space",
    "choose_metric",
    "cmd_tune",
    "default_space",
    "format_table",
    "load_space",
    "parse_set",
    "run_tune",
    "rung_fractions",
    "sample_settings",
    "sort_trials",
    "write_best_config",
]

DEFAULT_OUT = "freshrank-tuned.toml"
METRIC_PATTERN = re.compile(r"logloss|auc|(hr|ndcg)@[1-9][0-9]*")


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
    best, base = (
        format_number(report.best.metric(metric)),
        format_number(report.base.metric(metric)),
    )
    print(
        f"best: trial {report.best.number}, {metric} {best} (base config: {base}); "
        f"{report.seconds:.1f}s; wrote {path}"
    )
    return 0
