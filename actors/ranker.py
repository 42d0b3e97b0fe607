"""Ranker: scores a user against the whole catalog (or given candidates) and returns the top k.

It reads the same weight replica, catalog and user state that training writes,
so a recommendation reflects every event learned before the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from actors.candidates import CandidateGenerator
from actors.exploration import ExplorationPolicy, ScoreUncertainty, WeightPosterior
from actors.factors import FactorScorer, FactorStore
from actors.features import (
    DELETED,
    HISTORY_NS,
    USER_NS,
    BaseFeatures,
    Catalog,
    FeatureSpace,
    UserState,
    explain,
    score_items,
)
from actors.filters import FilterCache, ItemFilter
from actors.ftrl import sigmoid
from actors.signals import SequenceSignals
from runtime.errors import BadInput


class UnknownCandidates(BadInput, ValueError):
    """None of the requested candidate items is in the catalog."""


class UnknownItem(BadInput, LookupError):
    """An item the catalog does not have."""

    http_status = 404


SMALL_K = 256  # up to here one pass with a sorted buffer of k beats partition + lexsort


@njit(cache=True, nogil=True)
def _small_top_k(scores: np.ndarray, k: int, skip: np.ndarray) -> np.ndarray:
    """``top_k`` in one pass: a buffer of the best so far, sorted by (-score, position);
    positions come in ascending order, so a tie never displaces an earlier one."""
    best_s, best_p = np.empty(k), np.empty(k, np.int64)
    held = 0
    for i in range(scores.size):
        s = scores[i]
        if skip[i] or s == -np.inf or (held == k and not s > best_s[k - 1]):
            continue
        j = min(held, k - 1)
        while j > 0 and best_s[j - 1] < s:
            best_s[j], best_p[j] = best_s[j - 1], best_p[j - 1]
            j -= 1
        best_s[j], best_p[j] = s, i
        held = min(held + 1, k)
    return best_p[:held].copy()


def top_k(scores: np.ndarray, k: int, excluded: np.ndarray) -> np.ndarray:
    """Positions of the k best scores (ties: lower position first), skipping excluded
    positions (a mask per position, or positions)."""
    if 0 < k <= SMALL_K:
        skip = excluded
        if excluded.dtype != np.bool_ or excluded.size != scores.size:
            skip = np.zeros(scores.size, np.bool_)
            skip[excluded] = True
        return _small_top_k(np.ascontiguousarray(scores, np.float64), k, skip)
    masked = scores.copy()
    masked[excluded] = -np.inf
    allowed = masked.size - int(np.count_nonzero(np.isneginf(masked)))
    k = min(k, allowed)
    if k <= 0:
        return np.zeros(0, np.int64)
    if k < masked.size:
        # argpartition breaks ties at the k-th score arbitrarily, and differently for arrays
        # of other lengths: two replicas with equal scores must answer the same list
        kth = np.partition(masked, masked.size - k)[masked.size - k]
        above = np.flatnonzero(masked > kth)
        part = np.concatenate((above, np.flatnonzero(masked == kth)[: k - above.size]))
    else:
        part = np.arange(masked.size)
    return part[np.lexsort((part, -masked[part]))]


@dataclass
class Visitor:
    """What a ranking request knows of who asks (``Ranker.visitor``)."""

    user: str  # "" for an anonymous visitor
    sequence: np.ndarray  # the last items, oldest first, for the sequence signals
    recent: list[int]  # distinct recent rows, oldest first (the h.item features)
    seen: AbstractSet[int]  # rows not to recommend again
    ignored: list[str]  # session ids the catalog does not have
    excluded: set[int] = field(default_factory=set)  # rows the request asked not to get


def _stacked(parts: list[tuple[Any, Any, Any]]) -> BaseFeatures:
    """One BaseFeatures row of the (namespaces, hashes, values) parts, in order."""
    if not parts:
        return BaseFeatures(
            np.zeros(2, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0)
        )
    ns = np.concatenate([np.asarray(p[0], np.uint32) for p in parts])
    raw = np.concatenate([np.asarray(p[1], np.uint32) for p in parts])
    x = np.concatenate([np.asarray(p[2], np.float64) for p in parts])
    return BaseFeatures(np.array([0, ns.size], np.int64), ns, raw, x)


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
        candidates: CandidateGenerator | None = None,  # None: always the whole catalog
        clock: Callable[[], float] = time.time,  # wall clock: when an item's expiry is due
    ) -> None:
        self.space = space
        self.clock = clock
        self.candidates = candidates
        self.sequence = sequence
        self.posterior = posterior
        self.factors = factors
        self.scorer = FactorScorer(factors) if factors is not None else None
        self.filters = FilterCache()  # a repeated filter's verdicts per catalog row
        self._marks = np.zeros(0, bool)  # all False between requests (_seen_mask)
        self.weights = weights
        self.catalog = catalog
        self.users = users
        self.exclude_seen = exclude_seen
        self.requests = 0
        self.seconds = 0.0
        self.shown = np.zeros(0, np.int64)  # per catalog row: answers it was in, since start

    def visitor(
        self,
        user: str,
        session: Sequence[str] = (),
        exclude: Sequence[str] = (),
        seen_returns_after_s: float | None = None,
    ) -> Visitor:
        """Who asks: a known user's history, extended by ``session`` (item ids the visitor
        just interacted with, oldest first; an anonymous visitor has only these), and the
        ``exclude`` item ids the request never wants (unknown ones are ignored); the
        items they met ``seen_returns_after_s`` or more ago are no longer seen."""
        known = [self.catalog.rows[i] for i in session if i in self.catalog.rows]
        ignored = [i for i in session if i not in self.catalog.rows]
        sequence = self.users.sequences.get(user, []) if user else []
        recent = list(self.users.recent.get(user, ())) if user else []
        for row in known:
            if row in recent:
                recent.remove(row)
            recent.append(row)
        keep = self.users.recent_len
        return Visitor(
            user=user,
            sequence=np.array((sequence + known)[-max(self.users.sequence_len, 1) :], np.int64),
            recent=recent[-keep:] if keep else [],
            seen=self._seen(user, seen_returns_after_s) | set(known),
            ignored=ignored,
            excluded={self.catalog.rows[i] for i in exclude if i in self.catalog.rows},
        )

    def _seen(self, user: str, returns_after_s: float | None) -> AbstractSet[int]:
        if not user:
            return set()
        if returns_after_s is None:
            return self.users.seen(user)
        return self.users.seen_since(user, self.clock() - returns_after_s)

    def user_features(
        self,
        who: str | Visitor,
        context: Sequence[tuple[str, str, float]] = (),
        named: bool = True,
    ) -> tuple[BaseFeatures, list[str]]:
        """User id + last known profile + recent items + request context, as one
        BaseFeatures row and names (an anonymous visitor has no id or profile; no names
        unless ``named``: only explanations read them)."""
        visitor = self.visitor(who) if isinstance(who, str) else who
        space, user = self.space, visitor.user
        parts: list[tuple[Any, Any, Any]] = []
        names: list[str] = []
        if user:
            parts.append(([space.ns_hash(USER_NS)], [space.value_hash(USER_NS, user)], [1.0]))
            names.append(f"user={user}")
        profile = self.users.profiles.get(user) if user else None
        if profile is not None:
            parts.append((profile.ns, profile.raw, profile.x))
            names += self.users.profile_names.get(user, []) if named else []
        if visitor.recent:  # as with_histories: h.item=<id>, 1/sqrt(count) each
            recent = np.array(visitor.recent, np.int64)
            history = self.catalog.id_hashes(space, HISTORY_NS)[recent]
            parts.append(
                (
                    np.full(recent.size, space.ns_hash(HISTORY_NS), np.uint32),
                    history,
                    np.full(recent.size, 1.0 / np.sqrt(recent.size)),
                )
            )
            names += (
                [f"{HISTORY_NS}={self.catalog.ids[r]}" for r in visitor.recent] if named else []
            )
        if context:
            parts.append(self._context_features(context, names))
        return _stacked(parts), names

    def _context_features(
        self, context: Sequence[tuple[str, str, float]], names: list[str]
    ) -> tuple[list[int], list[int], list[float]]:
        ns = [self.space.ns_hash(namespace) for namespace, _, _ in context]
        raw = [self.space.value_hash(namespace, value) for namespace, value, _ in context]
        names += [f"{n}={value}" if value else f"{n}={x:g}" for n, value, x in context]
        return ns, raw, [x for _, _, x in context]

    def recommend(
        self,
        user: str,
        k: int = 10,
        candidates: Sequence[str] | None = None,
        context: Sequence[tuple[str, str, float]] = (),
        with_explanations: bool = False,
        explore: ExplorationPolicy | None = None,
        session: Sequence[str] | None = (),
        exclude: Sequence[str] | None = (),
        item_filter: ItemFilter | None = None,
    ) -> list[dict[str, Any]]:
        """The top ``k`` for ``user`` ("" for an anonymous visitor), who just interacted
        with the ``session`` item ids (oldest first; not learned, only ranked with),
        never one of the ``exclude`` item ids (unknown ones are ignored), only items
        ``item_filter`` lets through."""
        started = time.perf_counter()
        returns_after = item_filter.seen_returns_after_s if item_filter else None
        visitor = self.visitor(user, session or (), exclude or (), returns_after)
        features, names = self.user_features(visitor, context, with_explanations)
        blocked = self.catalog.blocked(self.clock())  # hidden, deleted, expired, ...
        rows, excluded = self._rows_to_score(visitor, k, candidates, item_filter, blocked)
        signals = self._signal_values(visitor.sequence, rows)
        terms = None if signals is None else self.sequence.terms(self.weights, signals)  # type: ignore[union-attr]
        scores = score_items(
            self.space, features, self.catalog, self.weights, rows, self.scorer, terms
        )
        positions = rows if rows is not None else np.arange(scores.size)
        if excluded is None:
            excluded = self._excluded(positions, visitor, item_filter, blocked)
        ranked_by = scores
        if explore is not None:  # the reported score stays the model's mean estimate
            ranked_by = explore.perturb(
                scores, ScoreUncertainty(self.space, features, self.catalog, self.posterior, rows)
            )
        best = self._top(ranked_by, positions, k, excluded, item_filter)
        if explore is not None:
            best = explore.substitute(best, excluded)
        result = []
        probabilities = sigmoid(scores[best]).tolist()
        for pos, probability in zip(best, probabilities, strict=True):
            row = int(positions[pos])
            entry: dict[str, Any] = {"item": self.catalog.ids[row], "score": probability}
            if with_explanations:
                extra = self._signal_terms(signals[:, pos]) if signals is not None else []
                entry["explanation"] = explain(
                    self.space, features, names, self.catalog, row, self.weights, 5, self.factors,
                    extra,
                )  # fmt: skip
            result.append(entry)
        self._count_shown(positions[best])
        self.requests += 1
        self.seconds += time.perf_counter() - started
        return result

    def _top(
        self,
        scores: np.ndarray,
        positions: np.ndarray,
        k: int,
        excluded: np.ndarray,
        item_filter: ItemFilter | None,
    ) -> np.ndarray:
        if item_filter and item_filter.max_per:
            return item_filter.capped_top_k(
                self.space,
                self.catalog,
                scores,
                positions,
                k,
                excluded,
                self.filters.groups(self.catalog),
            )
        return top_k(scores, k, excluded)

    def similar(self, item: str, k: int) -> list[dict[str, Any]]:
        """The item's nearest neighbours by co-occurrence (cosine item-kNN), best first;
        never a hidden, unavailable, deleted or expired one."""
        row = self._row(item)
        if self.sequence is None:
            return []
        blocked = self.catalog.blocked(self.clock())
        wanted = k if blocked is None else k + int(np.count_nonzero(blocked))
        rows, scores = self.sequence.stats.similar(row, wanted)
        if blocked is not None:
            keep = ~blocked[rows]
            rows, scores = rows[keep][:k], scores[keep][:k]
        ids = self.catalog.ids
        return [{"item": ids[r], "score": float(s)} for r, s in zip(rows, scores, strict=True)]

    def _row(self, item: str) -> int:
        """The item's catalog row; UnknownItem when it has none or is deleted."""
        row = self.catalog.live_row(item)
        if row is None:
            raise UnknownItem(f"unknown item {item[:64]!r}")
        return row

    def _rows_to_score(
        self,
        visitor: Visitor,
        k: int,
        candidates: Sequence[str] | None,
        item_filter: ItemFilter | None = None,
        blocked: np.ndarray | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The catalog rows to score (None: all of them) and, when already known, which
        of them not to recommend (seen, excluded, ``blocked``, filtered out); generated
        candidates give way to the whole catalog when fewer than k of them are left."""
        if candidates is not None:
            live = (self.catalog.live_row(c) for c in candidates)
            found = [row for row in live if row is not None]
            if not found and candidates:
                raise UnknownCandidates("none of the candidate items is in the catalog")
            return np.asarray(found, np.int64), None
        if self.candidates is None:
            return None, None
        rows = self.candidates.rows(visitor.sequence, time.monotonic())
        if rows is None:
            return None, None
        skip = self._excluded(rows, visitor, item_filter, blocked)
        if rows.size - int(np.count_nonzero(skip)) < k:
            return None, None  # too few to fill k: the whole catalog can
        return rows, skip

    def _excluded(
        self,
        rows: np.ndarray,
        visitor: Visitor,
        item_filter: ItemFilter | None,
        blocked: np.ndarray | None = None,
    ) -> np.ndarray:
        """The rows not to recommend: seen, excluded or blocked ones, and those the filter
        drops."""
        skip = self._seen_mask(rows, visitor, blocked)
        if item_filter:
            skip |= ~self.filters.allowed(item_filter, self.space, self.catalog, rows)
        return skip

    def _seen_mask(
        self, rows: np.ndarray, visitor: Visitor, blocked: np.ndarray | None = None
    ) -> np.ndarray:
        """The rows not to recommend: seen ones (``exclude_seen``), the excluded ones and
        the ``blocked`` ones (per catalog row: hidden, unavailable, deleted, expired)."""
        skip = (visitor.seen if self.exclude_seen else set()) | visitor.excluded
        mask = np.zeros(rows.size, bool) if blocked is None else blocked[rows]
        if skip:  # marked in a scratch flag per catalog row: np.isin sorted both sides
            skipped = np.fromiter(skip, np.int64, len(skip))
            size = max(len(self.catalog), int(skipped.max()) + 1, int(rows.max(initial=0)) + 1)
            if self._marks.size < size:
                self._marks = np.zeros(2 * size, bool)
            self._marks[skipped] = True
            mask |= self._marks[rows]
            self._marks[skipped] = False
        return mask

    def inspect(self, item: str, k: int = 10) -> dict[str, Any]:
        """What the model knows of one item: its features with their learned weights,
        its kNN neighbours and Markov successors, and its exposure (interactions
        learned, answers it was in since start, each trend relative to the top item's) and
        its lifecycle (hidden, available, expiry).  Deleted items are left out."""
        row = self._row(item)
        exposure: dict[str, float | int] = {
            "shown": int(self.shown[row]) if row < self.shown.size else 0
        }
        neighbours: list[dict[str, Any]] = []
        successors: list[dict[str, Any]] = []
        if self.sequence is not None:
            stats, ids = self.sequence.stats, self.catalog.ids
            exposure["interactions"] = int(stats.item_count[row]) if row < stats.n_items else 0
            trends = self.sequence.trends.scores_at(np.array([row], np.int64))[:, 0]
            for name, value in zip(self.sequence.trends.names, trends, strict=True):
                exposure[name] = round(float(value), 6)
            live = (self.catalog.flags[: len(self.catalog)] & DELETED) == 0
            for (rows, values), out in (
                (stats.similar(row, stats.params.neighbours), neighbours),
                (stats.successors(row, stats.params.neighbours), successors),
            ):
                keep = live[rows]
                pairs = zip(rows[keep][:k].tolist(), values[keep][:k].tolist(), strict=True)
                out.extend({"item": ids[r], "score": v} for r, v in pairs)
        return {
            "item": item,
            "features": self._item_weights(row),
            "neighbours": neighbours,
            "successors": successors,
            "exposure": exposure,
            "lifecycle": self.catalog.lifecycle(row, self.clock()),
        }

    def _item_weights(self, row: int) -> list[dict[str, Any]]:
        """The item's own features, largest |w·x| first (crosses depend on the user)."""
        x, raw, names = self.catalog.x[row], self.catalog.raw[row], self.catalog.names[row]
        present = np.flatnonzero(x != 0)
        weights = self.weights[self.space.index(raw[present])]
        terms = [
            {
                "feature": names[p] if p < len(names) else f"item#{p}",
                "value": float(x[p]),
                "weight": float(w),
            }
            for p, w in zip(present.tolist(), weights.tolist(), strict=True)
        ]
        return sorted(terms, key=lambda t: -abs(t["weight"] * t["value"]))

    def _count_shown(self, rows: np.ndarray) -> None:
        if rows.size and int(rows.max()) >= self.shown.size:
            grown = np.zeros(
                max(2 * self.shown.size, len(self.catalog), int(rows.max()) + 1), np.int64
            )
            grown[: self.shown.size] = self.shown
            self.shown = grown
        self.shown[rows] += 1

    def _signal_values(self, sequence: np.ndarray, rows: np.ndarray | None) -> np.ndarray | None:
        """(signals, candidates): the sequence signals of the visitor's recent items."""
        if self.sequence is None:
            return None
        if rows is None:
            return self.sequence.catalog_values(sequence, len(self.catalog))
        return self.sequence.values(sequence, rows)

    def _signal_terms(self, values: np.ndarray) -> list[tuple[str, float]]:
        assert self.sequence is not None
        weights = self.weights[self.sequence.index]
        names = self.sequence.names
        return [
            (f"signal={n}", float(w * x)) for n, w, x in zip(names, weights, values, strict=True)
        ]

    def statistics(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"requests": self.requests, "seconds": round(self.seconds, 3)}
        if self.candidates is not None:
            stats["candidates"] = self.candidates.statistics()
        return stats
