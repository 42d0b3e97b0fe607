"""The systems ``bench/quality.py`` compares freshrank with, as peers of ``bench/protocol.py``.

* popularity: global and time-decayed interaction counts (no learning of features);
* Vowpal Wabbit: the wheel's own C++ driver in a child process (``python -m
  vowpalwabbit ... -d /dev/stdin -p /dev/stdout``), fed VW text through a pipe.
  Candidates are sent as unlabelled (test-only) examples, which VW predicts without
  learning, in order with the labelled ones it learns: test-then-train as in VW's
  own progressive validation, at the C++ parser's speed;
* River: ``linear_model.LogisticRegression`` with ``optim.FTRLProximal`` over the
  same features and crosses as freshrank, and ``reco.FunkMF``;
* rtrec: ``models.SLIM`` through its incremental ``fit`` (what its
  ``Recommender.partial_fit`` calls).

Every peer scores through its library's public prediction API and learns one
interaction (positive, then sampled negatives) at a time.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.protocol import Example, Feature, ItemTable

# ----------------------------------------------------------------------------- popularity


class PopularityPeer:
    """Global popularity: items ranked by their number of positive interactions so far."""

    def __init__(self, n_items: int, name: str = "global popularity") -> None:
        self.name = name
        self.settings: dict[str, Any] = {}
        self.counts = np.zeros(n_items, np.int64)

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        return self.counts[candidates].astype(np.float64)

    def learn(self, examples: Sequence[Example]) -> None:
        for example in examples:
            if example.label == 1:
                self.counts[example.item_row] += 1


class DecayedPopularityPeer:
    """Popularity whose counts halve every ``half_life_s`` seconds of event time.

    Kept as log2 of the decayed count relative to the first event time, so years of
    timestamps neither overflow nor underflow (as ``actors.metrics.TimeDecayedPopularity``).
    """

    def __init__(self, n_items: int, half_life_s: float, name: str | None = None) -> None:
        self.half_life_s = half_life_s
        self.name = name or f"decayed popularity, half-life {half_life_s / 86400:g} d"
        self.settings: dict[str, Any] = {"half_life_s": half_life_s}
        self.log2_mass = np.full(n_items, -math.inf)
        self.t0: float | None = None

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        return self.log2_mass[candidates]

    def learn(self, examples: Sequence[Example]) -> None:
        for example in examples:
            if example.label != 1:
                continue
            if self.t0 is None:
                self.t0 = example.ts
            exponent = (example.ts - self.t0) / self.half_life_s
            row = example.item_row
            self.log2_mass[row] = np.logaddexp2(self.log2_mass[row], exponent)


# ----------------------------------------------------------------------------- Vowpal Wabbit

VW_NAMESPACES = {
    "user": "u",
    "u.age": "a",
    "u.gender": "s",
    "u.occupation": "o",
    "item": "i",
    "i.genre": "g",
    "i.year": "y",
}
"""freshrank namespace → VW namespace (VW's ``-q`` pairs namespaces by first letter)."""

CANDIDATE_TAG = "c"


def vw_crosses(crosses: Sequence[Sequence[str]]) -> list[str]:
    """freshrank's ``model.crosses`` as VW ``-q`` arguments (pairs VW cannot name are skipped)."""
    args: list[str] = []
    for a, b in crosses:
        if a in VW_NAMESPACES and b in VW_NAMESPACES:
            args += ["-q", VW_NAMESPACES[a] + VW_NAMESPACES[b]]
    return args


def _token(value: str) -> str:
    """A feature value as one VW token (VW splits on spaces, ':' and '|')."""
    return value.replace(" ", "_").replace(":", "_").replace("|", "_").replace("\t", "_") or "_"


def vw_namespaces(features: Sequence[Feature]) -> str:
    """Features as VW namespaces, e.g. `` |a 25-34 |s M``, grouped in first-seen order."""
    groups: dict[str, list[str]] = {}
    for namespace, value in features:
        groups.setdefault(VW_NAMESPACES.get(namespace, "x"), []).append(_token(value))
    return "".join(f" |{ns} {' '.join(values)}" for ns, values in groups.items())


class VWProcess:
    """One VW learner in a child process, fed VW text on stdin; predictions come back on stdout.

    VW writes a prediction for every example; the ones of tagged (candidate) examples
    are kept, in order, by a reader thread, which also keeps the pipe from filling up
    while the caller is writing labelled examples.
    """

    def __init__(self, args: Sequence[str]) -> None:
        self.args = list(args)
        self._stderr = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "vowpalwabbit", "--quiet", *self.args]
        self.proc = subprocess.Popen(
            [*command, "-d", "/dev/stdin", "-p", "/dev/stdout"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._values: list[float] = []
        self._taken = 0
        self._closed = False
        self._ready = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="vw-reader", daemon=True)
        self._reader.start()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text.encode("utf-8"))
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"VW {self.args} exited: {self._error()}") from None

    def take(self, n: int, timeout: float = 120.0) -> np.ndarray:
        """The next ``n`` candidate predictions (raw scores), waiting for VW to produce them."""
        with self._ready:
            self._ready.wait_for(
                lambda: len(self._values) - self._taken >= n or self._closed, timeout
            )
            if len(self._values) - self._taken < n:
                reason = "exited" if self._closed else f"gave no answer in {timeout:.0f} s"
                raise RuntimeError(f"VW {self.args} {reason}: {self._error()}")
            out = np.array(self._values[self._taken : self._taken + n])
            self._taken += n
            if self._taken > 1 << 16:  # drop what was taken, now and then
                del self._values[: self._taken]
                self._taken = 0
        return out

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        tail = b""
        suffix = b" " + CANDIDATE_TAG.encode()
        while data := os.read(fd, 1 << 20):
            lines = (tail + data).split(b"\n")
            tail = lines.pop()
            values = [float(line.split(b" ", 1)[0]) for line in lines if line.endswith(suffix)]
            if values:
                with self._ready:
                    self._values.extend(values)
                    self._ready.notify_all()
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def _error(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()[-2000:] or "(no message)"

    def close(self) -> None:
        """End of input: VW finishes, and the process and the reader thread are awaited."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=60)
        self._stderr.close()


class VWRankingPeer:
    """VW as a pointwise logistic ranker: label 1 / -1 examples, candidates scored by margin."""

    def __init__(
        self, name: str, args: Sequence[str], items: ItemTable, profiles: dict[str, list[Feature]]
    ) -> None:
        self.name = name
        self.settings: dict[str, Any] = {"vw_args": " ".join(args)}
        self.vw = VWProcess(args)
        self._item_text = [vw_namespaces(f) for f in items.features]
        self._profiles = profiles
        self._user_text: dict[str, str] = {}
        self._pending = 0

    def _user(self, user: str, features: Sequence[Feature]) -> str:
        text = self._user_text.get(user)
        if text is None:
            text = self._user_text[user] = vw_namespaces(features or [("user", user)])
        return text

    def prefetch(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> None:
        prefix = f"'{CANDIDATE_TAG}" + self._user(user, features)
        self.vw.send("".join(f"{prefix}{self._item_text[r]}\n" for r in candidates.tolist()))
        self._pending += len(candidates)

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        if not self._pending:
            self.prefetch(user, features, candidates)
        self._pending -= len(candidates)
        return self.vw.take(len(candidates))

    def learn(self, examples: Sequence[Example]) -> None:
        lines = []
        for example in examples:
            user = self._user(example.user, self._profiles.get(example.user, []))
            label = "1" if example.label == 1 else "-1"
            lines.append(f"{label}{user}{self._item_text[example.item_row]}\n")
        self.vw.send("".join(lines))

    def close(self) -> None:
        self.vw.close()


class VWCTRPeer:
    """VW as a CTR model: one namespace ``f`` with a ``column=value`` token per column."""

    def __init__(self, name: str, args: Sequence[str]) -> None:
        self.name = name
        self.settings: dict[str, Any] = {"vw_args": " ".join(args)}
        self.vw = VWProcess(args)

    @staticmethod
    def _text(features: Sequence[Feature]) -> str:
        return " |f " + " ".join(_token(f"{column}={value}") for column, value in features)

    def predict(self, features: Sequence[Feature]) -> float:
        self.vw.send(f"'{CANDIDATE_TAG}{self._text(features)}\n")
        margin = float(self.vw.take(1)[0])
        return 1.0 / (1.0 + math.exp(-margin))

    def learn(self, features: Sequence[Feature], label: int) -> None:
        self.vw.send(f"{'1' if label == 1 else '-1'}{self._text(features)}\n")

    def close(self) -> None:
        self.vw.close()


# ----------------------------------------------------------------------------- baselines (CTR)


class MeanCTRPeer:
    """The running mean of the labels seen so far (0.5 before any), as RunningMeanCTR."""

    def __init__(self, name: str = "running-mean CTR") -> None:
        self.name = name
        self.settings: dict[str, Any] = {}
        self.clicks = 0
        self.rows = 0

    def predict(self, features: Sequence[Feature]) -> float:
        return self.clicks / self.rows if self.rows else 0.5

    def learn(self, features: Sequence[Feature], label: int) -> None:
        self.clicks += label
        self.rows += 1


# ----------------------------------------------------------------------------- River


def feature_dict(
    user: Sequence[Feature], item: Sequence[Feature], crosses: Sequence[Sequence[str]]
) -> dict[str, float]:
    """freshrank's model row as a River dict: one key per base feature and per cross pair."""
    x = {f"{ns}={value}": 1.0 for ns, value in (*user, *item)}
    for a, b in crosses:
        for ns_a, value_a in user:
            if ns_a != a:
                continue
            for ns_b, value_b in item:
                if ns_b == b:
                    x[f"{a}×{b}={value_a}|{value_b}"] = 1.0
    return x


class _Side:
    """One side's features, precomputed for :func:`feature_dict`-equal rows."""

    def __init__(self, features: Sequence[Feature]) -> None:
        self.keys = {f"{ns}={value}": 1.0 for ns, value in features}
        self.by_namespace: dict[str, list[str]] = {}
        for ns, value in features:
            self.by_namespace.setdefault(ns, []).append(value)


class FeatureRows:
    """:func:`feature_dict` rows, with each user's and item's keys built once."""

    def __init__(self, items: ItemTable, crosses: Sequence[Sequence[str]]) -> None:
        self.items = [_Side(f) for f in items.features]
        self.crosses = [(a, b) for a, b in crosses]
        self._users: dict[str, _Side] = {}

    def user(self, user: str, features: Sequence[Feature]) -> _Side:
        side = self._users.get(user)
        if side is None:
            side = self._users[user] = _Side(features or [("user", user)])
        return side

    def row(self, user: _Side, item_row: int) -> dict[str, float]:
        item = self.items[item_row]
        x = user.keys | item.keys
        for a, b in self.crosses:
            for value_a in user.by_namespace.get(a, ()):
                for value_b in item.by_namespace.get(b, ()):
                    x[f"{a}×{b}={value_a}|{value_b}"] = 1.0
        return x


class RiverLRRankingPeer:
    """River ``LogisticRegression`` with ``FTRLProximal`` over freshrank's features and crosses."""

    def __init__(
        self,
        name: str,
        ftrl: dict[str, float],
        items: ItemTable,
        profiles: dict[str, list[Feature]],
        crosses: Sequence[Sequence[str]],
    ) -> None:
        from river import linear_model, optim

        self.name = name
        self.settings: dict[str, Any] = {"FTRLProximal": dict(ftrl)}
        self.model = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(**ftrl))
        self.rows = FeatureRows(items, crosses)
        self.profiles = profiles

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        side = self.rows.user(user, features)
        predict = self.model.predict_proba_one
        return np.array([predict(self.rows.row(side, r))[True] for r in candidates.tolist()])

    def learn(self, examples: Sequence[Example]) -> None:
        for example in examples:
            side = self.rows.user(example.user, self.profiles.get(example.user, []))
            self.model.learn_one(self.rows.row(side, example.item_row), example.label == 1)


