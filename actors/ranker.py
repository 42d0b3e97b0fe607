"""Ranker: scores a user against the whole catalog (or given candidates) and returns the top k.

It reads the same weight replica, catalog and user state that training writes,
so a recommendation reflects every event learned before the request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from actors.exploration import ExplorationPolicy, ScoreUncertainty, WeightPosterior
from actors.factors import FactorScorer, FactorStore
from actors.features import (
    USER_NS,
    BaseFeatures,
    Catalog,
    FeatureSpace,
    UserState,
    explain,
    score_items,
    with_history,
)
from actors.ftrl import sigmoid
from actors.signals import SequenceSignals
from runtime.errors import BadInput


class UnknownCandidates(BadInput, ValueError):
    """None of the requested candidate items is in the catalog."""


class UnknownItem(BadInput, LookupError):
    """An item the catalog does not have."""

    http_status = 404


def top_k(scores: np.ndarray, k: int, excluded: np.ndarray) -> np.ndarray:
    """Positions of the k best scores (ties: lower position first), skipping excluded positions."""
    masked = scores.copy()
    masked[excluded] = -np.inf
    allowed = masked.size - int(np.count_nonzero(np.isneginf(masked)))
    k = min(k, allowed)
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-masked, k - 1)[:k] if k < masked.size else np.arange(masked.size)
    return part[np.lexsort((part, -masked[part]))]


class Ranker:
    """Recommendation requests, answered directly from shared state (no queue on the hot path)."""

    def __init__(
        self,
        space: FeatureSpace,
        weights: np.ndarray,
        catalog: Catalog,
        users: UserState,
        exclude_seen: bool = True,
        factors: FactorStore | None = None,
        posterior: WeightPosterior | None = None,  # None: Thompson exploration unavailable
        sequence: SequenceSignals | None = None,
    ) -> None:
        self.space = space
        self.sequence = sequence
        self.posterior = posterior
        self.factors = factors
        self.scorer = FactorScorer(factors) if factors is not None else None
        self.weights = weights
        self.catalog = catalog
        self.users = users
        self.exclude_seen = exclude_seen
        self.requests = 0
        self.seconds = 0.0

    def user_features(
        self, user: str, context: Sequence[tuple[str, str, float]] = ()
    ) -> tuple[BaseFeatures, list[str]]:
        """User id + last known profile + request context, as one BaseFeatures row and names."""
        ns = [self.space.ns_hash(USER_NS)]
        raw = [self.space.value_hash(USER_NS, user)]
        xs = [1.0]
        names = [f"user={user}"]
        profile = self.users.profiles.get(user)
        if profile is not None:
            ns += profile.ns.tolist()
            raw += profile.raw.tolist()
            xs += profile.x.tolist()
            names += self.users.profile_names.get(user, [])
        recent = self.users.recent.get(user)
        if recent:
            row = BaseFeatures(
                np.array([0, 0], np.int64),
                *(np.zeros(0, t) for t in (np.uint32, np.uint32, np.float64)),
            )
            extended, recent_names = with_history(self.space, self.catalog, self.users, user, row)
            ns += extended.ns.tolist()
            raw += extended.raw.tolist()
            xs += extended.x.tolist()
            names += recent_names
        for namespace, value, x in context:
            ns.append(self.space.ns_hash(namespace))
            raw.append(self.space.value_hash(namespace, value))
            xs.append(x)
            names.append(f"{namespace}={value}" if value else f"{namespace}={x:g}")
        features = BaseFeatures(
            np.array([0, len(ns)], np.int64),
            np.array(ns, np.uint32),
            np.array(raw, np.uint32),
            np.array(xs, np.float64),
        )
        return features, names

    def recommend(
        self,
        user: str,
        k: int = 10,
        candidates: Sequence[str] | None = None,
        context: Sequence[tuple[str, str, float]] = (),
        with_explanations: bool = False,
        explore: ExplorationPolicy | None = None,
    ) -> list[dict[str, Any]]:
        started = time.perf_counter()
        features, names = self.user_features(user, context)
        rows = None
        if candidates is not None:
            found = [self.catalog.rows[c] for c in candidates if c in self.catalog.rows]
            if not found and candidates:
                raise UnknownCandidates("none of the candidate items is in the catalog")
            rows = np.asarray(found, np.int64)
        scores = score_items(self.space, features, self.catalog, self.weights, rows, self.scorer)
        signals = self._signal_values(user, rows)
        if signals is not None:
            scores += self.sequence.logits(self.weights, signals)  # type: ignore[union-attr]
        positions = rows if rows is not None else np.arange(scores.size)
        excluded = np.zeros(scores.size, bool)
        seen = self.users.seen(user) if self.exclude_seen else set()
        if seen:
            excluded = np.isin(positions, np.fromiter(seen, np.int64, len(seen)))
        ranked_by = scores
        if explore is not None:  # the reported score stays the model's mean estimate
            ranked_by = explore.perturb(
                scores, ScoreUncertainty(self.space, features, self.catalog, self.posterior, rows)
            )
        best = top_k(ranked_by, k, excluded)
        if explore is not None:
            best = explore.substitute(best, excluded)
        result = []
        for pos in best:
            row = int(positions[pos])
            entry: dict[str, Any] = {
                "item": self.catalog.ids[row],
                "score": float(sigmoid(np.array([scores[pos]]))[0]),
            }
            if with_explanations:
                extra = self._signal_terms(signals[:, pos]) if signals is not None else []
                entry["explanation"] = explain(
                    self.space, features, names, self.catalog, row, self.weights, 5, self.factors,
                    extra,
                )  # fmt: skip
            result.append(entry)
        self.requests += 1
        self.seconds += time.perf_counter() - started
        return result

    def similar(self, item: str, k: int) -> list[dict[str, Any]]:
        """The item's nearest neighbours by co-occurrence (cosine item-kNN), best first."""
        row = self.catalog.rows.get(item)
        if row is None:
            raise UnknownItem(f"unknown item {item[:64]!r}")
        if self.sequence is None:
            return []
        rows, scores = self.sequence.stats.similar(row, k)
        ids = self.catalog.ids
        return [{"item": ids[r], "score": float(s)} for r, s in zip(rows, scores, strict=True)]

    def _signal_values(self, user: str, rows: np.ndarray | None) -> np.ndarray | None:
        """(signals, candidates): the sequence signals of the user's recent items."""
        if self.sequence is None:
            return None
        values = self.sequence.catalog_values(self.users.sequence(user), len(self.catalog))
        return values if rows is None else values[:, rows]

    def _signal_terms(self, values: np.ndarray) -> list[tuple[str, float]]:
        assert self.sequence is not None
        weights = self.weights[self.sequence.index]
        names = self.sequence.names
        return [
            (f"signal={n}", float(w * x)) for n, w, x in zip(names, weights, values, strict=True)
        ]

    def statistics(self) -> dict[str, Any]:
        return {"requests": self.requests, "seconds": round(self.seconds, 3)}
