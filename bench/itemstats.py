"""Ranking quality and cost of ``actors/itemstats.py`` on every recommendation data set.

Each setting of :class:`~actors.itemstats.ItemStatsParams` is one shared model
behind several peers of ``bench/protocol.py`` ``run_ranking`` (same events, same
protocol as every other system): each signal on its own, and their 50/50 blend of
the normalised scores the product gets.  ``blend (allowed max)`` divides each raw
signal by its maximum over the candidates the user has not seen instead, as the
reference recency recommenders do, to show what the product's normalisation costs.

``--transforms``: how the signals are best fed to a logistic model.  A tiny online
logistic regression (per-coordinate AdaGrad, one weight per input and a bias)
learns from each positive and the protocol's 4 uniform negatives over
``[signals..., log1p(popularity)]``, with the signals as normalised scores, as
``log1p`` of the raw scores, or both; and over the normalised signals alone, to
show what the popularity input does under uniform negatives.

    PYTHONPATH=. python bench/itemstats.py [--data ../shared/data] [--sets ml-100k ...]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from actors.itemstats import ItemStats, ItemStatsParams
from bench.peers import PopularityPeer
from bench.protocol import (
    Example,
    Feature,
    RankingPeer,
    RankingStream,
    load_movielens,
    load_movietweetings,
    load_rechorus,
    run_ranking,
)

DATA_SETS = ("ml-100k", "movietweetings-100k", "amazon-grocery-rechorus")
DEFAULTS = ItemStatsParams()


# ----------------------------------------------------------------------------- data

LOADERS: dict[str, Callable[[Path], RankingStream]] = {
    "ml-100k": load_movielens,
    "movietweetings-100k": load_movietweetings,
    "amazon-grocery-rechorus": load_rechorus,
}


# ----------------------------------------------------------------------------- peers


class SharedStats:
    """One ItemStats learned once per event and the users' histories, for several views."""

    def __init__(self, params: ItemStatsParams, history: int) -> None:
        self.params = params
        self.stats = ItemStats(params)
        self.recent: dict[str, list[int]] = {}
        self.seen: dict[str, set[int]] = {}
        self.history = history
        self._cached: tuple[str, int] | None = None
        self._raw = np.zeros((len(ItemStats.names), 0))
        self._events = 0

    def raw(self, user: str, candidates: np.ndarray) -> np.ndarray:
        """Raw scores of the candidates, computed once per event for all views."""
        key = (user, self._events)
        if self._cached != key:
            recent = np.array(self.recent.get(user, []), np.int64)
            self._raw = self.stats.scores_at(recent, candidates, raw=True)
            self._cached = key
        return self._raw

    def learn(self, user: str, item: int) -> None:
        recent = self.recent.setdefault(user, [])
        self.stats.learn(np.array(recent, np.int64), item)
        recent.append(item)
        del recent[: -self.history]
        self.seen.setdefault(user, set()).add(item)
        self._events += 1


class SignalPeer:
    """A view of a SharedStats: one signal, the normalised blend, or the allowed-max blend."""

    def __init__(self, shared: SharedStats, view: str, learns: bool) -> None:
        self.shared, self.view, self.learns = shared, view, learns
        self.name = f"{view} {_label(shared.params)}"
        self.settings = asdict(shared.params) | {"view": view}

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        raw = self.shared.raw(user, candidates)
        if self.view in ItemStats.names:
            return raw[ItemStats.names.index(self.view)]
        if self.view == "blend":
            # candidates are every known row, so this is the product's normaliser
            return _divide(raw, raw.max(axis=1, initial=0.0)).mean(axis=0)
        allowed = np.ones(len(candidates), bool)
        allowed[list(self.shared.seen.get(user, ()))] = False
        return _divide(raw, raw[:, allowed].max(axis=1, initial=0.0)).mean(axis=0)

    def learn(self, examples: Sequence[Example]) -> None:
        if self.learns:
            self.shared.learn(examples[0].user, examples[0].item_row)


def _divide(raw: np.ndarray, best: np.ndarray) -> np.ndarray:
    scale = np.where(best > 0, best, 1.0)
    return raw / scale[:, None]


def _label(p: ItemStatsParams) -> str:
    return (
        f"w{p.window} hl{p.half_life:g} mo{p.markov_order} md{p.markov_decay:g} "
        f"k{p.neighbours} g{p.admission_counters}"
    )


VIEWS = ("knn", "markov", "blend", "blend (allowed max)")


def peers_for(settings: Sequence[ItemStatsParams]) -> list[SignalPeer]:
    peers: list[SignalPeer] = []
    for params in settings:
        shared = SharedStats(params, max(params.window, params.markov_order))
        peers += [SignalPeer(shared, view, learns=v == 0) for v, view in enumerate(VIEWS)]
    return peers


