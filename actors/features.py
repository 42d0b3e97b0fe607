"""Hashed feature space, the item catalog and user state: pure, synchronous code.

A base feature is ``(namespace hash, value hash, x)``: the value hash is MurmurHash3
of the value seeded with the namespace hash (VW's scheme), so hashing is stable
across processes and vectorises over whole columns.  A model row for a
(user context, item) pair is:

* the bias,
* the user/context side base features (user id, ``u.*``, ``c.*``, CTR columns),
* the item side base features kept in the catalog (item id, ``i.*``),
* declared crosses ``(a, b)`` of a user-side namespace with an item-side one
  (like VW's ``-q``): one feature per pair of values, hash ``cross_hash(h_a, h_b)``,
  ``x = x_a * x_b``.

Training (:func:`expand`) and ranking (:func:`score_items`) build exactly these
rows; a test checks they agree.  The global index of a feature is its hash masked
to ``bits``; the shard that owns index ``i`` is ``i % shards``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numba import njit

from actors.factors import FactorScorer, FactorStore, pair_contributions
from actors.murmur import (
    FNV_PRIME,
    MASK32,
    cross_hash,
    hash_slices,
    murmur3_32,
    namespace_seed,
)
from actors.murmur import (
    fmix32_scalar as _fmix,
)
from runtime.messages import (
    LIFECYCLE_AVAILABLE,
    LIFECYCLE_DELETE,
    LIFECYCLE_EXPIRES,
    LIFECYCLE_HIDE,
    LIFECYCLE_UNAVAILABLE,
    LIFECYCLE_UNHIDE,
)

USER_NS = "user"
ITEM_NS = "item"
BIAS_NS = "bias"
HISTORY_NS = "h.item"  # a user's most recent items, as user-side features

# Catalog.flags: why an item may not be served or sampled (0: it may, unless expired)
HIDDEN, UNAVAILABLE, DELETED = 1, 2, 4


@dataclass
class BaseFeatures:
    """A CSR batch of base features: row r owns entries ``ptr[r]:ptr[r+1]``."""

    ptr: np.ndarray  # int64[rows+1]
    ns: np.ndarray  # uint32 namespace hashes
    raw: np.ndarray  # uint32 value hashes
    x: np.ndarray  # float64 values

    @property
    def rows(self) -> int:
        return int(self.ptr.shape[0] - 1)

    def row(self, r: int) -> BaseFeatures:
        lo, hi = int(self.ptr[r]), int(self.ptr[r + 1])
        return BaseFeatures(
            np.array([0, hi - lo], np.int64), self.ns[lo:hi], self.raw[lo:hi], self.x[lo:hi]
        )


class FeatureSpace:
    """Namespace hashing, crosses and the index space (2^bits slots)."""

    def __init__(self, bits: int, seed: int = 0, crosses: Sequence[tuple[str, str]] = ()) -> None:
        if not 1 <= bits <= 32:
            raise ValueError(f"hash bits must be in 1..32, got {bits}")
        self.bits = bits
        self.seed = seed
        self.mask = (1 << bits) - 1
        self.size = 1 << bits
        self._ns_cache: dict[str, int] = {}
        self.crosses = [(self.ns_hash(a), self.ns_hash(b)) for a, b in crosses]
        self.cross_names = list(crosses)
        self.bias_index = murmur3_32(b"", self.ns_hash(BIAS_NS)) & self.mask

    def ns_hash(self, namespace: str) -> int:
        cached = self._ns_cache.get(namespace)
        if cached is None:
            cached = self._ns_cache[namespace] = namespace_seed(namespace, self.seed)
        return cached

    def value_hash(self, namespace: str, value: str) -> int:
        return murmur3_32(value.encode("utf-8"), self.ns_hash(namespace))

    def hash_values(
        self, ns_hashes: np.ndarray, data: np.ndarray, offsets: np.ndarray
    ) -> np.ndarray:
        """Vectorised value hashes of a string column whose entries have their own namespaces."""
        return hash_slices(data, offsets, ns_hashes.astype(np.uint32))

    def index(self, raw: np.ndarray) -> np.ndarray:
        return (raw & np.uint32(self.mask)).astype(np.int64)


@dataclass
class Catalog:
    """Items and their hashed item-side features, as padded matrices for vectorised scoring.

    Row ``r`` holds up to ``width`` features; unused slots have ``x == 0`` (they add
    nothing to a score).  ``first_seq[r]`` is the ingest batch that introduced the
    item, so replays can rank among the items known at that point in the stream.

    The lifecycle of row ``r``: ``flags[r]`` (HIDDEN, UNAVAILABLE, DELETED) and
    ``expires[r]`` (Unix seconds, inf: never).  A row that is flagged, or expired at the
    time asked about, is never recommended nor sampled as a negative (:meth:`blocked`);
    a deleted row keeps its place (its id, features and learned state) until an upsert
    of the same id brings it back.
    """

    width: int = 8
    ids: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    first_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    names: list[list[str]] = field(default_factory=list)
    version: int = 0  # bumped by every upsert: caches of per-item sums compare it

    def __post_init__(self) -> None:
        self._id_hashes: dict[tuple[int, str], np.ndarray] = {}
        self.ns = np.zeros((0, self.width), np.uint32)
        self.raw = np.zeros((0, self.width), np.uint32)
        self.x = np.zeros((0, self.width), np.float64)
        self.flags = np.zeros(0, np.uint8)
        self.expires = np.zeros(0, np.float64)
        self.restricted = 0  # rows flagged or with an expiry (0: every row may be served)

    def __len__(self) -> int:
        return len(self.ids)

    def _grow(self, rows: int, width: int) -> None:
        capacity = self.ns.shape[0]
        if rows <= capacity and width <= self.width:
            return
        new_cap = max(rows, capacity * 2, 64) if rows > capacity else capacity
        new_width = max(width, self.width)
        for name, dtype in (("ns", np.uint32), ("raw", np.uint32), ("x", np.float64)):
            old = getattr(self, name)
            grown = np.zeros((new_cap, new_width), dtype)
            grown[: old.shape[0], : old.shape[1]] = old
            setattr(self, name, grown)
        seq = np.zeros(new_cap, np.int64)
        seq[: self.first_seq.shape[0]] = self.first_seq
        self.first_seq = seq
        flags = np.zeros(new_cap, np.uint8)
        flags[: self.flags.shape[0]] = self.flags
        expires = np.full(new_cap, np.inf)
        expires[: self.expires.shape[0]] = self.expires
        self.flags, self.expires = flags, expires
        self.width = new_width

    def upsert(
        self,
        item: str,
        seq: int,
        ns: np.ndarray,
        raw: np.ndarray,
        x: np.ndarray,
        names: list[str],
    ) -> int:
        """Insert or replace an item's features (the item id feature must be among them).
        ``version`` counts changes: the same features again leave it as it was."""
        row = self.rows.get(item)
        if row is not None and not self.differs(row, ns, raw, x):
            return row
        self.version += 1
        if row is None:
            row = len(self.ids)
            self._grow(row + 1, len(ns))
            self.ids.append(item)
            self.rows[item] = row
            self.names.append(names)
            self.first_seq[row] = seq
        else:
            self._grow(row + 1, len(ns))
            self.names[row] = names
        self.ns[row] = 0
        self.raw[row] = 0
        self.x[row] = 0.0
        k = len(ns)
        self.ns[row, :k] = ns
        self.raw[row, :k] = raw
        self.x[row, :k] = x
        return row

    def differs(self, row: int, ns: np.ndarray, raw: np.ndarray, x: np.ndarray) -> bool:
        """Whether the features (ns, raw, x) are not exactly row ``row``'s."""
        k = len(ns)
        if k > self.width or np.count_nonzero(self.ns[row]) != k:
            return True
        return not (
            np.array_equal(self.ns[row, :k], ns)
            and np.array_equal(self.raw[row, :k], raw)
            and np.array_equal(self.x[row, :k], x)
        )

    # -- lifecycle -----------------------------------------------------------

    def change_lifecycle(self, row: int, code: int, expires_at: float = np.inf) -> None:
        """An item upsert of ``row`` with the LIFECYCLE_* bits ``code`` (and its expiry
        time): any upsert brings a deleted row back (live, no expiry) unless it deletes."""
        if not code and not self.flags[row] & DELETED:
            return
        before = self._restricted(row)
        if code & LIFECYCLE_DELETE:
            self.flags[row] |= DELETED
        elif self.flags[row] & DELETED:
            self.flags[row], self.expires[row] = 0, np.inf
        for on, off, flag in (
            (LIFECYCLE_HIDE, LIFECYCLE_UNHIDE, HIDDEN),
            (LIFECYCLE_UNAVAILABLE, LIFECYCLE_AVAILABLE, UNAVAILABLE),
        ):
            if code & on:
                self.flags[row] |= flag
            elif code & off:
                self.flags[row] &= ~np.uint8(flag)
        if code & LIFECYCLE_EXPIRES:
            self.expires[row] = expires_at
        self.restricted += self._restricted(row) - before

    def _restricted(self, row: int) -> bool:
        return bool(self.flags[row]) or bool(np.isfinite(self.expires[row]))

    def blocked(self, now: float, n: int | None = None) -> np.ndarray | None:
        """Which of the first ``n`` rows (default: all) may not be served or sampled at
        time ``now``: hidden, unavailable, deleted, or expired (``expires <= now``); None
        when every one may."""
        if not self.restricted:
            return None
        n = len(self.ids) if n is None else n
        mask = (self.flags[:n] != 0) | (self.expires[:n] <= now)
        return mask if mask.any() else None

    def live_row(self, item: str) -> int | None:
        """The item's row, unless the item is unknown or deleted."""
        row = self.rows.get(item)
        return None if row is None or self.flags[row] & DELETED else row

    def lifecycle(self, row: int, now: float) -> dict[str, Any]:
        """The row's lifecycle as the API shows it."""
        expires = float(self.expires[row])
        return {
            "hidden": bool(self.flags[row] & HIDDEN),
            "available": not self.flags[row] & UNAVAILABLE,
            "expires_at": expires if np.isfinite(expires) else None,
            "expired": expires <= now,
            "deleted": bool(self.flags[row] & DELETED),
        }

    def lifecycle_counts(self, now: float) -> dict[str, int]:
        """How many rows are hidden, unavailable, deleted, have an expiry, are expired."""
        n = len(self.ids)
        flags, expires = self.flags[:n], self.expires[:n]
        return {
            "hidden": int(np.count_nonzero(flags & HIDDEN)),
            "unavailable": int(np.count_nonzero(flags & UNAVAILABLE)),
            "deleted": int(np.count_nonzero(flags & DELETED)),
            "with_expiry": int(np.count_nonzero(np.isfinite(expires))),
            "expired": int(np.count_nonzero(expires <= now)),
        }

    def id_hashes(self, space: FeatureSpace, namespace: str) -> np.ndarray:
        """The value hash of every item id in ``namespace`` (row order), computed once per id."""
        key = (space.seed, namespace)
        cache = self._id_hashes.get(key, np.zeros(0, np.uint32))
        if cache.size < len(self.ids):
            new = [space.value_hash(namespace, i) for i in self.ids[cache.size :]]
            cache = np.concatenate([cache, np.array(new, np.uint32)])
            self._id_hashes[key] = cache
        return cache

    def known_at(self, seq: int) -> int:
        """How many rows existed once batch ``seq`` was ingested (rows are appended in order)."""
        return int(np.searchsorted(self.first_seq[: len(self.ids)], seq, side="right"))

    def view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.ids)
        return self.ns[:n], self.raw[:n], self.x[:n]

    def features(self, row: int) -> list[tuple[str, str, float]]:
        """Row ``row``'s item features as events carry them, (namespace, value, x), its id
        left out.  A numeric feature is named ``ns=<x>`` like a categorical one, so it is
        told apart by its hash: a number's value hashes as the empty string."""
        out: list[tuple[str, str, float]] = []
        for k, name in enumerate(self.names[row][1:], start=1):
            namespace, _, value = name.partition("=")
            ns, x = int(self.ns[row, k]), float(self.x[row, k])
            numeric = int(self.raw[row, k]) == murmur3_32(b"", ns)
            out.append((namespace, "", x) if numeric else (namespace, value, x))
        return out

    STATE_VERSION: ClassVar[int] = 1

    def to_state(self) -> dict[str, Any]:
        n = len(self.ids)
        ns, raw, x = self.view()
        return {
            "ids": self.ids,
            "ns": ns,
            "raw": raw,
            "x": x,
            "first_seq": self.first_seq[:n],
            "names": self.names,
            "flags": self.flags[:n],
            "expires": self.expires[:n],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Upsert every saved item in row order (an empty catalog keeps the saved rows);
        the lifecycle too (a snapshot from before it had none: every item live)."""
        for row, item in enumerate(state["ids"]):
            self.upsert(
                item,
                int(state["first_seq"][row]),
                np.array(state["ns"][row]),
                np.array(state["raw"][row]),
                np.array(state["x"][row]),
                list(state["names"][row]),
            )
        n = len(state["ids"])
        if "flags" in state:
            self.flags[:n] = np.asarray(state["flags"], np.uint8)
            self.expires[:n] = np.asarray(state["expires"], np.float64)
        n = len(self.ids)
        self.restricted = int(
            np.count_nonzero((self.flags[:n] != 0) | np.isfinite(self.expires[:n]))
        )


@dataclass
class UserState:
    """Per-user interaction history (for exclusion: each item's time of the user's last
    interaction with it, nan when unknown), the ``recent_len`` most recent items (oldest
    first) and last known user features."""

    history: dict[str, dict[int, float]] = field(default_factory=dict)
    profiles: dict[str, BaseFeatures] = field(default_factory=dict)
    profile_names: dict[str, list[str]] = field(default_factory=dict)
    recent_len: int = 0
    recent: dict[str, list[int]] = field(default_factory=dict)
    # the last ``sequence_len`` items of each user in order, for the item-to-item signals
    sequence_len: int = 0
    sequences: dict[str, list[int]] = field(default_factory=dict)

    def seen(self, user: str) -> AbstractSet[int]:
        return self.history.get(user, {}).keys()

    def seen_since(self, user: str, cutoff: float) -> set[int]:
        """The items ``user`` met at or after ``cutoff`` (Unix seconds), and those met at
        an unknown time: what stays excluded when seen items may return after a while."""
        return {
            row for row, at in self.history.get(user, {}).items() if not at < cutoff
        }  # nan compares False: an unknown time never returns

    STATE_VERSION: ClassVar[int] = 2  # 2: ``seen_at``, the time of each history entry

    def to_state(self) -> dict[str, Any]:
        ordered = {u: sorted(met.items()) for u, met in self.history.items()}
        return {
            "history": {u: [row for row, _ in pairs] for u, pairs in ordered.items()},
            "seen_at": {u: [at for _, at in pairs] for u, pairs in ordered.items()},
            "recent": self.recent,
            "sequences": self.sequences,
            "profiles": {
                u: [p.ns, p.raw, p.x, self.profile_names.get(u, [])]
                for u, p in self.profiles.items()
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        times = state.get("seen_at", {})  # a version 1 state: every time unknown
        self.history = {
            user: dict(zip(rows, times.get(user) or [math.nan] * len(rows), strict=True))
            for user, rows in state["history"].items()
        }
        keep = self.recent_len
        self.recent = {u: list(rows)[-keep:] if keep else [] for u, rows in state["recent"].items()}
        longest = self.sequence_len
        saved = state["sequences"].items()
        self.sequences = {u: list(rows)[-longest:] if longest else [] for u, rows in saved}
        self.profiles, self.profile_names = {}, {}
        for user, (ns, raw, x, names) in state["profiles"].items():
            self.profiles[user] = BaseFeatures(
                np.array([0, len(ns)], np.int64), np.array(ns), np.array(raw), np.array(x)
            )
            self.profile_names[user] = list(names)

    def add(
        self,
        user: str,
        item_row: int,
        seen: bool = True,
        positive: bool = True,
        ts: float = math.nan,
    ) -> None:
        """The user met the item at ``ts``: ``seen``, it is not recommended to them again
        (or not before a request's ``seen_returns_after_s``); a ``positive`` one joins
        their recent items and sequence, which the item-to-item signals and the ``h.item``
        features take for what they like (a dislike must not raise its neighbours)."""
        met = self.history.setdefault(user, {})
        if seen:
            met[item_row] = ts
        if not positive:
            return
        if self.recent_len:
            recent = self.recent.setdefault(user, [])
            if item_row in recent:
                recent.remove(item_row)
            recent.append(item_row)
            del recent[: -self.recent_len]
        if self.sequence_len:
            sequence = self.sequences.setdefault(user, [])
            sequence.append(item_row)
            del sequence[: -self.sequence_len]

    def sequence(self, user: str) -> np.ndarray:
        """The user's last ``sequence_len`` items, oldest first."""
        return np.array(self.sequences.get(user, ()) if user else (), np.int64)


def with_history(
    space: FeatureSpace, catalog: Catalog, users: UserState, user: str, row: BaseFeatures
) -> tuple[BaseFeatures, list[str]]:
    """One user-side row plus a feature ``h.item=<id>`` per recent item of ``user`` (and their
    names): training and ranking both build user rows through here, so they agree."""
    recent = users.recent.get(user, ()) if user else ()
    if not recent:
        return row, []
    raw = catalog.id_hashes(space, HISTORY_NS)[recent]
    ns = space.ns_hash(HISTORY_NS)
    count = len(recent)
    extended = BaseFeatures(
        np.array([0, row.ns.size + count], np.int64),
        np.concatenate([row.ns, np.full(count, ns, np.uint32)]),
        np.concatenate([row.raw, raw]),
        np.concatenate([row.x, np.full(count, 1.0 / np.sqrt(count))]),
    )
    return extended, [f"{HISTORY_NS}={catalog.ids[r]}" for r in recent]


def with_histories(
    space: FeatureSpace, catalog: Catalog, user: BaseFeatures, recent: Sequence[Sequence[int]]
) -> BaseFeatures:
    """:func:`with_history` of every row at once: row r of ``user`` plus a feature
    ``h.item=<id>`` (value 1/sqrt(count)) per item of ``recent[r]``."""
    counts = np.fromiter(map(len, recent), np.int64, len(recent))
    if not counts.any():
        return user
    n = user.rows
    items = np.fromiter(itertools.chain.from_iterable(recent), np.int64, int(counts.sum()))
    own = np.diff(user.ptr)
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(own + counts, out=ptr[1:])
    own_row = np.repeat(np.arange(n), own)
    own_at = np.arange(user.ns.size) - user.ptr[own_row] + ptr[own_row]
    item_row = np.repeat(np.arange(n), counts)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    item_at = np.arange(items.size) - first[item_row] + ptr[item_row] + own[item_row]
    ns = np.empty(ptr[-1], np.uint32)
    raw = np.empty(ptr[-1], np.uint32)
    x = np.empty(ptr[-1], np.float64)
    ns[own_at], raw[own_at], x[own_at] = user.ns, user.raw, user.x
    ns[item_at] = space.ns_hash(HISTORY_NS)
    raw[item_at] = catalog.id_hashes(space, HISTORY_NS)[items]
    x[item_at] = 1.0 / np.sqrt(counts[item_row])
    return BaseFeatures(ptr, ns, raw, x)


def stack_rows(rows: Sequence[BaseFeatures]) -> BaseFeatures:
    """Single-row BaseFeatures stacked into one CSR batch."""
    ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum([r.ns.size for r in rows], out=ptr[1:])
    return BaseFeatures(
        ptr,
        np.concatenate([r.ns for r in rows]).astype(np.uint32),
        np.concatenate([r.raw for r in rows]).astype(np.uint32),
        np.concatenate([r.x for r in rows]).astype(np.float64),
    )


@njit(cache=True, nogil=True, inline="always")
def _row_entries(
    r: int,
    user: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    item: int,
    item_side: tuple[np.ndarray, np.ndarray, np.ndarray],
    crosses: np.ndarray,
    index: tuple[int, np.uint64],
    tail: tuple[np.ndarray, np.ndarray],
    out: tuple[np.ndarray, np.ndarray],
    at: int,
) -> int:
    """Row ``r``'s entries of :func:`expand` from ``out[.][at]`` on (bias, user side,
    item side, crosses, nonzero tail); with empty ``out`` arrays they are only counted.
    ``index`` = (the bias's index, the mask of the index space).  Returns where the
    next row starts."""
    bias_index, mask = index
    u_ptr, u_ns, u_raw, u_x = user
    c_ns, c_raw, c_x = item_side
    tail_index, tail_values = tail
    indices, values = out
    write = indices.shape[0] > 0
    if write:
        indices[at], values[at] = bias_index, 1.0
    at += 1
    for u in range(u_ptr[r], u_ptr[r + 1]):
        if write:
            indices[at], values[at] = np.int64(np.uint64(u_raw[u]) & mask), u_x[u]
        at += 1
    if item >= 0:
        for c in range(c_x.shape[1]):
            if c_x[item, c] != 0.0:
                if write:
                    indices[at] = np.int64(np.uint64(c_raw[item, c]) & mask)
                    values[at] = c_x[item, c]
                at += 1
        for k in range(crosses.shape[0]):
            for u in range(u_ptr[r], u_ptr[r + 1]):
                if u_ns[u] != crosses[k, 0]:
                    continue
                pre = (np.uint64(u_raw[u]) * np.uint64(FNV_PRIME)) & np.uint64(MASK32)
                for c in range(c_x.shape[1]):
                    if c_ns[item, c] == crosses[k, 1] and c_x[item, c] != 0.0:
                        if write:
                            h = _fmix(pre ^ np.uint64(c_raw[item, c]))
                            indices[at] = np.int64(h & mask)
                            values[at] = u_x[u] * c_x[item, c]
                        at += 1
    for j in range(tail_index.shape[0]):
        if tail_values[r, j] != 0.0:
            if write:
                indices[at], values[at] = tail_index[j], tail_values[r, j]
            at += 1
    return at


@njit(cache=True, nogil=True)
def _expand_rows(
    user: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    item_rows: np.ndarray,
    item_side: tuple[np.ndarray, np.ndarray, np.ndarray],
    crosses: np.ndarray,
    bias_index: int,
    mask: int,
    tail: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`expand` in two passes over the rows (count, then fill), no temporaries.

    ``user`` is a CSR of base features (ptr, ns, raw, x); ``item_side`` the catalog's
    (ns, raw, x) matrices, read for rows with ``item_rows[r] >= 0``; ``crosses`` the
    (user namespace, item namespace) pairs; ``tail`` = (indices, values (rows, k)): k
    trailing features of each row, its nonzero values only (k may be 0)."""
    n = item_rows.shape[0]
    index = (bias_index, np.uint64(mask))
    indptr = np.zeros(n + 1, np.int64)
    counting = (np.zeros(0, np.int64), np.zeros(0))
    for r in range(n):
        indptr[r + 1] = _row_entries(
            r, user, item_rows[r], item_side, crosses, index, tail, counting, indptr[r]
        )
    out = (np.empty(indptr[n], np.int64), np.empty(indptr[n], np.float64))
    for r in range(n):
        _row_entries(r, user, item_rows[r], item_side, crosses, index, tail, out, indptr[r])
    return indptr, out[0], out[1]


NO_TAIL = (np.zeros(0, np.int64), np.zeros((0, 0)))


def expand(
    space: FeatureSpace,
    user: BaseFeatures,
    item_rows: np.ndarray,
    catalog: Catalog,
    tail: tuple[np.ndarray, np.ndarray] = NO_TAIL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model rows (CSR indptr, global indices, values) for user row r paired with item_rows[r].

    ``item_rows[r] == -1`` means no item (a pure CTR event).  Within a row the order
    is bias, user side, item side, crosses, then the nonzero ``tail`` features
    ((indices, values (rows, k)), e.g. the sequence signals): a deterministic order,
    so the FTRL updates of a batch are applied in the same order however the state is
    sharded.
    """
    rows = np.ascontiguousarray(item_rows, np.int64)
    if not len(catalog):
        rows = np.full(rows.shape, -1, np.int64)
    crosses = np.array(space.crosses, np.uint32).reshape(-1, 2)
    tail_index, tail_values = tail
    if tail_index.size == 0:
        tail_values = np.zeros((rows.size, 0))
    return _expand_rows(
        (
            np.ascontiguousarray(user.ptr, np.int64),
            np.ascontiguousarray(user.ns, np.uint32),
            np.ascontiguousarray(user.raw, np.uint32),
            np.ascontiguousarray(user.x, np.float64),
        ),
        rows, (catalog.ns, catalog.raw, catalog.x), crosses, int(space.bias_index), space.mask,
        (np.ascontiguousarray(tail_index, np.int64), np.ascontiguousarray(tail_values, np.float64)),
    )  # fmt: skip


def expand_dense(
    space: FeatureSpace, raw_columns: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model rows for a CTR batch with one value per column and no items: bias + columns.

    Same rows as :func:`expand` would build, without the sort (the fast replay path).
    """
    n, cols = raw_columns.shape
    indices = np.empty((n, cols + 1), np.int64)
    indices[:, 0] = space.bias_index
    indices[:, 1:] = raw_columns & np.uint32(space.mask)
    indptr = np.arange(0, n * (cols + 1) + 1, cols + 1, dtype=np.int64)
    return indptr, indices.reshape(-1), np.ones(n * (cols + 1))


@njit(cache=True, nogil=True)
def _factor_rows(
    user: tuple[np.ndarray, np.ndarray, np.ndarray],
    item_rows: np.ndarray,
    item_side: tuple[np.ndarray, np.ndarray],
    mask: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`expand_factors` in one compiled pass: per row, every user entry (ptr,
    raw, x), then the nonzero entries of catalog row ``item_rows[r]`` (raw, x matrices;
    none when it is negative)."""
    u_ptr, u_raw, u_x = user
    c_raw, c_x = item_side
    n = item_rows.shape[0]
    m = np.uint64(mask)
    fptr = np.zeros(n + 1, np.int64)
    for r in range(n):
        count = u_ptr[r + 1] - u_ptr[r]
        if item_rows[r] >= 0:
            for c in range(c_x.shape[1]):
                count += c_x[item_rows[r], c] != 0.0
        fptr[r + 1] = fptr[r] + count
    indices, values = np.empty(fptr[n], np.int64), np.empty(fptr[n], np.float64)
    for r in range(n):
        at = fptr[r]
        for u in range(u_ptr[r], u_ptr[r + 1]):
            indices[at], values[at] = np.int64(np.uint64(u_raw[u]) & m), u_x[u]
            at += 1
        item = item_rows[r]
        for c in range(c_x.shape[1] if item >= 0 else 0):
            if c_x[item, c] != 0.0:
                indices[at] = np.int64(np.uint64(c_raw[item, c]) & m)
                values[at] = c_x[item, c]
                at += 1
    return fptr, indices, values


def expand_factors(
    user: BaseFeatures, item_rows: np.ndarray, catalog: Catalog, mask: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factor rows (CSR indptr, factor indices, values): the base features of :func:`expand`'s
    rows, user side then item side, without the bias and the explicit crosses."""
    rows = np.ascontiguousarray(item_rows, np.int64)
    if not len(catalog):
        rows = np.full(rows.shape, -1, np.int64)
    return _factor_rows(
        (
            np.ascontiguousarray(user.ptr, np.int64),
            np.ascontiguousarray(user.raw, np.uint32),
            np.ascontiguousarray(user.x, np.float64),
        ),
        rows, (catalog.raw, catalog.x), mask,
    )  # fmt: skip


def expand_dense_factors(
    raw_columns: np.ndarray, mask: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factor rows of a CTR batch: every column is a base feature."""
    n, cols = raw_columns.shape
    fptr = np.arange(0, n * cols + 1, cols, dtype=np.int64)
    return fptr, (raw_columns & np.uint32(mask)).astype(np.int64).reshape(-1), np.ones(n * cols)


@njit(cache=True, nogil=True)
def _linear_row(
    w: np.ndarray,
    m: np.uint64,
    base: float,
    r: int,
    ins: np.ndarray,
    iraw: np.ndarray,
    ix: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> float:
    """base + catalog row ``r``'s item-side weights + its crosses with the user's features."""
    pair_ns, pair_pre, pair_x = pairs
    s = base
    for c in range(ix.shape[1]):
        x = ix[r, c]
        if x == 0.0:
            continue
        h = np.uint64(iraw[r, c])
        s += w[np.int64(h & m)] * x
        ns = ins[r, c]
        for p in range(pair_ns.shape[0]):
            if pair_ns[p] == ns:
                s += w[np.int64(_fmix(pair_pre[p] ^ h) & m)] * x * pair_x[p]
    return s


@njit(cache=True, nogil=True)
def _score_rows(
    w: np.ndarray,
    mask: int,
    base: float,
    rows: np.ndarray,
    item_side: tuple[np.ndarray, np.ndarray, np.ndarray],
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    factor_side: tuple[np.ndarray, np.ndarray, np.ndarray, float],
    signals: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Per catalog row: base + item-side weights + crosses, where pair p crosses a user
    feature (premixed hash ``pair_pre[p]``, value ``pair_x[p]``) with item namespace
    ``pair_ns[p]``; + the factor terms a_U · a_I + t_I + t_U when ``factor_side`` (a_I
    and t_I per catalog row, a_U, t_U) has a user side; + Σ_s w_s · value_s of the signals
    (weights, values (signals, rows)).  One pass over the rows, no temporaries."""
    ins, iraw, ix = item_side
    a_items, t_items, a_user, user_term = factor_side
    signal_w, signal_values = signals
    out = np.empty(rows.shape[0], np.float64)
    m = np.uint64(mask)
    signal_sums = np.zeros(rows.shape[0] if signal_w.size else 0)
    for j in range(signal_w.size):  # row by row of values: vectorised, same order per row
        for k in range(signal_sums.size):
            signal_sums[k] += signal_w[j] * signal_values[j, k]
    for k in range(rows.shape[0]):
        r = rows[k]
        s = _linear_row(w, m, base, r, ins, iraw, ix, pairs)
        if a_user.size:
            f = 0.0
            for j in range(a_user.size):
                f += a_items[r, j] * a_user[j]
            s += (f + t_items[r]) + user_term
        if signal_w.size:
            s += signal_sums[k]
        out[k] = s
    return out


def cross_pairs(
    space: FeatureSpace, user: BaseFeatures
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item namespace, premixed user hash, user x) of each cross the user's features take
    part in, as the scoring kernels take them: cross by cross, the user's features in order."""
    crosses = np.array(space.crosses, np.uint32).reshape(-1, 2)
    cross, feature = np.nonzero(user.ns[None, :] == crosses[:, :1])
    premixed = (user.raw[feature].astype(np.uint64) * np.uint64(FNV_PRIME)) & np.uint64(MASK32)
    return crosses[cross, 1], premixed, user.x[feature].astype(np.float64)


NO_FACTORS = (np.zeros((0, 0)), np.zeros(0), np.zeros(0), 0.0)
NO_SIGNALS = (np.zeros(0), np.zeros((0, 0)))


def score_items(
    space: FeatureSpace,
    user: BaseFeatures,
    catalog: Catalog,
    w: np.ndarray,
    rows: np.ndarray | None = None,
    factors: FactorScorer | None = None,
    signals: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Logits of one user context (a single-row BaseFeatures) against catalog rows (all by default).

    Equals :func:`expand` + dot product (a test checks it), with the user side summed
    once and the item side and crosses in one compiled pass over the catalog; with
    ``factors``, plus the factorization terms of :func:`expand_factors`' rows; with
    ``signals`` (the signals' weights, their values (signals, rows)), plus Σ w · value.
    """
    user_idx = np.concatenate(([space.bias_index], space.index(user.raw)))
    base = float(w[user_idx] @ np.concatenate(([1.0], user.x)))
    if rows is None:
        rows = np.arange(len(catalog))
    factor_side = NO_FACTORS
    if factors is not None:
        n_items = len(catalog)
        factor_side = factors.sides(
            user.raw, user.x, catalog.raw[:n_items], catalog.x[:n_items], catalog.version
        )
    rows = np.ascontiguousarray(rows, np.int64)
    if signals is not None and (
        signals[1].ndim != 2 or signals[1].shape != (signals[0].size, rows.size)
    ):  # the kernel reads values[:, k] unchecked
        raise ValueError(f"signal values {signals[1].shape} do not match {rows.size} rows")
    return _score_rows(
        w,
        space.mask,
        base,
        rows,
        (catalog.ns, catalog.raw, catalog.x),
        cross_pairs(space, user),
        factor_side,
        NO_SIGNALS if signals is None else signals,
    )


def explain(
    space: FeatureSpace,
    user: BaseFeatures,
    user_names: Sequence[str],
    catalog: Catalog,
    row: int,
    w: np.ndarray,
    top: int = 5,
    factors: FactorStore | None = None,
    signals: Sequence[tuple[str, float]] = (),
) -> list[dict[str, object]]:
    """The terms that contributed most to one item's score, with readable names: linear
    weights (|w·x|, ``part: "linear"``), with ``factors`` factor pairs
    (<v_i, v_j> x_i x_j, ``part: "factor"``), and the given sequence-signal terms
    (``part: "signal"``)."""
    names = ["bias", *user_names]
    idx = [space.bias_index, *space.index(user.raw)]
    xs = [1.0, *user.x]
    ins, iraw, ix = catalog.ns[row], catalog.raw[row], catalog.x[row]
    item_names = catalog.names[row]
    for k in np.flatnonzero(ix != 0):
        names.append(item_names[k] if k < len(item_names) else f"item#{k}")
        idx.append(int(space.index(iraw[k : k + 1])[0]))
        xs.append(float(ix[k]))
    for (a, b), (an, bn) in zip(space.crosses, space.cross_names, strict=True):
        for ku in np.flatnonzero(user.ns == a):
            for ki in np.flatnonzero((ins == b) & (ix != 0)):
                raw = cross_hash(np.uint32(user.raw[ku]), np.uint32(iraw[ki]))
                uname = user_names[int(ku)] if ku < len(user_names) else an
                iname = item_names[ki] if ki < len(item_names) else bn
                names.append(f"{uname} x {iname}")
                idx.append(int(space.index(np.atleast_1d(raw))[0]))
                xs.append(float(user.x[ku] * ix[ki]))
    contributions = list(w[np.asarray(idx, np.int64)] * np.asarray(xs))
    parts = ["linear"] * len(contributions)
    if factors is not None:
        base = len(user_names) + 1 + int(np.count_nonzero(ix))  # bias is not a factor feature
        raws = np.concatenate([user.raw, iraw[ix != 0]]).astype(np.uint32)
        fidx = (raws & np.uint32(factors.params.mask)).astype(np.int64)
        first, second, terms = pair_contributions(factors.v, fidx, np.asarray(xs[1:base]))
        for i, j, term in zip(first, second, terms, strict=True):
            names.append(f"{names[i + 1]} ~ {names[j + 1]}")
            contributions.append(float(term))
            parts.append("factor")
    for name, term in signals:
        names.append(name)
        contributions.append(term)
        parts.append("signal")
    values = np.asarray(contributions)
    order = np.argsort(-np.abs(values), kind="stable")[:top]
    return [
        {"feature": names[i], "contribution": float(values[i]), "part": parts[i]}
        for i in order
        if values[i] != 0
    ]