class RiverLRCTRPeer:
    """River ``LogisticRegression`` with ``FTRLProximal``, one key per ``column=value``."""

    def __init__(self, name: str, ftrl: dict[str, float]) -> None:
        from river import linear_model, optim

        self.name = name
        self.settings: dict[str, Any] = {"FTRLProximal": dict(ftrl)}
        self.model = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(**ftrl))

    def predict(self, features: Sequence[Feature]) -> float:
        x = {f"{column}={value}": 1.0 for column, value in features}
        return float(self.model.predict_proba_one(x)[True])

    def learn(self, features: Sequence[Feature], label: int) -> None:
        self.model.learn_one({f"{column}={value}": 1.0 for column, value in features}, label == 1)


class FunkMFPeer:
    """River ``reco.FunkMF``: user and item latent vectors fitted to 1 (positive) / 0 (negative)."""

    def __init__(self, name: str, items: ItemTable, n_factors: int, lr: float, l2: float) -> None:
        from river import optim, reco

        self.name = name
        self.settings: dict[str, Any] = {"n_factors": n_factors, "sgd_lr": lr, "l2": l2}
        self.model = reco.FunkMF(n_factors=n_factors, optimizer=optim.SGD(lr), l2=l2, seed=0)
        self.ids = items.ids

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        predict = self.model.predict_one
        ids = self.ids
        return np.array([predict(user, ids[r]) for r in candidates.tolist()])

    def learn(self, examples: Sequence[Example]) -> None:
        for example in examples:
            self.model.learn_one(example.user, self.ids[example.item_row], float(example.label))


