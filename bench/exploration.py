"""Exploration for cold start, measured against the simulator's known true CTRs.

World (``actors.simulator``, one seed per run): users with tastes over genres,
items with genres and a hidden quality, new items appearing over time.  The same
seed gives every policy the same world: the same arriving users, the same new
items at the same rounds, the same drift and the same click uniforms per slot.

Model: the embedded default (``Config()``: its hash bits, crosses and FTRL
settings), built from the pieces the System wires together (``Featurizer`` for
items and profiles; ``expand`` → ``GradientAggregator.logistic_step`` →
``apply_gradients`` for impressions, one shard) and ranked by the System's own
``Ranker`` with the ``ExplorationPolicy`` under test: the code that
``GET /v1/recommend?explore=`` runs.  Items the user saw are not excluded
(``exclude_seen = false``), so the best k items are defined every round.

Two worlds (``--worlds``): ``genres``, the simulator as it is (12 genres: an item's
genres, known at once, predict much of its CTR for a user), and ``no-content``
(``n_genres = 1``: every item has the same genre, so an item's CTR can only be
learned from its own impressions: pure cold start).

Protocol, per world, seed and policy:

1. the catalog is loaded; the model starts empty (``--warmup 0``, the default: cold
   start).  ``--warmup N`` first learns N organic events of the simulator, whose
   own choices show a uniformly random item 30 % of the time, so that log is
   itself heavily explored;
2. each of ``--rounds`` rounds advances the simulator by one organic event (the
   clock, drift and new-item arrivals; the event itself is dropped), takes that
   event's user as the arriving user, asks the ranker for k items, draws clicks
   from the TRUE CTRs of the shown items, and learns the k impressions
   (clicked = 1, not clicked = 0) in batches of ``--learn-every`` rounds;
3. regret of a round = sum of the k best true CTRs of the current catalog for that
   user − sum of the true CTRs of the k shown items (expected clicks lost);
4. time to learn a new item (one arriving during the rounds): every
   ``--check-every`` rounds the model's CTR of the item is compared with its true
   CTR, both averaged over its audience: the ``--audience`` share (25 %) of a fixed
   panel of ``--panel`` users with the highest true CTR for it.  (Over all users
   the comparison says little: a model that learns only from what it shows
   over-predicts what it never shows, new or old.)  The item is learned at the first
   check where ``|model − true| <= max(rel × true, abs)`` (20 % or 0.02), counted
   in rounds and in impressions of the item since its arrival; items not learned
   by the end are censored and counted.  ``learned within H rounds`` is the share
   of the items that arrived at least H rounds before the end that were learned
   within H rounds (free of censoring).

    python bench/exploration.py            # 2 worlds x 11 policies x 5 seeds, ~ 4 min idle
    python bench/exploration.py --seeds 0 --rounds 1000 --policies off thompson
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from actors.batching import batch_from_events
from actors.events import validate_event
from actors.exploration import ExplorationPolicy, WeightPosterior
from actors.features import BaseFeatures, Catalog, FeatureSpace, UserState, expand, score_items
from actors.featurizer import Featurizer
from actors.ftrl import FTRLParams, GradientAggregator, apply_gradients, sigmoid
from actors.learner import ParameterStore
from actors.ranker import Ranker
from actors.simulator import Simulator, SimulatorConfig
from runtime.config import Config

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PolicySpec:
    name: str
    mode: str
    scale: float = 1.0
    epsilon: float = 0.0

    def build(self, seed: int) -> ExplorationPolicy:
        return ExplorationPolicy.from_settings(self.mode, self.scale, self.epsilon, seed)


DEFAULT_POLICIES = (
    PolicySpec("off", "off"),
    *(PolicySpec(f"thompson s={s:g}", "thompson", scale=s) for s in (0.1, 0.25, 0.5, 1.0, 2.0)),
    *(PolicySpec(f"epsilon e={e:g}", "epsilon", epsilon=e) for e in (0.01, 0.02, 0.05, 0.1, 0.2)),
)


@dataclass(frozen=True)
class Setup:
    rounds: int = 4000
    k: int = 5
    n_users: int = 300
    n_items: int = 150
    new_item_rate: float = 0.01  # per round (the simulator's per-event rate)
    ctr_scale: float = 3.0  # weight of taste (vs the hidden item quality) in the true CTR
    n_genres: int = 12  # 1: the genre says nothing, only an item's own impressions do
    warmup: int = 0
    learn_every: int = 4
    panel: int = 60
    audience: float = 0.25  # share of the panel an item's CTR is judged on (who likes it most)
    check_every: int = 50
    tolerance_rel: float = 0.2
    tolerance_abs: float = 0.02
    horizon: int = 1000  # rounds: the share of new items learned within it is censoring-free


@dataclass
class NewItem:
    row: int
    arrived: int  # round
    impressions: int = 0
    learned_round: int | None = None
    learned_impressions: int | None = None


@dataclass
class RunResult:
    policy: str
    seed: int
    regret: float
    clicks: int
    impressions: int
    best_possible_clicks: float
    new_items: int
    learned: int
    censored: int
    learned_within: float | None  # share of the items that arrived >= horizon rounds before the end
    rounds_to_learn_mean: float | None
    impressions_to_learn_mean: float | None
    new_item_impressions: int
    seconds: float
    regret_curve: list[float] = field(default_factory=list)


class Learner:
    """The System's model for one shard without the actors: items and user profiles go
    through the ``Featurizer``; impressions are learned with ``expand`` →
    ``GradientAggregator.logistic_step`` → ``apply_gradients`` as the trainer and learner do."""

    def __init__(self, config: Config, sim: Simulator) -> None:
        c = config
        self.space = FeatureSpace(c.model.bits, c.model.seed, [(a, b) for a, b in c.model.crosses])
        self.params = FTRLParams(c.ftrl.alpha, c.ftrl.beta, c.ftrl.l1, c.ftrl.l2)
        self.store = ParameterStore(self.space.size, self.params)
        self.catalog = Catalog()
        self.users = UserState()
        self.featurizer = Featurizer(self.space, self.catalog, self.users)
        self.aggregate = GradientAggregator(self.space.size)
        self.ranker = Ranker(
            self.space,
            self.store.w,
            self.catalog,
            self.users,
            exclude_seen=False,
            posterior=WeightPosterior(self.store.n, self.params),
        )
        self.seq = 0
        self.upsert(sim.items())
        self._profiles = self._load_profiles(sim)

    def upsert(self, items: Sequence[dict[str, Any]]) -> None:
        batch = batch_from_events([validate_event(e) for e in items], seq=self.seq)
        self.featurizer.featurize(batch)
        self.seq += 1

    def _load_profiles(self, sim: Simulator) -> dict[str, BaseFeatures]:
        """Every user's profile (as their first request would carry it), hashed once."""
        some_item = self.catalog.ids[0]
        events = [
            {"user": u, "item": some_item, "label": 0, "user_features": sim.user_features(u)}
            for u in sim.user_ids()
        ]
        self.featurizer.featurize(batch_from_events([validate_event(e) for e in events]))
        return {u: self.ranker.user_features(u)[0] for u in sim.user_ids()}

    def learn(self, users: Sequence[str], item_rows: Sequence[int], labels: Sequence[int]) -> None:
        if not users:
            return
        rows = [self._profiles[u] for u in users]
        ptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([r.ptr[-1] for r in rows], out=ptr[1:])
        user = BaseFeatures(
            ptr,
            np.concatenate([r.ns for r in rows]),
            np.concatenate([r.raw for r in rows]),
            np.concatenate([r.x for r in rows]),
        )
        indptr, indices, values = expand(
            self.space, user, np.asarray(item_rows, np.int64), self.catalog
        )
        _, touched, grads = self.aggregate.logistic_step(
            self.store.w,
            indptr,
            indices,
            values,
            np.asarray(labels, np.float64),
            np.ones(len(rows)),
        )
        apply_gradients(self.store.z, self.store.n, touched, grads, self.params, self.store.w)

    def predicted_ctr(self, users: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """Model CTRs, shape (len(users), len(rows))."""
        out = np.empty((len(users), rows.size))
        for j, user in enumerate(users):
            out[j] = sigmoid(
                score_items(self.space, self._profiles[user], self.catalog, self.store.w, rows)
            )
        return out


def _close(predicted: np.ndarray, truth: np.ndarray, setup: Setup) -> np.ndarray:
    return np.abs(predicted - truth) <= np.maximum(setup.tolerance_rel * truth, setup.tolerance_abs)


class Run:
    """One policy on the world of one seed; :meth:`play` runs every round."""

    def __init__(self, spec: PolicySpec, seed: int, setup: Setup, config: Config) -> None:
        self.spec, self.seed, self.setup = spec, seed, setup
        self.sim = Simulator(
            SimulatorConfig(
                seed=seed,
                n_users=setup.n_users,
                n_items=setup.n_items,
                new_item_rate=setup.new_item_rate,
                ctr_scale=setup.ctr_scale,
                n_genres=setup.n_genres,
                max_genres_per_item=min(3, setup.n_genres),
            )
        )
        self.learner = Learner(config, self.sim)
        self.policy = spec.build(seed)
        users = self.sim.user_ids()
        self.panel = [str(u) for u in np.random.default_rng([seed, 1]).choice(users, setup.panel)]
        self.clicks_rng = np.random.default_rng([seed, 2])
        self.new_items: list[NewItem] = []
        self.new_by_row: dict[int, NewItem] = {}
        self.queue: tuple[list[str], list[int], list[int]] = ([], [], [])
        self.regret = self.best_total = 0.0
        self.clicks = 0
        self.curve: list[float] = []

    def play(self) -> RunResult:
        started = time.perf_counter()
        self._warm_up()
        for t in range(self.setup.rounds):
            self._round(t)
            if (t + 1) % self.setup.learn_every == 0:
                self._learn_queue()
            if (t + 1) % self.setup.check_every == 0:
                self._check_new_items(t + 1)
                self.curve.append(round(self.regret, 3))
        return self._result(time.perf_counter() - started)

    def _warm_up(self) -> None:
        """Organic events of the simulator (its own noisy choices), learned before round 0."""
        for event in self.sim.next_batch(self.setup.warmup):
            if "user" not in event:
                self.learner.upsert([event])
                continue
            self._enqueue(event["user"], self.learner.catalog.rows[event["item"]], event["label"])
        self._learn_queue()

    def _round(self, t: int) -> None:
        arriving = self.sim.next_batch(1)  # the clock, drift and new items; its event is dropped
        self._add_items([e for e in arriving if "user" not in e], t)
        user = arriving[-1]["user"]
        ranked = self.learner.ranker.recommend(user, self.setup.k, explore=self.policy)
        shown = np.array([self.learner.catalog.rows[entry["item"]] for entry in ranked], np.int64)
        truth = self.sim.true_ctr_matrix([user])[0]
        assert truth.size == len(self.learner.catalog), "catalog and simulator disagree"
        best = float(np.sort(truth)[-self.setup.k :].sum())
        expected = truth[shown]
        self.regret += best - float(expected.sum())
        self.best_total += best
        clicked = self.clicks_rng.random(self.setup.k)[: shown.size] < expected
        self.clicks += int(clicked.sum())
        for row, label in zip(shown, clicked, strict=True):
            fresh = self.new_by_row.get(int(row))
            if fresh is not None:
                fresh.impressions += 1
            self._enqueue(user, int(row), int(label))

    def _add_items(self, upserts: list[dict[str, Any]], t: int) -> None:
        if not upserts:
            return
        self.learner.upsert(upserts)
        for event in upserts:
            item = NewItem(self.learner.catalog.rows[event["item"]], t)
            self.new_items.append(item)
            self.new_by_row[item.row] = item

    def _enqueue(self, user: str, row: int, label: int) -> None:
        self.queue[0].append(user)
        self.queue[1].append(row)
        self.queue[2].append(label)

    def _learn_queue(self, size: int = 256) -> None:
        users, rows, labels = self.queue
        for lo in range(0, len(users), size):
            hi = lo + size
            self.learner.learn(users[lo:hi], rows[lo:hi], labels[lo:hi])
        self.queue = ([], [], [])

    def _check_new_items(self, now: int) -> None:
        """An item's CTR is judged on its audience: the panel users who like it most."""
        todo = [item for item in self.new_items if item.learned_round is None]
        if not todo:
            return
        rows = np.array([item.row for item in todo], np.int64)
        truth = self.sim.true_ctr_matrix(self.panel)[:, rows]
        predicted = self.learner.predicted_ctr(self.panel, rows)
        audience = max(1, round(self.setup.audience * len(self.panel)))
        top = np.argsort(-truth, axis=0, kind="stable")[:audience]
        true_ctr = np.take_along_axis(truth, top, axis=0).mean(axis=0)
        model_ctr = np.take_along_axis(predicted, top, axis=0).mean(axis=0)
        for item, ok in zip(todo, _close(model_ctr, true_ctr, self.setup), strict=True):
            if ok:
                item.learned_round = now - item.arrived
                item.learned_impressions = item.impressions

    def _learned_within(self, horizon: int) -> float | None:
        old_enough = [i for i in self.new_items if i.arrived + horizon <= self.setup.rounds]
        if not old_enough:
            return None
        fast = [i for i in old_enough if i.learned_round is not None and i.learned_round <= horizon]
        return len(fast) / len(old_enough)

    def _result(self, seconds: float) -> RunResult:
        reached = [item for item in self.new_items if item.learned_round is not None]
        return RunResult(
            policy=self.spec.name,
            seed=self.seed,
            regret=self.regret,
            clicks=self.clicks,
            impressions=self.setup.rounds * self.setup.k,
            best_possible_clicks=self.best_total,
            new_items=len(self.new_items),
            learned=len(reached),
            censored=len(self.new_items) - len(reached),
            learned_within=self._learned_within(self.setup.horizon),
            rounds_to_learn_mean=_mean([i.learned_round for i in reached]),
            impressions_to_learn_mean=_mean([i.learned_impressions for i in reached]),
            new_item_impressions=sum(i.impressions for i in self.new_items),
            seconds=seconds,
            regret_curve=self.curve,
        )


def run_policy(
    spec: PolicySpec, seed: int, setup: Setup, config: Config | None = None
) -> RunResult:
    """One run of one policy on the world of ``seed``."""
    return Run(spec, seed, setup, config or Config()).play()


def _mean(values: Sequence[int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _stats(values: Sequence[float | None]) -> dict[str, float | None]:
    present = np.array([v for v in values if v is not None], np.float64)
    if present.size == 0:
        return {"mean": None, "std": None}
    std = float(present.std(ddof=1)) if present.size > 1 else None
    return {"mean": float(present.mean()), "std": std}


def summarise(results: Sequence[RunResult], policies: Sequence[PolicySpec]) -> list[dict[str, Any]]:
    """Per policy: mean ± std (over seeds) of each figure, and the paired regret difference
    against ``off`` on the same seeds (the worlds are identical, so the pairing is exact)."""
    off = {r.seed: r.regret for r in results if r.policy == "off"}
    rows = []
    for spec in policies:
        mine = [r for r in results if r.policy == spec.name]
        diffs = [r.regret - off[r.seed] for r in mine if r.seed in off]
        rows.append(
            {
                "policy": spec.name,
                "seeds": len(mine),
                "regret": _stats([r.regret for r in mine]),
                "regret_minus_off": _stats(diffs),
                "wins_vs_off": sum(d < 0 for d in diffs),
                "clicks": _stats([r.clicks for r in mine]),
                "new_items": _stats([r.new_items for r in mine]),
                "censored": _stats([r.censored for r in mine]),
                "learned_within": _stats([r.learned_within for r in mine]),
                "rounds_to_learn": _stats([r.rounds_to_learn_mean for r in mine]),
                "impressions_to_learn": _stats([r.impressions_to_learn_mean for r in mine]),
                "new_item_impressions": _stats([r.new_item_impressions for r in mine]),
            }
        )
    return rows


def paired_difference(results: Sequence[RunResult], a: str, b: str) -> dict[str, float | None]:
    """Regret of policy ``a`` minus policy ``b`` on the same seeds: mean, standard error."""
    regret_b = {r.seed: r.regret for r in results if r.policy == b}
    diffs = [r.regret - regret_b[r.seed] for r in results if r.policy == a and r.seed in regret_b]
    stats = _stats(diffs)
    se = None if stats["std"] is None else stats["std"] / math.sqrt(len(diffs))
    return {"mean": stats["mean"], "se": se, "seeds_lower": sum(d < 0 for d in diffs)}


def verdict(summary: Sequence[dict[str, Any]], results: Sequence[RunResult]) -> dict[str, Any]:
    """Target: the best Thompson scale below no exploration and below ε-greedy at its best ε."""
    by_mode: dict[str, list[dict[str, Any]]] = {"off": [], "thompson": [], "epsilon": []}
    for row in summary:
        by_mode[row["policy"].split()[0]].append(row)
    if not all(by_mode.values()):
        return {"met": None, "reason": "needs off, thompson and epsilon policies"}

    def best(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return min(rows, key=lambda r: r["regret"]["mean"])

    thompson, epsilon, off = best(by_mode["thompson"]), best(by_mode["epsilon"]), by_mode["off"][0]
    t, e, o = (r["regret"]["mean"] for r in (thompson, epsilon, off))
    return {
        "best_thompson": thompson["policy"],
        "best_epsilon": epsilon["policy"],
        "thompson_regret": t,
        "epsilon_regret": e,
        "off_regret": o,
        "thompson_minus_off": paired_difference(results, thompson["policy"], "off"),
        "thompson_minus_best_epsilon": paired_difference(
            results, thompson["policy"], epsilon["policy"]
        ),
        "below_off": t < o,
        "below_best_epsilon": t < e,
        "met": t < o and t < e,
    }


def _fmt(stat: dict[str, float | None], digits: int = 0) -> str:
    if stat["mean"] is None:
        return "—"
    if stat["std"] is None:  # one seed with a value
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _paired(row: dict[str, Any]) -> str:
    """Mean paired difference against off ± its standard error."""
    diff = row["regret_minus_off"]
    if diff["mean"] is None or diff["std"] is None or row["policy"] == "off":
        return "—"
    return f"{diff['mean']:+.0f} ± {diff['std'] / math.sqrt(row['seeds']):.0f}"


def print_table(summary: Sequence[dict[str, Any]], horizon: int) -> None:
    """A markdown table (mean ± std over seeds, except the paired column: ± standard error)."""
    print(
        "| policy | regret | regret − off (± s.e.) | seeds below off | clicks "
        f"| new items | censored | learned within {horizon} rounds "
        "| rounds to learn | impressions to learn |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in summary:
        print(
            f"| {row['policy']} | {_fmt(row['regret'])} | {_paired(row)} "
            f"| {row['wins_vs_off']}/{row['seeds']} | {_fmt(row['clicks'])} "
            f"| {_fmt(row['new_items'], 1)} | {_fmt(row['censored'], 1)} "
            f"| {_fmt(row['learned_within'], 2)} | {_fmt(row['rounds_to_learn'])} "
            f"| {_fmt(row['impressions_to_learn'], 1)} |"
        )


def _policies(names: Sequence[str] | None) -> list[PolicySpec]:
    if not names:
        return list(DEFAULT_POLICIES)
    chosen = [p for p in DEFAULT_POLICIES if p.name in names or p.mode in names]
    if not chosen:
        raise SystemExit(f"no policy matches {names}; known: {[p.name for p in DEFAULT_POLICIES]}")
    return chosen


WORLDS = {
    # the simulator as it is: an item's genres predict much of its CTR for a user
    "genres": Setup(),
    # one genre for every item: an item's CTR is known only from its own impressions
    "no-content": Setup(rounds=2000, n_users=100, n_items=50, n_genres=1),
}


def run_world(
    name: str, setup: Setup, seeds: Sequence[int], policies: Sequence[PolicySpec]
) -> dict[str, Any]:
    print(f"world {name}: {asdict(setup)}", flush=True)
    results = []
    for seed in seeds:
        for spec in policies:
            result = run_policy(spec, seed, setup)
            results.append(result)
            print(
                f"  seed {seed} {spec.name:16s} regret {result.regret:8.1f} "
                f"clicks {result.clicks:6d} censored {result.censored}/{result.new_items} "
                f"({result.seconds:.1f} s)",
                flush=True,
            )
    summary = summarise(results, policies)
    print()
    print_table(summary, setup.horizon)
    outcome = verdict(summary, results)
    print(json.dumps(outcome, indent=1), flush=True)
    return {
        "setup": asdict(setup),
        "summary": summary,
        "verdict": outcome,
        "runs": [asdict(r) for r in results],
    }


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, str(BENCH_DIR))
    from benchutil import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", nargs="+", choices=list(WORLDS), default=list(WORLDS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--policies", nargs="*", help="names or modes (default: all)")
    for name, value in asdict(Setup()).items():
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, type=type(value), help="overrides every world's value")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "exploration.json")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in asdict(Setup()) and v is not None}
    policies = _policies(args.policies)
    started = time.perf_counter()
    worlds = {
        name: run_world(name, replace(WORLDS[name], **overrides), args.seeds, policies)
        for name in args.worlds
    }
    report = {
        "seeds": args.seeds,
        "worlds": worlds,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"{report['seconds']} s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