def grid(base: ItemStatsParams) -> list[ItemStatsParams]:
    """The base setting and one-at-a-time moves of each parameter (a small grid)."""
    moves: dict[str, Sequence[Any]] = {
        "window": (5, 20, 50),
        "half_life": (3.0, 10.0),
        "markov_order": (3, 10),
        "markov_decay": (0.5, 0.85),
        "neighbours": (50, 200),
        "admission_counters": (8, 128),
    }
    settings = [base]
    for name, values in moves.items():
        settings += [replace(base, **{name: v}) for v in values if v != getattr(base, name)]
    return settings


def candidates(base: ItemStatsParams) -> list[ItemStatsParams]:
    """The defaults against the grid's starting point and larger neighbour lists.

    The grid started from window 10, half-life 5, Markov order 5, decay 0.7; its moves
    that helped a data set without hurting another were combined into the defaults.
    """
    start = replace(base, half_life=5.0, markov_order=5, markov_decay=0.7)
    return [base, start, replace(base, neighbours=150), replace(base, neighbours=200)]


def run_set(stream: RankingStream, settings: Sequence[ItemStatsParams]) -> list[dict[str, Any]]:
    """Every setting's views and global popularity (for scale) through ``run_ranking``."""
    peers: list[RankingPeer] = [PopularityPeer(len(stream.items))]
    results = run_ranking(stream, [*peers, *peers_for(settings)])
    return [
        {"name": r.name, "hr@10": r.hr, "ndcg@10": r.ndcg, "evaluated": r.evaluated}
        | {"seconds": r.seconds, "settings": r.settings}
        for r in results
    ]


# ----------------------------------------------------------------------------- transforms

TRANSFORMS = ("normalised", "log1p raw", "both", "normalised, no popularity")


def transform_inputs(
    normalised: np.ndarray, raw: np.ndarray, popularity: np.ndarray
) -> dict[str, np.ndarray]:
    """Each transform's input rows ``(inputs, candidates)``; the last one is the bias."""
    pop = np.log1p(popularity)[None, :]
    bias = np.ones_like(pop)
    return {
        "normalised": np.vstack([normalised, pop, bias]),
        "log1p raw": np.vstack([np.log1p(raw), pop, bias]),
        "both": np.vstack([normalised, np.log1p(raw), pop, bias]),
        "normalised, no popularity": np.vstack([normalised, bias]),
    }