# ----------------------------------------------------------------------------- rtrec


class RtrecSLIMPeer:
    """rtrec ``SLIM``, learned incrementally from positives only (its API has no negatives).

    Interactions are buffered and handed to ``SLIM.fit`` (rtrec's incremental path) just
    before the next ranking, so every ranking sees every interaction before it.  rtrec
    returns a ranked list, not scores: rank r of n becomes score n - r, and items rtrec
    does not return (never interacted with) score below all of them.
    """

    def __init__(self, name: str, items: ItemTable, **slim: Any) -> None:
        from rtrec.models import SLIM

        self.name = name
        self.settings: dict[str, Any] = dict(slim)
        self.model = SLIM(**slim)
        self.ids = items.ids
        self.row_of = {item: r for r, item in enumerate(items.ids)}
        self._buffer: list[tuple[str, str, float, float]] = []

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        if self._buffer:
            self.model.fit(self._buffer, progress_bar=False)
            self._buffer = []
        ids = [self.ids[r] for r in candidates.tolist()]
        ranked = self.model.recommend(
            user, candidate_items=ids, top_k=len(ids), filter_interacted=False
        )
        # a user rtrec has not seen gets popular items as internal ids, not as item ids
        ranked = [self.model.item_ids.get(i) if isinstance(i, int) else i for i in ranked]
        position = {item: n for n, item in enumerate(ranked)}
        scores = np.full(len(ids), -1.0)
        for n, item in enumerate(ids):
            if item in position:
                scores[n] = len(ranked) - position[item]
        return scores

    def learn(self, examples: Sequence[Example]) -> None:
        for example in examples:
            if example.label == 1:
                self._buffer.append((example.user, self.ids[example.item_row], example.ts, 1.0))


