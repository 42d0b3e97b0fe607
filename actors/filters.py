"""Request-time filters over the catalog by the items' own features, and a diversity cap.

An item's features are what its last upsert gave (``item_features``): a categorical
value is the pair (namespace ``i.<name>``, hashed value) in the catalog's matrices, a
number is the namespace with the number as ``x``.  A filter compares hashes, so it is
one vectorised pass over the catalog rows it is asked about.

* ``include``: for every feature named, the item has at least one of the values.
* ``exclude``: the item has none of the values named.
* ``ranges``: for every numeric feature named, the item has it and ``lo <= x <= hi``.
* ``max_per``: in the answer, at most N items per value of the feature (an item with
  several values counts for each, one without the feature is not capped); filled
  greedily in score order.
* ``seen_returns_after_s``: an item the user met (and so is not recommended to them
  again) may return once this many seconds have passed since they last met it, by
  the events' times against the ranker's wall clock.  Without it, never.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.features import Catalog, FeatureSpace

ITEM_PREFIX = "i."
MAX_NAMES = 16  # features a filter names
MAX_VALUES = 256  # values per feature
FILTER_KEYS = ("include", "exclude", "range", "max_per", "seen_returns_after_s")
PREFIX_PER_K = 16  # a capped answer first looks at the best 16·k items, then 4x more


@dataclass(frozen=True)
class ItemFilter:
    include: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_per: dict[str, int] = field(default_factory=dict)
    seen_returns_after_s: float | None = None

    def __bool__(self) -> bool:
        selects = self.include or self.exclude or self.ranges or self.max_per
        return bool(selects) or self.seen_returns_after_s is not None

    @classmethod
    def from_dict(cls, data: Any) -> ItemFilter:
        """``{"include": {feature: [values]}, "exclude": {...}, "range": {feature: [lo, hi]},
        "max_per": {feature: n}, "seen_returns_after_s": s}``; ValueError naming what is
        wrong."""
        if not isinstance(data, dict):
            raise ValueError("'filter' must be an object")
        unknown = sorted(set(data) - set(FILTER_KEYS))
        if unknown:
            raise ValueError(f"unknown filter key(s) {unknown}: use {', '.join(FILTER_KEYS)}")
        return cls(
            include=_values(data.get("include", {}), "include"),
            exclude=_values(data.get("exclude", {}), "exclude"),
            ranges={name: _range(v, name) for name, v in _named(data.get("range", {}), "range")},
            max_per={name: _cap(v, name) for name, v in _named(data.get("max_per", {}), "max_per")},
            seen_returns_after_s=_seconds(data.get("seen_returns_after_s")),
        )

    def allowed(self, space: FeatureSpace, catalog: Catalog, rows: np.ndarray) -> np.ndarray:
        """Which of the catalog ``rows`` the filter lets through (a bool per row)."""
        if not (self.include or self.exclude or self.ranges):
            return np.ones(rows.size, bool)
        ns, raw, x = catalog.ns[rows], catalog.raw[rows], catalog.x[rows]
        present = x != 0
        keep = np.ones(rows.size, bool)
        for name, values in self.include.items():
            keep &= _has_any(space, name, values, ns, raw, present)
        for name, values in self.exclude.items():
            keep &= ~_has_any(space, name, values, ns, raw, present)
        for name, (lo, hi) in self.ranges.items():
            at = (ns == space.ns_hash(ITEM_PREFIX + name)) & present
            inside = at & (x >= lo) & (x <= hi)
            keep &= inside.any(axis=1)
        return keep

    def capped_top_k(
        self,
        space: FeatureSpace,
        catalog: Catalog,
        scores: np.ndarray,
        rows: np.ndarray,
        k: int,
        excluded: np.ndarray,
    ) -> np.ndarray:
        """Positions of the best ``k`` scores that keep ``max_per`` (ties: lower position
        first), skipping ``excluded`` positions; fewer when the caps leave fewer."""
        from actors.ranker import top_k  # the ranker imports this module

        caps = [(space.ns_hash(ITEM_PREFIX + n), cap) for n, cap in self.max_per.items()]
        allowed = scores.size - int(np.count_nonzero(excluded))
        prefix = min(allowed, PREFIX_PER_K * k)
        while True:  # the best few in score order fill the caps unless they are too tight
            best = _greedy(catalog, rows, top_k(scores, prefix, excluded), k, caps)
            if len(best) == k or prefix >= allowed:
                return np.asarray(best, np.int64)
            prefix = min(allowed, prefix * 4)


def _greedy(
    catalog: Catalog, rows: np.ndarray, order: np.ndarray, k: int, caps: list[tuple[int, int]]
) -> list[int]:
    """The first ``k`` positions of ``order`` whose groups are all below their caps."""
    counts: dict[tuple[int, int], int] = {}
    best: list[int] = []
    for pos in order.tolist():
        groups = _groups(catalog, int(rows[pos]), caps)
        if all(counts.get(g, 0) < cap for g, cap in groups):
            for g, _ in groups:
                counts[g] = counts.get(g, 0) + 1
            best.append(pos)
            if len(best) == k:
                break
    return best


def _groups(catalog: Catalog, row: int, caps: list[tuple[int, int]]) -> list[tuple[Any, int]]:
    """The (namespace, value) groups of one item that a cap applies to, with the cap."""
    ns, raw, x = catalog.ns[row], catalog.raw[row], catalog.x[row]
    return [
        ((namespace, int(raw[e])), cap)
        for namespace, cap in caps
        for e in np.flatnonzero((ns == namespace) & (x != 0)).tolist()
    ]


def _has_any(
    space: FeatureSpace,
    name: str,
    values: tuple[str, ...],
    ns: np.ndarray,
    raw: np.ndarray,
    present: np.ndarray,
) -> np.ndarray:
    namespace = ITEM_PREFIX + name
    hashes = np.array([space.value_hash(namespace, v) for v in values], np.uint32)
    match = (ns == space.ns_hash(namespace)) & present & np.isin(raw, hashes)
    result: np.ndarray = match.any(axis=1)
    return result


def _named(data: Any, key: str) -> list[tuple[str, Any]]:
    if not isinstance(data, Mapping):
        raise ValueError(f"filter '{key}' must be an object of feature names")
    if len(data) > MAX_NAMES:
        raise ValueError(f"filter '{key}' names {len(data)} features, at most {MAX_NAMES}")
    for name in data:
        if not isinstance(name, str) or not name or "=" in name:
            raise ValueError(f"filter '{key}': {name!r} is not a feature name")
    return list(data.items())


def _values(data: Any, key: str) -> dict[str, tuple[str, ...]]:
    out = {}
    for name, values in _named(data, key):
        if isinstance(values, str):
            values = [values]
        ok = isinstance(values, list) and 0 < len(values) <= MAX_VALUES
        if not ok or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            raise ValueError(
                f"filter '{key}.{name}' must be a value or a list of 1..{MAX_VALUES} values"
            )
        out[name] = tuple(str(v) for v in values)
    return out


def _range(value: Any, name: str) -> tuple[float, float]:
    def number(b: Any) -> bool:
        return b is None or (isinstance(b, int | float) and not isinstance(b, bool))

    if not (isinstance(value, list) and len(value) == 2 and all(map(number, value))):
        raise ValueError(f"filter 'range.{name}' must be [lo, hi] (numbers; null: open)")
    lo = -math.inf if value[0] is None else float(value[0])
    hi = math.inf if value[1] is None else float(value[1])
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"filter 'range.{name}' must have lo <= hi, got {value}")
    return lo, hi


def _cap(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise ValueError(f"filter 'max_per.{name}' must be an integer in 1..1000")
    return value


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"filter 'seen_returns_after_s' must be a number, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"filter 'seen_returns_after_s' must be >= 0 and finite, not {value!r}")
    return float(value)
