"""The item-to-item signals of :mod:`actors.itemstats` as features of the linear model.

Each signal (``knn``, ``markov``) is one numeric feature ``signal=<name>`` whose value
for a (user, item) pair is the signal's normalised score of the item given the
user's recent items.  Its weight is learned by FTRL with every other weight, so the
model learns online how much to trust each signal next to the item's own weights,
the user's and the factor terms.  Training rows and ranking read the same values
(``ItemStats.scores_at`` equals ``ItemStats.scores``), so they agree.
Pure, synchronous code.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from actors.features import FeatureSpace
from actors.itemstats import ItemStats, ItemStatsParams

SIGNAL_NS = "signal"


class SequenceSignals:
    """The model part that owns the item-to-item statistics: learns them per event,
    saves and restores them, and turns them into features (where each signal's
    weight lives in the hashed index space, and its values)."""

    STATE_VERSION: ClassVar[int] = 1

    def __init__(self, space: FeatureSpace, params: ItemStatsParams) -> None:
        self.stats = ItemStats(params)
        self.names = tuple(self.stats.names)
        raw = np.array([space.value_hash(SIGNAL_NS, name) for name in self.names], np.uint32)
        self.index = space.index(raw)

    def learn(self, recents: Sequence[np.ndarray], items: np.ndarray) -> None:
        """Events in stream order: a user whose previous items were ``recents[e]``
        interacted with catalog row ``items[e]``."""
        if items.size == 0:
            return
        ptr = np.zeros(items.size + 1, np.int64)
        np.cumsum([r.size for r in recents], out=ptr[1:])
        rows = np.concatenate(list(recents)) if ptr[-1] else np.zeros(0, np.int64)
        self.stats.learn_batch(ptr, rows.astype(np.int64), items.astype(np.int64))

    def draw_hard_negatives(
        self,
        recents: list[np.ndarray],
        origin: np.ndarray,
        item_rows: np.ndarray,
        labels: np.ndarray,
        known: int,
        count: int,
        rng: np.random.Generator,
    ) -> None:
        """Replace the first ``count`` negatives of each positive (in place) by items drawn
        among the ``known`` rows its user's signals score above 0, other than the positive:
        the items the ranking must tell apart from it."""
        starts = np.flatnonzero(np.diff(origin, prepend=-1))
        for start in starts:
            recent = recents[origin[start]]
            if labels[start] != 1.0 or recent.size == 0:
                continue
            end = start + 1
            while end < origin.size and origin[end] == origin[start] and end - start <= count:
                end += 1
            if end == start + 1:
                continue
            values = self.catalog_values(recent, known).sum(axis=0)
            values[item_rows[start]] = 0.0
            pool = np.flatnonzero(values)
            if pool.size:
                item_rows[start + 1 : end] = pool[rng.integers(0, pool.size, end - start - 1)]

    def to_state(self) -> dict[str, Any]:
        return self.stats.to_state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.stats.load_state(state)

    def statistics(self) -> dict[str, Any]:
        return self.stats.statistics()

    def values(self, recent: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(signals, items): each signal's normalised score of ``items`` after ``recent``."""
        if recent.size == 0 or items.size == 0:
            return np.zeros((len(self.names), items.size))
        return self.stats.scores_at(recent, items)

    def catalog_values(self, recent: np.ndarray, n_items: int) -> np.ndarray:
        """(signals, n_items): every catalog row's values (zeros for a user with no items)."""
        if recent.size == 0:
            return np.zeros((len(self.names), n_items))
        return self.stats.scores(recent, n_items)

    def logits(self, w: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The signals' share of the logit: Σ_s w[signal s] · value_s."""
        weights: np.ndarray = w[self.index]
        return weights @ values

    def rows(
        self, recents: list[np.ndarray], origin: np.ndarray, item_rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR entries (indptr, indices, values) of the signal features of training rows:
        row j pairs event ``origin[j]`` (whose user's recent items are
        ``recents[origin[j]]``) with catalog row ``item_rows[j]``; nonzero values only."""
        signals = len(self.names)
        values = np.zeros((origin.size, signals))
        bounds = np.flatnonzero(np.diff(origin, prepend=-1, append=-1))
        for lo, hi in itertools.pairwise(bounds):
            items = item_rows[lo:hi]
            known = items >= 0
            if known.any():
                values[lo:hi][known] = self.values(recents[origin[lo]], items[known]).T
        nonzero = values != 0.0
        indptr = np.zeros(origin.size + 1, np.int64)
        np.cumsum(nonzero.sum(axis=1), out=indptr[1:])
        indices = np.broadcast_to(self.index, values.shape)[nonzero]
        return indptr, indices.astype(np.int64), values[nonzero]


def append_entries(
    a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row r of the result is row r of CSR ``a`` followed by row r of CSR ``b``."""
    a_ptr, a_idx, a_val = a
    b_ptr, b_idx, b_val = b
    if b_idx.size == 0:
        return a
    ptr = a_ptr + b_ptr
    rows = np.repeat(np.arange(a_ptr.size - 1), np.diff(a_ptr))
    b_rows = np.repeat(np.arange(b_ptr.size - 1), np.diff(b_ptr))
    a_pos = np.arange(a_idx.size) + b_ptr[rows]  # entries of b in earlier rows come first
    b_pos = np.arange(b_idx.size) + a_ptr[b_rows + 1]
    indices = np.empty(a_idx.size + b_idx.size, np.int64)
    values = np.empty(indices.size, np.float64)
    indices[a_pos], values[a_pos] = a_idx, a_val
    indices[b_pos], values[b_pos] = b_idx, b_val
    return ptr, indices, values
