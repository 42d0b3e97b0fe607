"""Content signal: how much of a user's recent items' features (genre, category, year,
…) a candidate item shares.

A user's profile gives each item-side feature f of their recent items the weight
``W_f = sum over those items l with f of 2^(-age_l / half_life)``; an item j scores

    content(j) = sum over j's features f of W_f / sum over f of W_f

(a recency-weighted content-based profile, as in Pazzani & Billsus, "Content-based
recommendation systems", The Adaptive Web 2007).  Unlike the co-occurrence signals it
reaches items nobody has picked together yet: a user who clicks war films sees other
war films.  The total over the catalog, which the mixture needs, is
``sum_f W_f · items_with(f)`` from per-feature item counts kept per catalog version.
Pure, synchronous code.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from actors.features import Catalog


@njit(cache=True, nogil=True)
def _feature_table(
    features: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An open-addressing table of the distinct ``features`` and their weights: keys,
    weights and which slots are used.  The keys are hashes already, so their low bits
    pick the slot."""
    size = 16
    while size < 4 * features.shape[0]:
        size *= 2
    keys, values, used = np.empty(size, np.uint32), np.empty(size), np.zeros(size, np.bool_)
    for f in range(features.shape[0]):
        at = features[f] & (size - 1)
        while used[at]:
            at = (at + 1) & (size - 1)
        keys[at], values[at], used[at] = features[f], weights[f], True
    return keys, values, used


@njit(cache=True, nogil=True)
def _match_scores(
    features: np.ndarray,
    weights: np.ndarray,
    raw: np.ndarray,
    ns: np.ndarray,
    x: np.ndarray,
    rows: np.ndarray,
    id_namespace: int,
) -> np.ndarray:
    """Per row: the summed weights of its content features found in the distinct
    ``features`` (a table lookup per feature: a binary search per feature cost a
    request more than the rest of the signals)."""
    keys, values, used = _feature_table(features, weights)
    mask = keys.size - 1
    out = np.zeros(rows.shape[0])
    for k in range(rows.shape[0]):
        r = rows[k]
        if r < 0 or r >= raw.shape[0]:
            continue
        total = 0.0
        for c in range(raw.shape[1]):
            if x[r, c] == 0.0 or ns[r, c] == id_namespace:
                continue
            key = raw[r, c]
            at = key & mask
            while used[at]:
                if keys[at] == key:
                    total += values[at]
                    break
                at = (at + 1) & mask
        out[k] = total
    return out


@njit(cache=True, nogil=True)
def _profile_of(
    raw: np.ndarray, ns: np.ndarray, x: np.ndarray, half_life: float, id_namespace: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct content features (sorted) of rows oldest first, with recency weights."""
    n, width = raw.shape
    keys = np.empty(n * width, np.uint32)
    vals = np.empty(n * width)
    used = 0
    for r in range(n):
        w = 2.0 ** (-(n - 1 - r) / half_life)
        for c in range(width):
            if x[r, c] != 0.0 and ns[r, c] != id_namespace:
                keys[used] = raw[r, c]
                vals[used] = w
                used += 1
    order = np.argsort(keys[:used], kind="mergesort")
    features = np.empty(used, np.uint32)
    weights = np.zeros(used)
    kinds = 0
    for i in order:
        if kinds == 0 or features[kinds - 1] != keys[i]:
            features[kinds] = keys[i]
            kinds += 1
        weights[kinds - 1] += vals[i]
    return features[:kinds], weights[:kinds]


class ContentProfile:
    """Scores catalog rows by the features they share with a user's recent items."""

    def __init__(self, catalog: Catalog, half_life: float, id_namespace: int) -> None:
        self.catalog = catalog
        self.id_namespace = id_namespace  # an item's own id matches only itself: left out
        self.half_life = half_life
        # (catalog version, rows counted) -> (sorted distinct item-side feature hashes,
        # how many of the rows have each)
        self._counts: list[tuple[tuple[int, int], tuple[np.ndarray, np.ndarray]]] = []

    def raw_scores_and_totals(
        self, recent: np.ndarray, items: np.ndarray
    ) -> tuple[np.ndarray, float, float]:
        """The items' undivided scores, the profile's weight (what a score is divided by)
        and the scores' total over the catalog."""
        features, weights = self._profile(recent)
        if features.size == 0:
            return np.zeros(items.size), 0.0, 0.0
        raw = self._matched(features, weights, items)
        counted, items_with = self.counted()
        at = np.searchsorted(counted, features)
        found = at < counted.size
        found[found] = counted[at[found]] == features[found]
        total = float(weights[found] @ items_with[at[found]])
        return raw, float(weights.sum()), total

    def scores_at(self, recent: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Share of the user's profile weight that each item matches (0 with no items)."""
        features, weights = self._profile(recent)
        if features.size == 0:
            return np.zeros(items.size)
        return self._matched(features, weights, items) / weights.sum()

    def _profile(self, recent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The user's distinct features (sorted) and their recency weights."""
        rows = recent[(recent >= 0) & (recent < len(self.catalog))]
        if rows.size == 0:
            return np.zeros(0, np.uint32), np.zeros(0)
        c = self.catalog
        return _profile_of(c.raw[rows], c.ns[rows], c.x[rows], self.half_life,
                           int(self.id_namespace))  # fmt: skip

    def _matched(self, features: np.ndarray, weights: np.ndarray, items: np.ndarray) -> np.ndarray:
        n = len(self.catalog)
        c = self.catalog
        return _match_scores(
            features, weights, c.raw[:n], c.ns[:n], c.x[:n], items.astype(np.int64),
            int(self.id_namespace),
        )  # fmt: skip

    def _content(self, rows: np.ndarray) -> np.ndarray:
        """Which feature slots of ``rows`` are content (set, and not the item's id)."""
        return (self.catalog.x[rows] != 0) & (self.catalog.ns[rows] != self.id_namespace)

    def counted(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The sorted distinct content features of the first ``n`` catalog rows (None:
        all) and how many of those rows have each.  The trainer asks for the rows known
        at its batch, so rows the featurizer has added since never change what it learns;
        the last two counts are kept (the trainer's and the server's)."""
        n = len(self.catalog) if n is None else n
        key = (self.catalog.version, n)
        for held, counts in self._counts:
            if held == key:
                return counts
        rows = np.arange(n)
        raw = self.catalog.raw[rows]
        features, items_with = np.unique(raw[self._content(rows)], return_counts=True)
        counts = (features, items_with.astype(np.float64))
        self._counts = [(key, counts), *self._counts[:1]]
        return counts
