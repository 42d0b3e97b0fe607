"""Online item-to-item statistics: co-occurrence (item-kNN) and transitions (Markov).

Pure numeric code, no asyncio: the trainer learns it per event and the ranker reads
it for whole-catalog scores, candidates and "similar items".

Items are catalog rows ``0..n-1``; the arrays grow as rows appear.  An event is a
user whose previous items are ``recent`` (oldest first) interacting with ``item``.

* **kNN** (cosine item-kNN, Sarwar et al., "Item-based collaborative filtering
  recommendation algorithms", WWW 2001; recency weighting as in Ding & Li, "Time
  weight collaborative filtering", CIKM 2005).  ``C[l, j]`` counts the events in
  which ``j`` followed ``l`` or ``l`` followed ``j`` within the user's last
  ``window`` items, and ``n[j]`` counts ``j``'s interactions.  A user scores

      knn(j) = sum_l 2^(-age_l / half_life) C[l, j] / sqrt(n_l n_j)

  over the last ``window`` recent items ``l``, ``age_l`` being the number of the
  user's events after ``l`` (0 for the last one).
* **Markov** (a decayed variable-distance transition model, in the spirit of the
  session-kNN / sequential rules baselines of Ludewig & Jannach, "Evaluation of
  session-based recommendation algorithms", UMUAI 2018).  ``T[a, b]`` adds
  ``decay^(d-1)`` each time ``b`` comes ``d <= markov_order`` events after ``a``,
  ``R[a]`` is the sum of ``a``'s row, and a user scores

      markov(j) = sum_{d=1..order} decay^(d-1) T[last_d, j] / R[last_d].

A self pair (``l == j``) is never counted: a neighbour list is about other items,
and whether to show an item again is the ranker's business.

**Bounded memory.**  Every item keeps at most ``neighbours`` entries per
statistic, a row of a Filtered Space-Saving summary (Metwally, Agrawal & El
Abbadi, "Efficient computation of frequent and top-k elements in data streams",
ICDT 2005; the filter of Homem & Carvalho, "Finding top-k elements in data
streams", Information Sciences 2010).  A weight for a neighbour already kept is
added to its count; a new neighbour takes a free slot.  When the row is full, the
new neighbour's weight goes to one of ``admission_counters`` hashed counters,
which bound the weight of every neighbour not kept; only when that bound exceeds
the row's smallest count does the neighbour replace the weakest entry, starting
from the bound.  Without the filter every one-off pair would evict
the weakest entry, and on a dense log (ML-100K) the mid-strength neighbours would
cycle through the weakest slots and never build up a count.  Each entry brackets
its true count: ``sure <= true <= count``, ``sure`` being the weight added since the
entry was admitted.  Eviction uses ``count`` (as Space-Saving), the scores use
``sure``, so a newcomer is not credited with the weight it inherited.
While no row is full the counts are exact.

**Scores.**  Each signal is divided by its maximum over every row the statistics
know, so 1 is the user's strongest candidate and 0 means no evidence.  The
accumulation is sparse (the recent items' neighbour lists), so its cost is
``max(window, markov_order) x neighbours``, independent of the catalog size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numba import njit

STATE_VERSION = 1
SIGNALS = ("knn", "markov")


@dataclass(frozen=True)
class ItemStatsParams:
    """How far back a user's items reach and how much each statistic may keep.

    The defaults are the moves of ``bench/itemstats.py --grid`` that raised a signal's
    HR@10 on one of ML-100K, MovieTweetings and Amazon Grocery without lowering it on
    another by more than the noise (``--candidates`` checks them together).  A wider
    co-occurrence window helps MovieTweetings and hurts the others.  Longer neighbour
    lists help dense ML-100K's kNN and cost sparse MovieTweetings' kNN a little, but in
    the model (``freshrank replay``) 300 raise ML-100K's HR@10 by 0.009 and leave the
    other two sets within the noise (bench/README.md, issue 10's second round); each
    neighbour costs 40 bytes per item.
    """

    window: int = 10
    half_life: float = 3.0
    markov_order: int = 10
    markov_decay: float = 0.8
    neighbours: int = 300
    admission_counters: int = 32

    def __post_init__(self) -> None:
        for name in ("window", "markov_order", "neighbours", "admission_counters"):
            value = getattr(self, name)
            if not (isinstance(value, int) and 1 <= value <= 100_000):
                raise ValueError(f"itemstats {name} must be an int in 1..100000, got {value!r}")
        if not (self.half_life > 0 and math.isfinite(self.half_life)):
            raise ValueError(f"itemstats half_life must be > 0, got {self.half_life}")
        if not 0 < self.markov_decay <= 1:
            raise ValueError(f"itemstats markov_decay must be in (0, 1], got {self.markov_decay}")


# ----------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True, inline="always")
def _bucket(other: int, buckets: int) -> int:
    """Knuth's multiplicative hash of a neighbour row onto a row's admission counters."""
    return ((other * 2654435761) & 0xFFFFFFFF) % buckets


@njit(cache=True, nogil=True, fastmath=True)
def _row_minimum(counts: np.ndarray) -> float:
    """The smallest count; fastmath lets LLVM vectorise it (counts are finite, never NaN)."""
    low = counts[0]
    for s in range(1, counts.shape[0]):
        low = min(low, counts[s])
    return low


@njit(cache=True, nogil=True, inline="always")
def _first_minimum(counts: np.ndarray) -> int:
    low = _row_minimum(counts)
    for s in range(counts.shape[0]):
        if counts[s] == low:
            return s
    return 0


@njit(cache=True, nogil=True, inline="always")
def _slot_of(ids: np.ndarray, used: int, other: int) -> int:
    """Slot of ``other`` among a row's ``used`` distinct ids, or -1.

    A branch-free sum instead of a loop that stops at the match: LLVM vectorises it,
    and a full row is scanned to the end anyway whenever the neighbour is new.
    """
    found = 0
    for s in range(used):
        found += (ids[s] == other) * (s + 1)
    return found - 1


@njit(cache=True, nogil=True, inline="always")
def _add(
    nbr: np.ndarray,
    cnt: np.ndarray,
    sure: np.ndarray,
    fill: np.ndarray,
    weakest: np.ndarray,
    gate: np.ndarray,
    row: int,
    other: int,
    w: float,
) -> None:
    """Filtered Space-Saving update of ``row``'s summary with weight ``w`` for ``other``.

    ``weakest[row]`` is the slot of the full row's smallest count, recomputed only when
    that entry changes, so a newcomer the gate turns away costs no pass over the row.
    """
    used = fill[row]
    full = nbr.shape[1]
    s = _slot_of(nbr[row], used, other)
    if s >= 0:
        cnt[row, s] += w
        sure[row, s] += w
        if used == full and s == weakest[row]:
            weakest[row] = _first_minimum(cnt[row])
        return
    if used < full:
        nbr[row, used] = other
        cnt[row, used] = w
        sure[row, used] = w
        fill[row] = used + 1
        if used + 1 == full:
            weakest[row] = _first_minimum(cnt[row])
        return
    low = weakest[row]
    buckets = gate.shape[1]
    bucket = _bucket(other, buckets)
    unmonitored = gate[row, bucket]
    if unmonitored + w <= cnt[row, low]:
        gate[row, bucket] = unmonitored + w
        return
    evicted = _bucket(nbr[row, low], buckets)
    gate[row, evicted] = max(gate[row, evicted], cnt[row, low])
    nbr[row, low] = other
    cnt[row, low] = unmonitored + w
    sure[row, low] = w
    weakest[row] = _first_minimum(cnt[row])


@njit(cache=True, nogil=True)
def _learn_events(
    recent_ptr: np.ndarray,
    recent_rows: np.ndarray,
    items: np.ndarray,
    window: int,
    order: int,
    decay: float,
    knn_nbr: np.ndarray,
    knn_cnt: np.ndarray,
    knn_sure: np.ndarray,
    knn_fill: np.ndarray,
    knn_weakest: np.ndarray,
    knn_gate: np.ndarray,
    mk_nbr: np.ndarray,
    mk_cnt: np.ndarray,
    mk_sure: np.ndarray,
    mk_fill: np.ndarray,
    mk_weakest: np.ndarray,
    mk_gate: np.ndarray,
    item_count: np.ndarray,
    inv_sqrt_count: np.ndarray,
    mk_total: np.ndarray,
) -> None:
    """Learn events in order (CSR ``recent_ptr``/``recent_rows``), as the module docstring."""
    for e in range(items.shape[0]):
        item = items[e]
        lo = recent_ptr[e]
        hi = recent_ptr[e + 1]
        for p in range(max(lo, hi - window), hi):
            other = recent_rows[p]
            if other != item:
                _add(knn_nbr, knn_cnt, knn_sure, knn_fill, knn_weakest, knn_gate, other, item, 1.0)
                _add(knn_nbr, knn_cnt, knn_sure, knn_fill, knn_weakest, knn_gate, item, other, 1.0)
        w = 1.0
        for p in range(hi - 1, max(lo, hi - order) - 1, -1):
            prev = recent_rows[p]
            if prev != item:
                _add(mk_nbr, mk_cnt, mk_sure, mk_fill, mk_weakest, mk_gate, prev, item, w)
                mk_total[prev] += w
            w *= decay
        item_count[item] += 1.0
        inv_sqrt_count[item] = 1.0 / math.sqrt(item_count[item])


@njit(cache=True, nogil=True)
def _accumulate(
    recent: np.ndarray,
    window: int,
    half_life: float,
    order: int,
    decay: float,
    knn_nbr: np.ndarray,
    knn_sure: np.ndarray,
    knn_fill: np.ndarray,
    mk_nbr: np.ndarray,
    mk_sure: np.ndarray,
    mk_fill: np.ndarray,
    inv_sqrt_count: np.ndarray,
    mk_total: np.ndarray,
    out: np.ndarray,
    touched: np.ndarray,
) -> np.ndarray:
    """Add both signals' raw scores into ``out`` (zero on entry, one row per signal).

    Returns how many rows each signal touched; their indices are ``touched[s, :count]``,
    so a caller can read the maxima and clear a reused buffer without a full pass.
    """
    last = recent.shape[0]
    knn_out, knn_touched, knn_count = out[0], touched[0], 0
    for p in range(max(0, last - window), last):
        row = recent[p]
        w = 2.0 ** (-(last - 1 - p) / half_life) * inv_sqrt_count[row]
        nbr, sure = knn_nbr[row], knn_sure[row]
        for s in range(knn_fill[row]):
            j = nbr[s]
            knn_touched[knn_count] = j  # kept only if j is new: no branch to mispredict
            knn_count += knn_out[j] == 0.0
            knn_out[j] += w * sure[s] * inv_sqrt_count[j]
    mk_out, mk_touched, mk_count = out[1], touched[1], 0
    w = 1.0
    for p in range(last - 1, max(0, last - order) - 1, -1):
        row = recent[p]
        if mk_total[row] > 0.0:
            scale = w / mk_total[row]
            nbr, sure = mk_nbr[row], mk_sure[row]
            for s in range(mk_fill[row]):
                j = nbr[s]
                mk_touched[mk_count] = j
                mk_count += mk_out[j] == 0.0
                mk_out[j] += scale * sure[s]
        w *= decay
    counts = np.empty(2, np.int64)
    counts[0], counts[1] = knn_count, mk_count
    return counts


@njit(cache=True, nogil=True)
def _maxima(out: np.ndarray, touched: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each signal's largest score over the rows it touched (0 when it touched none)."""
    best = np.zeros(out.shape[0])
    for s in range(out.shape[0]):
        for t in range(counts[s]):
            best[s] = max(best[s], out[s, touched[s, t]])
    return best


@njit(cache=True, nogil=True, inline="always")
def _read_and_clear(
    out: np.ndarray,
    touched: np.ndarray,
    counts: np.ndarray,
    best: np.ndarray,
    items: np.ndarray,
    raw: bool,
    result: np.ndarray,
) -> None:
    """Scores of ``items`` into ``result`` (divided by the signal's maximum ``best`` unless
    ``raw``; none from a signal whose maximum is 0), ``out`` back to zero."""
    for s in range(out.shape[0]):
        if best[s] > 0.0:
            scale = 1.0 if raw else best[s]
            for i in range(items.shape[0]):
                item = items[i]
                if 0 <= item < out.shape[1]:
                    result[s, i] = out[s, item] / scale
        for t in range(counts[s]):
            out[s, touched[s, t]] = 0.0


@njit(cache=True, nogil=True)
def _scores_events(
    recent_ptr: np.ndarray,
    recent_rows: np.ndarray,
    items_ptr: np.ndarray,
    items: np.ndarray,
    known: int,
    window: int,
    half_life: float,
    order: int,
    decay: float,
    knn_nbr: np.ndarray,
    knn_sure: np.ndarray,
    knn_fill: np.ndarray,
    mk_nbr: np.ndarray,
    mk_sure: np.ndarray,
    mk_fill: np.ndarray,
    inv_sqrt_count: np.ndarray,
    mk_total: np.ndarray,
    out: np.ndarray,
    touched: np.ndarray,
    raw: bool,
) -> np.ndarray:
    """Event e's scores of ``items[items_ptr[e]:items_ptr[e+1]]``, all events in one call.

    Rows the statistics do not know (negative, or ``>= known``) are left out of a user's
    recent items before the ages are counted, as if never seen.
    """
    result = np.zeros((out.shape[0], items.shape[0]))
    for e in range(items_ptr.shape[0] - 1):
        history = recent_rows[recent_ptr[e] : recent_ptr[e + 1]]
        recent = history[(history >= 0) & (history < known)]
        counts = _accumulate(
            recent, window, half_life, order, decay,
            knn_nbr, knn_sure, knn_fill, mk_nbr, mk_sure, mk_fill,
            inv_sqrt_count, mk_total, out, touched,
        )  # fmt: skip
        lo, hi = items_ptr[e], items_ptr[e + 1]
        best = _maxima(out, touched, counts)
        _read_and_clear(out, touched, counts, best, items[lo:hi], raw, result[:, lo:hi])
    return result


@njit(cache=True, nogil=True)
def _raw_scores_and_totals(
    recent: np.ndarray,
    items: np.ndarray,
    window: int,
    half_life: float,
    order: int,
    decay: float,
    knn_nbr: np.ndarray,
    knn_sure: np.ndarray,
    knn_fill: np.ndarray,
    mk_nbr: np.ndarray,
    mk_sure: np.ndarray,
    mk_fill: np.ndarray,
    inv_sqrt_count: np.ndarray,
    mk_total: np.ndarray,
    out: np.ndarray,
    touched: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The raw scores of ``items`` and each signal's maximum and total over the rows it
    touched, for one user (the mixture needs the totals to make distributions)."""
    counts = _accumulate(
        recent, window, half_life, order, decay,
        knn_nbr, knn_sure, knn_fill, mk_nbr, mk_sure, mk_fill,
        inv_sqrt_count, mk_total, out, touched,
    )  # fmt: skip
    totals, best = np.zeros(out.shape[0]), np.zeros(out.shape[0])
    for s in range(out.shape[0]):
        for t in range(counts[s]):
            value = out[s, touched[s, t]]
            totals[s] += value
            best[s] = max(best[s], value)
    result = np.zeros((out.shape[0], items.shape[0]))
    _read_and_clear(out, touched, counts, best, items, True, result)
    return result, best, totals


# ----------------------------------------------------------------------------- model


class ItemStats:
    """Bounded online kNN and Markov neighbour lists over catalog rows (module docstring).

    Not safe to share between threads: scoring reuses one scratch buffer so that it
    costs the neighbours it touches, not the catalog.
    """

    names: tuple[str, ...] = SIGNALS
    # per row, made by _arrays (neighbour ids, counts, certainties, fill and weakest slot,
    # admission counters; the same for the Markov lists; counts and their 1/sqrt)
    knn_nbr: np.ndarray
    knn_cnt: np.ndarray
    knn_sure: np.ndarray
    knn_fill: np.ndarray
    knn_weakest: np.ndarray
    knn_gate: np.ndarray
    mk_nbr: np.ndarray
    mk_cnt: np.ndarray
    mk_sure: np.ndarray
    mk_fill: np.ndarray
    mk_weakest: np.ndarray
    mk_gate: np.ndarray
    item_count: np.ndarray
    inv_sqrt_count: np.ndarray
    mk_total: np.ndarray
    _out: np.ndarray
    _touched: np.ndarray

    def __init__(self, params: ItemStatsParams | None = None, capacity: int = 1024) -> None:
        self.params = params or ItemStatsParams()
        self.n_items = 0
        self._allocate(max(int(capacity), 1))

    def _allocate(self, capacity: int) -> None:
        self.__dict__.update(self._arrays(capacity))

    def _arrays(self, capacity: int) -> dict[str, np.ndarray]:
        k, gates = self.params.neighbours, self.params.admission_counters
        arrays: dict[str, np.ndarray] = {}
        for kind in ("knn", "mk"):  # the co-occurrence and the transition lists alike
            arrays[f"{kind}_nbr"] = np.full((capacity, k), -1, np.int32)
            arrays[f"{kind}_cnt"] = np.zeros((capacity, k))
            arrays[f"{kind}_sure"] = np.zeros((capacity, k))
            arrays[f"{kind}_fill"] = np.zeros(capacity, np.int32)
            arrays[f"{kind}_weakest"] = np.zeros(capacity, np.int32)
            arrays[f"{kind}_gate"] = np.zeros((capacity, gates))
        arrays["item_count"] = np.zeros(capacity)
        # 1 / sqrt(max(count, 1)), kept per event: scoring multiplies, not sqrt + divide
        arrays["inv_sqrt_count"] = np.ones(capacity)
        arrays["mk_total"] = np.zeros(capacity)
        arrays["_out"] = np.zeros((len(SIGNALS), capacity))
        arrays["_touched"] = np.zeros((len(SIGNALS), self._touched_size()), np.int64)
        return arrays

    def _touched_size(self) -> int:
        p = self.params
        return max(p.window, p.markov_order) * p.neighbours

    @property
    def capacity(self) -> int:
        return int(self.item_count.shape[0])

    def reserve(self, rows: int) -> None:
        """Room for rows ``0..rows-1`` without counting them as known (``n_items``)."""
        known = self.n_items
        self._grow(rows)
        self.n_items = known

    def kernel_params(self) -> tuple[int, float, int, float]:
        p = self.params
        return (p.window, float(p.half_life), p.markov_order, float(p.markov_decay))

    def scoring_arrays(self) -> tuple[np.ndarray, ...]:
        """What the scoring kernels read, in their argument order (and the scratch)."""
        return (
            self.knn_nbr, self.knn_sure, self.knn_fill, self.mk_nbr, self.mk_sure,
            self.mk_fill, self.inv_sqrt_count, self.mk_total, self._out, self._touched,
        )  # fmt: skip

    def learning_arrays(self) -> tuple[np.ndarray, ...]:
        """What ``_learn_events`` updates, in its argument order."""
        return (
            self.knn_nbr, self.knn_cnt, self.knn_sure, self.knn_fill, self.knn_weakest,
            self.knn_gate, self.mk_nbr, self.mk_cnt, self.mk_sure, self.mk_fill,
            self.mk_weakest, self.mk_gate, self.item_count, self.inv_sqrt_count, self.mk_total,
        )  # fmt: skip

    def _grow(self, rows_needed: int) -> None:
        """Make room for rows ``0..rows_needed-1`` (capacity doubles, so growth is amortised)."""
        self.n_items = max(self.n_items, rows_needed)
        grow = self.growth(rows_needed)
        if grow is not None:
            grow()

    def growth(self, rows_needed: int) -> Callable[[], None] | None:
        """The work of making room for rows ``0..rows_needed-1`` (None: there is room): it
        builds the larger arrays from the current ones and swaps them all in at once, so
        it may run in a worker thread while readers use the current arrays (nothing may
        learn meanwhile).  At 300 neighbours per item a doubling copies tens of MB."""
        if rows_needed <= self.capacity:
            return None
        capacity = self.capacity
        while capacity < rows_needed:
            capacity *= 2

        def grow() -> None:
            arrays = self._arrays(capacity)
            for name in (*_ROW_ARRAYS, "inv_sqrt_count"):
                old = getattr(self, name)
                arrays[name][: len(old)] = old
            self.__dict__.update(arrays)

        return grow

    # ------------------------------------------------------------------ learning

    def learn(self, recent: np.ndarray, item: int) -> None:
        """A user whose previous items are ``recent`` (oldest first) interacted with ``item``."""
        rows = np.asarray(recent, np.int64)
        self.learn_batch(np.array([0, len(rows)], np.int64), rows, np.array([item], np.int64))

    def learn_batch(
        self, recent_ptr: np.ndarray, recent_rows: np.ndarray, items: np.ndarray
    ) -> None:
        """Events in order: event e's previous items are ``recent_rows[recent_ptr[e]:recent_ptr[e+1]]``."""
        ptr = np.ascontiguousarray(recent_ptr, np.int64)
        rows = np.ascontiguousarray(recent_rows, np.int64)
        targets = np.ascontiguousarray(items, np.int64)
        if ptr.shape != (len(targets) + 1,) or ptr[0] != 0 or ptr[-1] != len(rows):
            raise ValueError(
                "recent_ptr must have len(items) + 1 offsets from 0 to len(recent_rows)"
            )
        if np.any(np.diff(ptr) < 0):
            raise ValueError("recent_ptr must be non-decreasing")
        if len(targets) == 0:
            return
        lowest = min(int(targets.min()), int(rows.min()) if len(rows) else 0)
        if lowest < 0:
            raise ValueError(f"item rows must be >= 0, got {lowest}")
        self._grow(max(int(targets.max()), int(rows.max()) if len(rows) else 0) + 1)
        p = self.params
        _learn_events(
            ptr, rows, targets, p.window, p.markov_order, p.markov_decay,
            self.knn_nbr, self.knn_cnt, self.knn_sure, self.knn_fill, self.knn_weakest, self.knn_gate,
            self.mk_nbr, self.mk_cnt, self.mk_sure, self.mk_fill, self.mk_weakest, self.mk_gate,
            self.item_count, self.inv_sqrt_count, self.mk_total,
        )  # fmt: skip

    # ------------------------------------------------------------------ scoring

    def scores(self, recent: np.ndarray, n_items: int, *, raw: bool = False) -> np.ndarray:
        """``(len(names), n_items)``: every row's score, each signal divided by its maximum.

        The maximum is over every row the statistics know (also past ``n_items``), so
        these are exactly the values :meth:`scores_at` gives.  ``raw``: undivided sums.
        """
        return self.scores_at(recent, np.arange(int(n_items), dtype=np.int64), raw=raw)

    def scores_at(self, recent: np.ndarray, items: np.ndarray, *, raw: bool = False) -> np.ndarray:
        """``(len(names), len(items))``: the values :meth:`scores` gives ``items``."""
        rows = np.asarray(recent, np.int64)
        wanted = np.asarray(items, np.int64)
        ptr = np.array([0, len(rows)], np.int64)
        return self.scores_at_batch(
            ptr, rows, np.array([0, len(wanted)], np.int64), wanted, raw=raw
        )

    def scores_at_batch(
        self,
        recent_ptr: np.ndarray,
        recent_rows: np.ndarray,
        items_ptr: np.ndarray,
        items: np.ndarray,
        *,
        raw: bool = False,
    ) -> np.ndarray:
        """:meth:`scores_at` of many events in one compiled pass (a trainer's batch of rows).

        CSR as :meth:`learn_batch`: event e's user has ``recent_rows[recent_ptr[e]:
        recent_ptr[e+1]]`` and wants ``items[items_ptr[e]:items_ptr[e+1]]``; the result
        has one column per entry of ``items``.  Nothing is learned in between.
        """
        ptr = np.ascontiguousarray(recent_ptr, np.int64)
        item_ptr = np.ascontiguousarray(items_ptr, np.int64)
        if len(ptr) != len(item_ptr) or ptr[-1] != len(recent_rows) or item_ptr[-1] != len(items):
            raise ValueError("recent_ptr and items_ptr must be CSR offsets of the same events")
        p = self.params
        return _scores_events(
            ptr, np.ascontiguousarray(recent_rows, np.int64),
            item_ptr, np.ascontiguousarray(items, np.int64),
            self.n_items, p.window, p.half_life, p.markov_order, p.markov_decay,
            self.knn_nbr, self.knn_sure, self.knn_fill,
            self.mk_nbr, self.mk_sure, self.mk_fill,
            self.inv_sqrt_count, self.mk_total, self._out, self._touched, raw,
        )  # fmt: skip

    def raw_scores_and_totals(
        self, recent: np.ndarray, items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One accumulation: the undivided scores of ``items`` ``(len(names), len(items))``,
        and each signal's maximum and total over every row it scores."""
        rows = np.asarray(recent, np.int64)
        p = self.params
        return _raw_scores_and_totals(
            rows[(rows >= 0) & (rows < self.n_items)], np.ascontiguousarray(items, np.int64),
            p.window, p.half_life, p.markov_order, p.markov_decay,
            self.knn_nbr, self.knn_sure, self.knn_fill,
            self.mk_nbr, self.mk_sure, self.mk_fill,
            self.inv_sqrt_count, self.mk_total, self._out, self._touched,
        )  # fmt: skip

    def neighbour_rows(self, recent: np.ndarray) -> np.ndarray:
        """Every row the signals can score above 0 after ``recent``: the kNN lists of its
        last ``window`` known rows and the Markov lists of its last ``markov_order``
        (repeats possible)."""
        rows = np.asarray(recent, np.int64)
        rows = rows[(rows >= 0) & (rows < self.n_items)]
        p = self.params
        parts = [self.knn_nbr[r, : self.knn_fill[r]] for r in rows[-p.window :].tolist()]
        parts += [self.mk_nbr[r, : self.mk_fill[r]] for r in rows[-p.markov_order :].tolist()]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def similar(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` kNN neighbours of ``item`` by cosine, best first (ties: lower row)."""
        if not 0 <= item < self.n_items or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0)
        used = int(self.knn_fill[item])
        rows = self.knn_nbr[item, :used].astype(np.int64)
        norms = np.sqrt(np.maximum(self.item_count[rows], 1.0) * max(self.item_count[item], 1.0))
        cosine = self.knn_sure[item, :used] / norms
        best = np.lexsort((rows, -cosine))[:k]
        return rows[best], cosine[best]

    def successors(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` items most often next after ``item`` (the Markov list), best first,
        each with its share of the transitions from ``item`` (ties: lower row)."""
        if not 0 <= item < self.n_items or k <= 0 or self.mk_total[item] <= 0.0:
            return np.zeros(0, np.int64), np.zeros(0)
        used = int(self.mk_fill[item])
        rows = self.mk_nbr[item, :used].astype(np.int64)
        share = self.mk_sure[item, :used] / self.mk_total[item]
        best = np.lexsort((rows, -share))[:k]
        return rows[best], share[best]

    # ------------------------------------------------------------------ state

    def to_state(self) -> dict[str, Any]:
        """msgpack-encodable snapshot (``runtime.codec.encode``) of the first ``n_items`` rows."""
        n = self.n_items
        state: dict[str, Any] = {"version": STATE_VERSION, "params": asdict(self.params)}
        state["n_items"] = n
        for name in _ROW_ARRAYS:
            state[name] = np.ascontiguousarray(getattr(self, name)[:n])
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace everything learned with ``state`` (from :meth:`to_state`), params included."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"itemstats state version {state.get('version')!r} is not {STATE_VERSION}"
            )
        fresh = ItemStats(ItemStatsParams(**state["params"]), capacity=int(state["n_items"]))
        n = fresh.n_items = int(state["n_items"])
        for name in _ROW_ARRAYS:
            array, target = np.asarray(state[name]), getattr(fresh, name)[:n]
            if array.shape != target.shape:
                raise ValueError(
                    f"itemstats state {name} has shape {array.shape}, not {target.shape}"
                )
            target[...] = array
        fresh.inv_sqrt_count[:n] = 1.0 / np.sqrt(np.maximum(fresh.item_count[:n], 1.0))
        vars(self).update(vars(fresh))

    def statistics(self) -> dict[str, Any]:
        """Sizes for dashboards and capacity planning: entries kept and bytes allocated.

        ``bytes_per_item`` is what every catalog row costs (the arrays grow by rows);
        ``scratch_bytes`` are the scoring buffers.
        """
        row_bytes = sum(getattr(self, name).nbytes for name in (*_ROW_ARRAYS, "inv_sqrt_count"))
        return {
            "items": self.n_items,
            "capacity": self.capacity,
            "knn_entries": int(self.knn_fill[: self.n_items].sum()),
            "markov_entries": int(self.mk_fill[: self.n_items].sum()),
            "bytes": int(row_bytes + self._out.nbytes + self._touched.nbytes),
            "bytes_per_item": row_bytes / self.capacity,
            "scratch_bytes": int(self._out.nbytes + self._touched.nbytes),
        }


_ROW_ARRAYS = (
    "knn_nbr", "knn_cnt", "knn_sure", "knn_fill", "knn_weakest", "knn_gate",
    "mk_nbr", "mk_cnt", "mk_sure", "mk_fill", "mk_weakest", "mk_gate",
    "item_count", "mk_total",
)  # fmt: skip
"""The per-row arrays a state holds; ``inv_sqrt_count`` is derived from ``item_count``."""
