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
