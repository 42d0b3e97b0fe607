"""The evaluation protocols of ``bench/quality.py``, shared by every system it compares.

Two drivers, each the one code path all peers go through:

* :func:`run_ranking`: freshrank's recommendation replay protocol (``freshrank
  replay DIR --format movielens``; ``actors/readers.py`` ``read_movielens`` and
  ``actors/trainer.py`` ``_rank_and_remember``).  Interactions in timestamp order
  (stable sort); after the first 20 % every 20th one is first ranked against every
  item known at that point, minus the items the user already interacted with, and its
  0-based rank gives HR@k / NDCG@k (``actors.metrics.rank_of``: ties count against
  the model).  Then every peer learns it: the positive followed by ``negatives``
  items drawn uniformly from the known items (a draw equal to the positive moves to
  the next row, as freshrank's trainer does).  All peers see the same negatives.
* :func:`run_ctr`: progressive validation on labelled rows: each row is predicted,
  then learned; logloss and AUC over all rows (``actors.metrics``).

A peer is any object with the methods of :class:`RankingPeer` or :class:`CTRPeer`;
``bench/peers.py`` has the ones the benchmark uses.  Pure, synchronous code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from actors.metrics import ROCAUC, Logloss, RankingMetrics, rank_of
from actors.readers import (
    ML_GENRES,
    InteractionLog,
    _age_bucket,
    movietweetings_log,
    protocol_flags,
    read_ctr_tsv,
    rechorus_log,
)

Feature = tuple[str, str]
"""A categorical feature: (freshrank namespace, value), e.g. ("u.age", "25-34")."""


@dataclass(frozen=True)
class Example:
    """One row a pointwise ranking peer learns: a user-item pair with a 0/1 label."""

    user: str
    item_row: int
    label: int
    ts: float


@dataclass
class ItemTable:
    """The catalog as every peer sees it: row r is ``ids[r]`` with ``features[r]``.

    ``known_from[r]`` is the index of the first event at which row r is a candidate
    (0 for items listed before the interactions, as MovieLens' ``u.item`` is).
    """

    ids: list[str]
    features: list[list[Feature]]
    known_from: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class RankingStream:
    """Interactions in replay order, with the protocol's evaluation flags."""

    items: ItemTable
    profiles: dict[str, list[Feature]]
    users: list[str]
    item_rows: np.ndarray
    ts: np.ndarray
    evaluate: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


class RankingPeer(Protocol):
    """A recommender under test: scores candidates for a user, learns examples."""

    name: str

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        """One score per candidate item row (higher ranks first)."""
        ...

    def learn(self, examples: Sequence[Example]) -> None:
        """Learn one interaction: its positive, then its sampled negatives."""
        ...


@dataclass
class RankingResult:
    name: str
    hr: float
    ndcg: float
    evaluated: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


def run_ranking(
    stream: RankingStream,
    peers: Sequence[RankingPeer],
    *,
    k: int = 10,
    negatives: int = 4,
    seed: int = 0,
    exclude_seen: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[RankingResult]:
    """Test-then-train every peer on ``stream`` in lockstep (same events, same negatives).

    A peer may also have ``prefetch(user, features, candidates)``: it is called for
    every peer before any ``score`` of the same event, so peers that score in another
    process (VW) work in parallel with the in-process ones.
    """
    metrics = [RankingMetrics(k) for _ in peers]
    seconds = [0.0] * len(peers)
    seen: dict[str, set[int]] = {}
    draws = np.random.default_rng(seed).random((len(stream), negatives))
    known_sorted = np.sort(stream.items.known_from)
    for i, user in enumerate(stream.users):
        item = int(stream.item_rows[i])
        known = int(np.searchsorted(known_sorted, i, side="right"))
        features = stream.profiles.get(user, [])
        history = seen.setdefault(user, set())
        if stream.evaluate[i]:
            candidates = np.arange(known)
            exclude = np.fromiter(history, np.int64, len(history)) if exclude_seen else None
            _prefetch(peers, user, features, candidates)
            for p, peer in enumerate(peers):
                started = time.perf_counter()
                scores = np.asarray(peer.score(user, features, candidates), np.float64)
                seconds[p] += time.perf_counter() - started
                metrics[p].update(rank_of(scores, item, exclude))
        examples = [Example(user, item, 1, float(stream.ts[i]))]
        if known > 1:
            examples += [
                Example(user, row, 0, float(stream.ts[i]))
                for row in negative_rows(draws[i], item, known)
            ]
        for p, peer in enumerate(peers):
            started = time.perf_counter()
            peer.learn(examples)
            seconds[p] += time.perf_counter() - started
        history.add(item)
        if progress is not None:
            progress(i)
    return [
        RankingResult(
            peer.name,
            m.hit_rate(),
            m.ndcg(),
            m.count,
            round(s, 3),
            dict(getattr(peer, "settings", {})),
        )
        for peer, m, s in zip(peers, metrics, seconds, strict=True)
    ]


def negative_rows(uniform: np.ndarray, positive: int, known: int) -> list[int]:
    """Rows drawn uniformly from ``range(known)``; a draw equal to ``positive`` moves one up."""
    drawn = np.minimum((uniform * known).astype(np.int64), known - 1)
    drawn = np.where(drawn == positive, (drawn + 1) % known, drawn)
    return [int(r) for r in drawn]


def _prefetch(
    peers: Sequence[RankingPeer], user: str, features: Sequence[Feature], candidates: np.ndarray
) -> None:
    for peer in peers:
        prefetch = getattr(peer, "prefetch", None)
        if prefetch is not None:
            prefetch(user, features, candidates)


# ----------------------------------------------------------------------------- CTR


@dataclass
class CTRRows:
    """Labelled rows: ``features[r]`` is row r's (column, value) list, ``labels[r]`` 0/1."""

    features: list[list[Feature]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.features)


class CTRPeer(Protocol):
    """A click-through-rate model under test."""

    name: str

    def predict(self, features: Sequence[Feature]) -> float:
        """Probability of a click."""
        ...

    def learn(self, features: Sequence[Feature], label: int) -> None: ...


@dataclass
class CTRResult:
    name: str
    logloss: float
    auc: float
    rows: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


def run_ctr(rows: CTRRows, peers: Sequence[CTRPeer]) -> list[CTRResult]:
    """Progressive validation: every peer predicts each row, then learns it."""
    results = []
    for peer in peers:
        started = time.perf_counter()
        probs = np.empty(len(rows))
        for r, features in enumerate(rows.features):
            probs[r] = peer.predict(features)
            peer.learn(features, int(rows.labels[r]))
        seconds = time.perf_counter() - started
        results.append(ctr_result(peer.name, probs, rows.labels, seconds, peer))
    return results


def ctr_result(
    name: str, probs: np.ndarray, labels: np.ndarray, seconds: float, peer: object = None
) -> CTRResult:
    """Logloss and AUC of progressive predictions."""
    logloss = Logloss()
    logloss.update(probs, labels)
    auc = ROCAUC()
    auc.update(probs, labels)
    return CTRResult(
        name,
        logloss.result(),
        auc.result(),
        len(labels),
        round(seconds, 3),
        dict(getattr(peer, "settings", {})),
    )


# ----------------------------------------------------------------------------- data


def load_movielens(folder: Path, rows: int | None = None) -> RankingStream:
    """MovieLens 100K as freshrank's ``read_movielens`` sees it (same features, order, flags).

    ``rows``: only the first ``rows`` interactions (after sorting), with the protocol's
    flags computed for that shorter stream, as a replay of a truncated ``u.data`` would.
    """
    items = _movielens_items(folder / "u.item")
    profiles = _movielens_profiles(folder / "u.user")
    data = np.loadtxt(folder / "u.data", dtype=np.int64, delimiter="\t", ndmin=2)
    data = data[np.argsort(data[:, 3], kind="stable")]
    if rows is not None:
        data = data[:rows]
    row_of = {item: r for r, item in enumerate(items.ids)}
    missing = sorted({str(i) for i in data[:, 1]} - row_of.keys())
    if missing:
        raise ValueError(
            f"{folder}: {len(missing)} rated items are not in u.item, e.g. {missing[:3]}"
        )
    return RankingStream(
        items=items,
        profiles=profiles,
        users=[str(u) for u in data[:, 0]],
        item_rows=np.array([row_of[str(i)] for i in data[:, 1]], np.int64),
        ts=data[:, 3].astype(np.float64),
        evaluate=protocol_flags(len(data)),
    )


def _movielens_items(path: Path) -> ItemTable:
    ids: list[str] = []
    features: list[list[Feature]] = []
    if path.exists():
        for line in path.read_text(encoding="latin-1").splitlines():
            parts = line.split("|")
            genres = [g for g, flag in zip(ML_GENRES, parts[5:], strict=False) if flag == "1"]
            year = parts[2][-4:] if len(parts[2]) >= 4 else "unknown"
            ids.append(parts[0])
            features.append(
                [("item", parts[0]), *(("i.genre", g) for g in genres), ("i.year", year)]
            )
    return ItemTable(ids, features, np.zeros(len(ids), np.int64))


def _movielens_profiles(path: Path) -> dict[str, list[Feature]]:
    profiles: dict[str, list[Feature]] = {}
    if path.exists():
        for line in path.read_text(encoding="latin-1").splitlines():
            uid, age, gender, occupation, _zip = line.split("|")
            profiles[uid] = [
                ("user", uid),
                ("u.age", _age_bucket(int(age))),
                ("u.gender", gender),
                ("u.occupation", occupation),
            ]
    return profiles


def stream_of_log(log: InteractionLog, where: Path) -> RankingStream:
    """A reader's :class:`InteractionLog` as peers see it: the same order, features and flags
    as ``actors.readers.log_chunks`` gives freshrank (every item known from the start)."""
    ids = [item for item, _features in log.items]
    features = [
        [("item", item), *((ns, value) for ns, value, _x in item_features)]
        for item, item_features in log.items
    ]
    row_of = {item: r for r, item in enumerate(ids)}
    missing = sorted(set(log.item_ids) - row_of.keys())
    if missing:
        raise ValueError(
            f"{where}: {len(missing)} items are not in the catalog, e.g. {missing[:3]}"
        )
    return RankingStream(
        items=ItemTable(ids, features, np.zeros(len(ids), np.int64)),
        profiles={},
        users=list(log.users),
        item_rows=np.array([row_of[i] for i in log.item_ids], np.int64),
        ts=np.asarray(log.ts, np.float64),
        evaluate=protocol_flags(len(log.users)),
    )


def load_movietweetings(folder: Path) -> RankingStream:
    """MovieTweetings as ``freshrank replay --format movietweetings`` sees it."""
    return stream_of_log(movietweetings_log(folder), folder)


def load_rechorus(folder: Path) -> RankingStream:
    """A ReChorus log (Amazon Grocery) as ``freshrank replay --format rechorus`` sees it."""
    return stream_of_log(rechorus_log(folder), folder)


def load_criteo(paths: Iterable[Path]) -> CTRRows:
    """Criteo rows of ``paths`` in order, through freshrank's own reader (same log-binning)."""
    features: list[list[Feature]] = []
    labels: list[np.ndarray] = []
    for path in paths:
        for chunk in read_ctr_tsv(path, criteo=True):
            if chunk.rejected:
                raise ValueError(
                    f"{path}: {len(chunk.rejected)} rows rejected: {chunk.rejected[0]}"
                )
            batch = chunk.batch
            if batch is None:
                continue
            columns = [
                (name, bytes(data), off)
                for name, data, off in zip(
                    batch.col_names, batch.col_data, batch.col_off, strict=True
                )
            ]
            for r in range(len(batch.label)):
                features.append(
                    [
                        (name, data[off[r] : off[r + 1]].decode("utf-8", "replace"))
                        for name, data, off in columns
                    ]
                )
            labels.append(np.asarray(batch.label, np.int64))
    return CTRRows(features, np.concatenate(labels) if labels else np.zeros(0, np.int64))


def ratio(value: float, reference: float) -> float:
    """value / reference, nan when undefined."""
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return math.nan
    return value / reference