# ----------------------------------------------------------------------------- sequence-aware

DENSE_ITEM_LIMIT = 4096
"""Catalogs up to this many items keep item×item counts dense (134 MB in float64 at the
limit); larger ones (MovieTweetings' 10,506 movies) keep one dict per row, because a user
touches few items there and a dense matrix per peer would not fit beside the others."""


class ItemCounts:
    """A growing item×item matrix of counts, dense for small catalogs, dict rows for large."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.dense = np.zeros((n_items, n_items)) if n_items <= DENSE_ITEM_LIMIT else None
        self.rows: dict[int, dict[int, float]] = {}

    def add_column(self, sources: np.ndarray, weights: np.ndarray, target: int) -> None:
        """counts[sources[i], target] += weights[i] (sources may repeat)."""
        if self.dense is not None:
            np.add.at(self.dense[:, target], sources, weights)
            return
        for source, weight in zip(sources.tolist(), weights.tolist(), strict=True):
            row = self.rows.setdefault(source, {})
            row[target] = row.get(target, 0.0) + weight

    def add_row(self, source: int, targets: np.ndarray, weights: np.ndarray) -> None:
        """counts[source, targets[i]] += weights[i]."""
        if self.dense is not None:
            np.add.at(self.dense[source], targets, weights)
            return
        row = self.rows.setdefault(source, {})
        for target, weight in zip(targets.tolist(), weights.tolist(), strict=True):
            row[target] = row.get(target, 0.0) + weight

    def weighted_sum(self, sources: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Σ_i weights[i] · counts[sources[i], :], one value per item."""
        if self.dense is not None:
            return np.asarray(weights @ self.dense[sources], np.float64)
        keys: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for source, weight in zip(sources.tolist(), weights.tolist(), strict=True):
            row = self.rows.get(source)
            if row:
                keys.append(np.fromiter(row.keys(), np.int64, len(row)))
                values.append(np.fromiter(row.values(), np.float64, len(row)) * weight)
        if not keys:
            return np.zeros(self.n_items)
        return np.bincount(
            np.concatenate(keys), np.concatenate(values), minlength=self.n_items
        ).astype(np.float64)