class TransformCore:
    """One ItemStats, item popularity and one logistic model (AdaGrad) per transform."""

    def __init__(self, params: ItemStatsParams, n_items: int, alpha: float = 0.1) -> None:
        self.shared = SharedStats(params, max(params.window, params.markov_order))
        self.popularity = np.zeros(n_items)
        self.alpha = alpha
        sizes = {"normalised": 4, "log1p raw": 4, "both": 6, "normalised, no popularity": 3}
        self.weights = {t: np.zeros(n) for t, n in sizes.items()}
        self.squares = {t: np.full(n, 1e-8) for t, n in sizes.items()}

    def inputs(self, user: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        recent = np.array(self.shared.recent.get(user, []), np.int64)
        stats = self.shared.stats
        normalised = stats.scores_at(recent, rows)
        raw = stats.scores_at(recent, rows, raw=True)
        return transform_inputs(normalised, raw, self.popularity[rows])

    def learn(self, examples: Sequence[Example]) -> None:
        """Every model steps on the positive and its negatives, then the statistics learn."""
        user = examples[0].user
        rows = np.array([e.item_row for e in examples], np.int64)
        labels = np.array([e.label for e in examples], np.float64)
        for transform, x in self.inputs(user, rows).items():
            w = self.weights[transform]
            logits = np.clip(w @ x, -35.0, 35.0)
            gradient = x @ (1.0 / (1.0 + np.exp(-logits)) - labels)
            self.squares[transform] += gradient**2
            w -= self.alpha * gradient / np.sqrt(self.squares[transform])
        self.popularity[examples[0].item_row] += 1.0
        self.shared.learn(user, examples[0].item_row)


class TransformPeer:
    """A view of a TransformCore: ranks by one transform's logistic model."""

    def __init__(self, core: TransformCore, transform: str, learns: bool) -> None:
        self.core, self.transform, self.learns = core, transform, learns
        self.name = f"logistic over signals: {transform}"
        self.settings = {"transform": transform}

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        x = self.core.inputs(user, candidates)[self.transform]
        return np.asarray(self.core.weights[self.transform] @ x)

    def learn(self, examples: Sequence[Example]) -> None:
        if self.learns:
            self.core.learn(examples)


def run_transforms(stream: RankingStream, params: ItemStatsParams) -> list[dict[str, Any]]:
    core = TransformCore(params, len(stream.items))
    peers = [TransformPeer(core, t, learns=i == 0) for i, t in enumerate(TRANSFORMS)]
    rows = [
        {"name": r.name, "hr@10": r.hr, "ndcg@10": r.ndcg, "evaluated": r.evaluated}
        | {"seconds": r.seconds, "weights": core.weights[p.transform].round(3).tolist()}
        for r, p in zip(run_ranking(stream, peers), peers, strict=True)
    ]
    print_table("transforms", rows)
    return rows


# ----------------------------------------------------------------------------- cost


def previous_items(stream: RankingStream, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of every event's previous ``keep`` items of its user (what the trainer keeps)."""
    recent: dict[str, list[int]] = {}
    ptr, rows = [0], []
    for user, item in zip(stream.users, stream.item_rows, strict=True):
        history = recent.setdefault(user, [])
        rows += history[-keep:]
        ptr.append(len(rows))
        history.append(int(item))
    return np.array(ptr, np.int64), np.array(rows, np.int64)


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def measure_cost(stream: RankingStream, params: ItemStatsParams) -> dict[str, Any]:
    """learn_batch over the whole stream, scores() over 10,000+ rows (best of repeats)."""
    ptr, rows = previous_items(stream, max(params.window, params.markov_order))
    ItemStats(params).learn_batch(ptr[:2], rows[: ptr[1]], stream.item_rows[:1])

    def learn_all() -> ItemStats:
        stats = ItemStats(params)
        stats.learn_batch(ptr, rows, stream.item_rows)
        return stats

    learn_s = best_seconds(learn_all, 3)
    stats = learn_all()
    n_items = max(10_000, stats.n_items)
    users = rng_users(ptr, 200)
    recents = [rows[ptr[e] : ptr[e + 1]] for e in users]
    few = np.arange(5, dtype=np.int64)
    scores_s = best_seconds(lambda: [stats.scores(r, n_items) for r in recents], 5)
    at_s = best_seconds(lambda: [stats.scores_at(r, few) for r in recents], 5)
    recent_ptr = np.cumsum([0, *(len(r) for r in recents)])
    batch_rows = np.concatenate(recents)
    items_ptr = np.arange(0, 5 * len(recents) + 1, 5)
    batch_items = np.tile(few, len(recents))
    batch_s = best_seconds(
        lambda: stats.scores_at_batch(recent_ptr, batch_rows, items_ptr, batch_items), 5
    )
    cost = {
        "events": len(stream),
        "learn_us_per_event": 1e6 * learn_s / len(stream),
        "scores_us": 1e6 * scores_s / len(recents),
        "scores_items": n_items,
        "scores_at_5_us": 1e6 * at_s / len(recents),
        "scores_at_batch_5_us_per_event": 1e6 * batch_s / len(recents),
    } | stats.statistics()
    print(json.dumps(cost), flush=True)
    return cost


def rng_users(ptr: np.ndarray, count: int) -> np.ndarray:
    """Events (seeded draw) whose user has a full history, for timing scores()."""
    lengths = np.diff(ptr)
    full = np.flatnonzero(lengths == lengths.max())
    return np.random.default_rng(0).choice(full, size=min(count, len(full)), replace=False)


# ----------------------------------------------------------------------------- main


def print_table(name: str, rows: Sequence[dict[str, Any]]) -> None:
    print(f"\n{name}: HR@10 / NDCG@10 of the evaluated events")
    print(f"{'peer':<62} {'HR@10':>7} {'NDCG@10':>8} {'evaluated':>9} {'s':>6}")
    for r in rows:
        print(
            f"{r['name']:<62} {r['hr@10']:>7.4f} {r['ndcg@10']:>8.4f} "
            f"{r['evaluated']:>9} {r['seconds']:>6.1f}",
            flush=True,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sets", nargs="+", choices=DATA_SETS, default=list(DATA_SETS))
    parser.add_argument(
        "--grid", action="store_true", help="one-at-a-time moves of every parameter"
    )
    parser.add_argument(
        "--candidates", action="store_true", help="the grid's favoured moves, combined"
    )
    parser.add_argument(
        "--transforms", action="store_true", help="feed the signals to a logistic model"
    )
    parser.add_argument("--cost", action="store_true", help="time learn_batch and scores()")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report: dict[str, Any] = {"defaults": asdict(DEFAULTS)}
    settings = [DEFAULTS]
    if args.grid or args.candidates:
        settings = grid(DEFAULTS) if args.grid else candidates(DEFAULTS)
    for name in args.sets:
        folder = args.data / name
        if not folder.exists():
            print(f"{name}: skipped, {folder} does not exist")
            continue
        stream = LOADERS[name](folder)
        print(f"{name}: {len(stream):,} events, {len(stream.items):,} items", flush=True)
        rows = run_set(stream, settings)
        print_table(name, rows)
        report[name] = {"ranking": rows}
        if args.transforms:
            report[name]["transforms"] = run_transforms(stream, DEFAULTS)
        if args.cost:
            report[name]["cost"] = measure_cost(stream, DEFAULTS)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
