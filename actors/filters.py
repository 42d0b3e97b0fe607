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
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.features import Catalog, FeatureSpace

ITEM_PREFIX = "i."
MAX_NAMES = 16  # features a filter names
MAX_VALUES = 256  # values per feature
FILTER_KEYS = ("include", "exclude", "range", "max_per", "seen_returns_after_s")
PREFIX_PER_K = 16  # a capped answer first looks at the best 16·k items, then 4x more
UNKNOWN, ALLOWED, DROPPED = 0, 1, 2  # a row's verdict in a FilterCache


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

    def selects(self) -> bool:
        """Whether the filter drops items at all (``max_per`` alone only caps them)."""
        return bool(self.include or self.exclude or self.ranges)

    def selection_key(self) -> tuple[Any, ...]:
        """What :meth:`allowed` depends on, hashable and in a canonical order."""
        return tuple(tuple(sorted(d.items())) for d in (self.include, self.exclude, self.ranges))

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
        groups: Groups | None = None,
    ) -> np.ndarray:
        """Positions of the best ``k`` scores that keep ``max_per`` (ties: lower position
        first), skipping ``excluded`` positions; fewer when the caps leave fewer.
        ``groups``: an item's groups (default: read from the catalog each time)."""
        from actors.ranker import top_k  # the ranker imports this module

        caps = tuple((space.ns_hash(ITEM_PREFIX + n), cap) for n, cap in self.max_per.items())
        allowed = scores.size - int(np.count_nonzero(excluded))
        prefix = min(allowed, PREFIX_PER_K * k)
        groups_of = groups or _groups
        while True:  # the best few in score order fill the caps unless they are too tight
            order = top_k(scores, prefix, excluded)
            best = _greedy(catalog, rows, order, k, caps, groups_of)
            if len(best) == k or prefix >= allowed:
                return np.asarray(best, np.int64)
            prefix = min(allowed, prefix * 4)


Caps = tuple[tuple[int, int], ...]  # (namespace hash, cap) per capped feature
Groups = Callable[[Catalog, int, Caps], list[tuple[Any, int]]]


def _greedy(
    catalog: Catalog, rows: np.ndarray, order: np.ndarray, k: int, caps: Caps, groups_of: Groups
) -> list[int]:
    """The first ``k`` positions of ``order`` whose groups are all below their caps."""
    counts: dict[tuple[int, int], int] = {}
    best: list[int] = []
    for pos in order.tolist():
        groups = groups_of(catalog, int(rows[pos]), caps)
        if all(counts.get(g, 0) < cap for g, cap in groups):
            for g, _ in groups:
                counts[g] = counts.get(g, 0) + 1
            best.append(pos)
            if len(best) == k:
                break
    return best


def _groups(catalog: Catalog, row: int, caps: Caps) -> list[tuple[Any, int]]:
    """The (namespace, value) groups of one item that a cap applies to, with the cap."""
    ns, raw, x = catalog.ns[row], catalog.raw[row], catalog.x[row]
    return [
        ((namespace, int(raw[e])), cap)
        for namespace, cap in caps
        for e in np.flatnonzero((ns == namespace) & (x != 0)).tolist()
    ]


class FilterCache:
    """What a filter lets through and the groups its caps count, kept per catalog version.

    Shops send the same few filters again and again, and evaluating one meant a pass over
    the features of every candidate row per request (a filtered answer cost 25-35% more
    at p99, bench/README.md).  Rows are evaluated the first time a filter is asked about
    them and remembered until the catalog changes (an upsert bumps its version), so a
    repeated filter costs a gather; the last ``size`` filters are kept."""

    def __init__(self, size: int = 16) -> None:
        self.size = size  # one byte per catalog item each
        self._masks: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._groups: dict[tuple[int, Caps], list[tuple[Any, int]]] = {}
        self._stamp: tuple[int, int, int] = (0, -1, 0)

    def _current(self, catalog: Catalog) -> None:
        """Forget everything when the catalog changed since it was remembered."""
        stamp = (id(catalog), catalog.version, len(catalog))
        if stamp != self._stamp:
            self._stamp = stamp
            self._masks.clear()
            self._groups.clear()

    def allowed(
        self, item_filter: ItemFilter, space: FeatureSpace, catalog: Catalog, rows: np.ndarray
    ) -> np.ndarray:
        """:meth:`ItemFilter.allowed`, remembered per row."""
        if not item_filter.selects():
            return np.ones(rows.size, bool)
        self._current(catalog)
        key = item_filter.selection_key()
        verdicts = self._masks.pop(key, None)  # per row: UNKNOWN, ALLOWED or DROPPED
        if verdicts is None:
            verdicts = np.full(len(catalog), UNKNOWN, np.uint8)
            while len(self._masks) >= self.size:
                self._masks.popitem(last=False)
        self._masks[key] = verdicts  # the most recently used last
        todo = rows[verdicts[rows] == UNKNOWN]
        if todo.size:
            verdicts[todo] = np.where(item_filter.allowed(space, catalog, todo), ALLOWED, DROPPED)
        result: np.ndarray = verdicts[rows] == ALLOWED
        return result

    def groups(self, catalog: Catalog) -> Groups:
        """:func:`_groups` remembered per row, for :meth:`ItemFilter.capped_top_k`."""
        self._current(catalog)
        known = self._groups
        if len(known) >= self.size * 1024:
            known.clear()

        def groups(catalog: Catalog, row: int, caps: Caps) -> list[tuple[Any, int]]:
            found = known.get((row, caps))
            if found is None:
                found = known[(row, caps)] = _groups(catalog, row, caps)
            return found

        return groups


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