def positive_of(examples: Sequence[Example]) -> Example | None:
    """The interaction's positive (the protocol sends it first, then the negatives)."""
    return next((e for e in examples if e.label == 1), None)


def recency_weights(
    history: Sequence[int], half_life: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The user's distinct items and 2^(−age/half_life) each, age = the user's events after the
    latest one on the item (1 for every item when ``half_life`` is None)."""
    items, ages = np.unique(np.asarray(history[::-1], np.int64), return_index=True)
    if half_life is None:
        return items, np.ones(len(items))
    return items, np.exp2(-ages / half_life)


class UserHistories:
    """Each user's positives in order, and the set of distinct items among them."""

    def __init__(self) -> None:
        self.sequence: dict[str, list[int]] = {}
        self.seen: dict[str, set[int]] = {}

    def add(self, user: str, item_row: int) -> bool:
        """Record the interaction; True when the item is new for the user."""
        self.sequence.setdefault(user, []).append(item_row)
        seen = self.seen.setdefault(user, set())
        new = item_row not in seen
        seen.add(item_row)
        return new


class ItemKNNPeer:
    """Cosine item-kNN over co-occurrence counts, the user's items weighted by recency.

    ``C[l, j]`` counts the users who interacted with both l and j, ``n[l]`` the users of l.
    A user scores j as Σ_l w_l C[l, j] / sqrt(n_l n_j) over their distinct items l, with
    w_l = 2^(−age/h) and age the number of the user's events after their latest on l.
    ``half_life`` None (h = ∞) is plain item-kNN.
    """

    def __init__(self, n_items: int, half_life: float | None, name: str | None = None) -> None:
        label = "∞" if half_life is None else f"{half_life:g}"
        self.name = name or f"item-kNN cosine, recency h={label}"
        self.settings: dict[str, Any] = {"half_life_events": half_life}
        self.half_life = half_life
        self.cooccur = ItemCounts(n_items)
        self.users_of = np.zeros(n_items)
        self.histories = UserHistories()

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        history = self.histories.sequence.get(user)
        if not history:
            return np.zeros(len(candidates))
        items, weights = recency_weights(history, self.half_life)
        totals = self.cooccur.weighted_sum(items, weights / np.sqrt(self.users_of[items]))
        return (totals / np.sqrt(np.maximum(self.users_of, 1.0)))[candidates]

    def learn(self, examples: Sequence[Example]) -> None:
        positive = positive_of(examples)
        if positive is None:
            return
        row = positive.item_row
        before = self.histories.seen.get(positive.user, set())
        if row not in before and before:
            others = np.fromiter(before, np.int64, len(before))
            ones = np.ones(len(others))
            self.cooccur.add_column(others, ones, row)
            self.cooccur.add_row(row, others, ones)
        if self.histories.add(positive.user, row):
            self.users_of[row] += 1


class MarkovChainPeer:
    """A decayed Markov chain over each user's sequence of items.

    ``T[a, b]`` grows by decay^(d−1) when b is the user's next item and a the item d events
    before it (d ≤ ``order``).  A user scores j as Σ_d decay^(d−1) T[last_d, j] / rowsum(last_d)
    over their last ``order`` items (last_1 the most recent).
    """

    def __init__(self, n_items: int, order: int, decay: float, name: str | None = None) -> None:
        self.name = name or f"Markov chain k={order}, decay {decay:g}"
        self.settings: dict[str, Any] = {"order": order, "decay": decay}
        self.order = order
        self.decay = decay
        self.transitions = ItemCounts(n_items)
        self.row_sums = np.zeros(n_items)
        self.histories = UserHistories()

    def _recent(self, user: str) -> tuple[np.ndarray, np.ndarray]:
        sequence = self.histories.sequence.get(user, [])
        recent = np.asarray(sequence[-self.order :][::-1], np.int64)
        return recent, self.decay ** np.arange(len(recent), dtype=np.float64)

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        recent, weights = self._recent(user)
        if not len(recent):
            return np.zeros(len(candidates))
        weights = weights / np.maximum(self.row_sums[recent], 1e-12)
        return self.transitions.weighted_sum(recent, weights)[candidates]

    def learn(self, examples: Sequence[Example]) -> None:
        positive = positive_of(examples)
        if positive is None:
            return
        recent, weights = self._recent(positive.user)
        if len(recent):
            self.transitions.add_column(recent, weights, positive.item_row)
            np.add.at(self.row_sums, recent, weights)
        self.histories.add(positive.user, positive.item_row)


class BlendPeer:
    """A Markov chain and an item-kNN, each divided by its maximum over the items the user may
    be recommended (candidates not yet seen), mixed ``markov_share`` : 1 − ``markov_share``."""

    def __init__(
        self, markov: MarkovChainPeer, knn: ItemKNNPeer, markov_share: float = 0.5
    ) -> None:
        knn_h = knn.settings["half_life_events"]
        self.name = (
            f"blend {markov_share:g} Markov({markov.order}, {markov.decay:g})"
            f" + {1 - markov_share:g} kNN(h={'∞' if knn_h is None else f'{knn_h:g}'})"
        )
        self.settings: dict[str, Any] = {
            "markov": markov.settings,
            "knn": knn.settings,
            "markov_share": markov_share,
        }
        self.markov = markov
        self.knn = knn
        self.markov_share = markov_share

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        seen = self.knn.histories.seen.get(user, set())
        allowed = np.ones(len(candidates), bool)
        if seen:
            allowed &= ~np.isin(candidates, np.fromiter(seen, np.int64, len(seen)))
        mixed = np.zeros(len(candidates))
        for share, peer in ((self.markov_share, self.markov), (1 - self.markov_share, self.knn)):
            scores = peer.score(user, features, candidates)
            top = scores[allowed].max() if allowed.any() else 0.0
            mixed += share * (scores / top if top > 0 else scores)
        return mixed

    def learn(self, examples: Sequence[Example]) -> None:
        self.markov.learn(examples)
        self.knn.learn(examples)


class Interactions:
    """Distinct (user, item) pairs so far as a users × items matrix, for batch refits."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.user_index: dict[str, int] = {}
        self.user_rows: list[int] = []
        self.item_rows: list[int] = []
        self.histories = UserHistories()
        self.events = 0

    def learn(self, examples: Sequence[Example]) -> None:
        positive = positive_of(examples)
        if positive is None:
            return
        self.events += 1
        if self.histories.add(positive.user, positive.item_row):
            index = self.user_index.setdefault(positive.user, len(self.user_index))
            self.user_rows.append(index)
            self.item_rows.append(positive.item_row)

    def matrix(self) -> Any:
        from scipy import sparse

        shape = (max(len(self.user_index), 1), self.n_items)
        data = np.ones(len(self.user_rows), np.float32)
        return sparse.csr_matrix((data, (self.user_rows, self.item_rows)), shape=shape)


EASE_MAX_ITEMS = 2000
"""EASE inverts an items × items matrix at every refit: over the 2,000 most interacted items
(all of ML-100K's 1,682) one inverse costs ~0.6 s here, 3,000 would cost ~2.3 s."""


class EASEFits:
    """EASE weights by (data, λ): a plain and a recency-weighted peer learn the same
    interactions, so a refit over the same events is computed once and shared."""

    def __init__(self) -> None:
        self.cache: dict[tuple[float, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def fit(self, data: Interactions, lam: float, max_items: int) -> tuple[np.ndarray, np.ndarray]:
        """(item rows of the model, B) for ``data`` as it is now."""
        key = (lam, max_items, data.events)
        if key not in self.cache:
            self.cache = {k: v for k, v in self.cache.items() if k[2] == data.events}
            self.cache[key] = ease_weights(data.matrix(), lam, max_items)
        return self.cache[key]


def ease_weights(matrix: Any, lam: float, max_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Steck (2019): P = (XᵀX + λI)⁻¹, B = I − P·diag(1/diag P) (zero diagonal), over the
    ``max_items`` items with most users (ties to the lower row)."""
    users_of = np.asarray(matrix.sum(axis=0)).ravel()
    active = np.flatnonzero(users_of)
    if len(active) > max_items:
        order = np.argsort(-users_of[active], kind="stable")[:max_items]
        active = np.sort(active[order])
    sub = matrix[:, active]
    gram = np.asarray((sub.T @ sub).toarray(), np.float64)
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = inverse / -np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return active, weights


class EASEPeer:
    """EASE, refitted on every interaction so far once ``refit_every`` events have arrived
    since the last fit (checked when ranking).  A user's row is their items, each weighted
    2^(−age/h) when ``half_life`` is set (age as in :class:`ItemKNNPeer`).  Items outside the
    fitted ones score −inf."""

    def __init__(
        self,
        n_items: int,
        lam: float,
        refit_every: int,
        half_life: float | None = None,
        fits: EASEFits | None = None,
        max_items: int = EASE_MAX_ITEMS,
    ) -> None:
        recency = "" if half_life is None else f", user row recency h={half_life:g}"
        self.name = f"EASE λ {lam:g}, refit every {refit_every:,}{recency}"
        self.settings: dict[str, Any] = {
            "lambda": lam,
            "refit_every": refit_every,
            "half_life_events": half_life,
            "max_items": max_items,
        }
        self.lam, self.refit_every, self.half_life = lam, refit_every, half_life
        self.max_items = max_items
        self.data = Interactions(n_items)
        self.fits = fits or EASEFits()
        self.model: tuple[np.ndarray, np.ndarray] | None = None
        self.fitted_at = 0
        self.position = np.full(n_items, -1, np.int64)

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        if self.model is None or self.data.events - self.fitted_at >= self.refit_every:
            self.model = self.fits.fit(self.data, self.lam, self.max_items)
            self.fitted_at = self.data.events
            self.position[:] = -1
            self.position[self.model[0]] = np.arange(len(self.model[0]))
        active, weights = self.model
        scores = np.full(self.data.n_items, -np.inf)
        history = self.data.histories.sequence.get(user)
        if history:
            items, recency = recency_weights(history, self.half_life)
            rows = self.position[items]
            known = rows >= 0
            scores[active] = recency[known] @ weights[rows[known]]
        else:
            scores[active] = 0.0
        return scores[candidates]

    def learn(self, examples: Sequence[Example]) -> None:
        self.data.learn(examples)


class IALSPeer:
    """``implicit``'s AlternatingLeastSquares (iALS), refitted on every interaction so far
    once ``refit_every`` events have arrived since the last fit (checked when ranking).
    The user's factors are recomputed from their current items against the fitted item
    factors (``recalculate_user``), so interactions since the fit count."""

    def __init__(
        self,
        n_items: int,
        factors: int,
        refit_every: int,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
    ) -> None:
        self.name = (
            f"iALS (implicit) {factors} factors, L2 {regularization:g}, refit every {refit_every:,}"
        )
        self.settings: dict[str, Any] = {
            "factors": factors,
            "refit_every": refit_every,
            "regularization": regularization,
            "alpha": alpha,
            "iterations": iterations,
        }
        self.options = {
            "factors": factors,
            "regularization": regularization,
            "alpha": alpha,
            "iterations": iterations,
        }
        self.refit_every = refit_every
        self.data = Interactions(n_items)
        self.model: Any = None
        self.fitted_at = 0

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        from scipy import sparse

        if self.model is None or self.data.events - self.fitted_at >= self.refit_every:
            from implicit.cpu.als import AlternatingLeastSquares

            self.model = AlternatingLeastSquares(
                **self.options, random_state=0, num_threads=1, calculate_training_loss=False
            )
            self.model.fit(self.data.matrix(), show_progress=False)
            self.fitted_at = self.data.events
        seen = self.data.histories.seen.get(user)
        if not seen:
            return np.zeros(len(candidates))
        items = np.fromiter(seen, np.int64, len(seen))
        row = sparse.csr_matrix(
            (np.ones(len(items), np.float32), (np.zeros(len(items), np.int64), items)),
            shape=(1, self.data.n_items),
        )
        factors = self.model.recalculate_user(0, row)
        return np.asarray(self.model.item_factors[candidates] @ factors, np.float64)

    def learn(self, examples: Sequence[Example]) -> None:
        self.data.learn(examples)


class PopularityTieBreakPeer:
    """Another peer's ranking with its ties (e.g. every item of a user without history)
    broken by global popularity: a strictly lexicographic order, the peer's scores first."""

    def __init__(self, peer: Any, n_items: int) -> None:
        self.name = f"{peer.name}, ties by popularity"
        self.settings: dict[str, Any] = {"peer": dict(getattr(peer, "settings", {}))}
        self.peer = peer
        self.popularity = PopularityPeer(n_items)

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        scores = np.asarray(self.peer.score(user, features, candidates), np.float64)
        counts = self.popularity.score(user, features, candidates)
        levels = np.unique(scores[np.isfinite(scores)])
        gap = float(np.diff(levels).min()) if len(levels) > 1 else 1.0
        # below half the smallest gap between the peer's own scores: never reorders them
        return scores + 0.5 * gap * counts / (counts.max() + 1.0)

    def learn(self, examples: Sequence[Example]) -> None:
        self.peer.learn(examples)
        self.popularity.learn(examples)
