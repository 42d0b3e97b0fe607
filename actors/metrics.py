"""Progressive (test-then-train) evaluation metrics for the online learner.

Every event is first *scored* by the current model and only then *learned*, so each
prediction is made on data the model has not seen yet.  Averaging the per-event losses
gives an honest estimate of generalisation error without a held-out set (progressive
validation: Blum, Kalai & Langford, "Beyond Hogwarts: estimating generalisation from
progressive validation", COLT 1999).

Everything here is pure, synchronous numpy: classes are fed batch by batch, and feeding
the same events in one batch or in many gives the same result (up to float rounding).
Each class has ``to_state()`` / ``from_state(state)`` returning / accepting a dict of
plain ints, floats, lists and ``bytes`` (numpy arrays are stored as little-endian raw
bytes), so ``msgpack.packb(state, use_bin_type=True)`` works on it directly and a daemon
snapshot can restore the metric exactly.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = [
    "ROCAUC",
    "Logloss",
    "PopularityBaseline",
    "RankingMetrics",
    "RunningMeanCTR",
    "TimeDecayedPopularity",
    "rank_of",
]

EPS = 1e-15
"""Probabilities are clipped to ``[EPS, 1 - EPS]`` before taking logs."""

_F8 = np.dtype("<f8")
_I8 = np.dtype("<i8")
_U1 = np.dtype("u1")

State = dict[str, Any]


# ----------------------------------------------------------------------------- helpers


def _pack(a: np.ndarray, dtype: np.dtype[Any]) -> bytes:
    """Raw little-endian bytes of ``a`` (msgpack stores them as a bin blob)."""
    return np.ascontiguousarray(a, dtype=dtype).tobytes()


def _unpack(x: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """Inverse of :func:`_pack`; also accepts a list or an ndarray (state never packed)."""
    if isinstance(x, bytes | bytearray | memoryview):
        return np.frombuffer(x, dtype=dtype).copy()
    return np.array(x, dtype=dtype)


def _as_1d_float(a: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(a, dtype=np.float64).reshape(-1)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def _weights(w: npt.ArrayLike | None, n: int) -> npt.NDArray[np.float64] | None:
    """Validated weights as float64, or None meaning "all ones"."""
    if w is None:
        return None
    wa = np.asarray(w, dtype=np.float64).reshape(-1)
    if wa.shape[0] != n:
        raise ValueError(f"w has {wa.shape[0]} entries, expected {n}")
    if not np.all(np.isfinite(wa)) or (wa < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return wa


def _labels(y: npt.ArrayLike, n: int, *, binary: bool) -> npt.NDArray[np.float64]:
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if ya.shape[0] != n:
        raise ValueError(f"y has {ya.shape[0]} entries, expected {n}")
    if binary:
        if not np.all((ya == 0.0) | (ya == 1.0)):
            raise ValueError("labels must be 0 or 1")
    elif not np.all((ya >= 0.0) & (ya <= 1.0)):  # also rejects NaN
        raise ValueError("labels must lie in [0, 1]")
    return ya


def _grow(buf: np.ndarray, needed: int) -> np.ndarray:
    """Return ``buf`` or a copy with capacity >= ``needed`` (amortised doubling)."""
    if needed <= buf.shape[0]:
        return buf
    new = np.zeros(max(needed, 2 * buf.shape[0], 16), dtype=buf.dtype)
    new[: buf.shape[0]] = buf
    return new


def _pointwise_logloss(p: np.ndarray, y: np.ndarray) -> npt.NDArray[np.float64]:
    pc = np.clip(p, EPS, 1.0 - EPS)
    out: npt.NDArray[np.float64] = -(y * np.log(pc) + (1.0 - y) * np.log1p(-pc))
    return out


# ----------------------------------------------------------------------------- logloss


class Logloss:
    """Weighted mean binary cross-entropy, accumulated progressively.

    The primary CTR metric: fed with the predictions made *before* each event is learned,
    it is the progressive-validation estimate of the model's test logloss
    (Blum, Kalai & Langford 1999). Labels may be soft (in [0, 1]).
    """

    count: int
    weight: float
    _loss_sum: float

    def __init__(self) -> None:
        self.reset()

    def update(self, p: npt.ArrayLike, y: npt.ArrayLike, w: npt.ArrayLike | None = None) -> None:
        """Add a batch of predicted probabilities ``p`` for labels ``y`` (optional weights)."""
        pa = _as_1d_float(p, "p")
        ya = _labels(y, pa.shape[0], binary=False)
        wa = _weights(w, pa.shape[0])
        loss = _pointwise_logloss(pa, ya)
        if wa is None:
            self._loss_sum += float(loss.sum())
            self.weight += float(pa.shape[0])
        else:
            self._loss_sum += float(loss @ wa)
            self.weight += float(wa.sum())
        self.count += int(pa.shape[0])

    def add(self, loss_sum: float, weight: float, count: int) -> None:
        """Add sums already taken over ``count`` checked events
        (:meth:`ProgressiveMetrics.update_labelled`)."""
        self._loss_sum += loss_sum
        self.weight += weight
        self.count += count

    def result(self) -> float:
        """Weighted mean logloss so far; nan when nothing (or zero weight) was seen."""
        return self._loss_sum / self.weight if self.weight > 0 else math.nan

    def reset(self) -> None:
        """Forget everything."""
        self.count = 0
        self.weight = 0.0
        self._loss_sum = 0.0

    def to_state(self) -> State:
        """Msgpack-friendly snapshot."""
        return {"count": self.count, "weight": self.weight, "loss_sum": self._loss_sum}

    @classmethod
    def from_state(cls, state: State) -> Logloss:
        """Rebuild from :meth:`to_state` output."""
        m = cls()
        m.count = int(state["count"])
        m.weight = float(state["weight"])
        m._loss_sum = float(state["loss_sum"])
        return m


# ----------------------------------------------------------------------------- ROC AUC


@njit(cache=True, nogil=True, inline="always")
def _first_beyond(a: np.ndarray, v: float, start: int, past_equal: bool) -> int:
    """Smallest i >= start with a[i] > v (``past_equal``) or a[i] >= v, a[:start] known not
    to qualify: gallop from ``start``, then bisect, so a query next to the previous one
    touches a few nearby entries only (finger search, O(log distance))."""
    n = a.shape[0]
    lo = hi = start
    step = 1
    while hi < n and (a[hi] <= v if past_equal else a[hi] < v):
        lo = hi + 1
        hi = lo + step
        step *= 2
    hi = min(hi, n)
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] <= v if past_equal else a[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _twice_rank_sum(sorted_values: np.ndarray, sorted_x: np.ndarray) -> int:
    """Sum over ``x`` of ``#(values < x) + #(values <= x)``: twice the wins of each ``x``
    over ``values``, a tie counting half, as an exact integer. Both inputs sorted."""
    total = 0
    below = 0
    below_or_equal = 0
    for k in range(sorted_x.shape[0]):
        v = sorted_x[k]
        if k == 0 or v != sorted_x[k - 1]:  # a run of equal x shares its counts
            below = _first_beyond(sorted_values, v, below, False)
            below_or_equal = _first_beyond(sorted_values, v, below, True)
        total += below + below_or_equal
    return total


@njit(cache=True, nogil=True)
def _refresh_sorted(
    values: np.ndarray, seqs: np.ndarray, oldest: int, new_values: np.ndarray, new_seqs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``values`` (with their sequence numbers) minus those older than ``oldest``,
    merged with the sorted ``new_values``: one linear pass, no sorting."""
    kept = 0
    for i in range(seqs.shape[0]):
        kept += seqs[i] >= oldest
    size = kept + new_values.shape[0]
    out_values = np.empty(size, dtype=np.float64)
    out_seqs = np.empty(size, dtype=np.int64)
    i = j = 0
    for k in range(size):
        while i < values.shape[0] and seqs[i] < oldest:
            i += 1
        if j == new_values.shape[0] or (i < values.shape[0] and values[i] <= new_values[j]):
            out_values[k] = values[i]
            out_seqs[k] = seqs[i]
            i += 1
        else:
            out_values[k] = new_values[j]
            out_seqs[k] = new_seqs[j]
            j += 1
    return out_values, out_seqs


@njit(cache=True, nogil=True)
def _best_f1(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """The highest F1 of "positive when score >= t" over every threshold t among the
    scores, and the highest t reaching it, from the sorted scores of each label: one walk
    down both from the top (a run of equal scores moves together)."""
    i, j = pos.shape[0] - 1, neg.shape[0] - 1
    tp = fp = 0
    best, at = 0.0, math.inf
    while i >= 0 or j >= 0:
        v = max(pos[i] if i >= 0 else -math.inf, neg[j] if j >= 0 else -math.inf)
        while i >= 0 and pos[i] == v:
            tp += 1
            i -= 1
        while j >= 0 and neg[j] == v:
            fp += 1
            j -= 1
        f1 = 2.0 * tp / (tp + fp + pos.shape[0])
        if f1 > best:
            best, at = f1, v
    return best, at


def _twice_u(pos: np.ndarray, neg: np.ndarray) -> int:
    """Twice the Mann–Whitney U of sorted positive and negative scores (ties half), by
    walking the shorter array through the longer one."""
    if pos.size <= neg.size:
        return int(_twice_rank_sum(neg, pos))
    # twice U plus twice the wins of the negatives (ties half) is 2 * n_pos * n_neg
    return 2 * pos.size * neg.size - int(_twice_rank_sum(pos, neg))


class _SortedScores:
    """The scores of one label, sorted, each with the sequence number of its pair."""

    def __init__(self) -> None:
        self.values: npt.NDArray[np.float64] = np.zeros(0)
        self.seqs: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)

    def refresh(self, oldest: int, new_values: np.ndarray, new_seqs: np.ndarray) -> None:
        """Drop the pairs numbered below ``oldest``; merge in the sorted new ones."""
        self.values, self.seqs = _refresh_sorted(
            self.values, self.seqs, oldest, new_values, new_seqs
        )


class ROCAUC:
    """Exact ROC AUC over the (score, label) pairs seen so far; ties count half.

    Ranking quality of the CTR predictions, insensitive to calibration, so it complements
    :class:`Logloss`. With ``window`` set, only the most recent ``window`` pairs are scored
    (a sliding-window AUC) and memory stays bounded; ``None`` scores every pair ever seen.

    The AUC is the Mann–Whitney statistic U / (n_pos * n_neg), U counting the (positive,
    negative) pairs in the right order, a tie counting half; twice U is counted exactly in
    integers, so there is no approximation: the result is the float a full sort gives.

    Cheap to read, with no sort of the window: the pairs are kept in time order
    (float64 / uint8 buffers, 9 bytes a pair, at most ``2 * window`` pairs) and, per
    label, sorted by score with their sequence numbers (16 more bytes a pair). A *fold*
    sorts only the pairs that arrived since the previous fold and merges them in with one
    linear pass that also drops, by sequence number, the pairs that left the window; twice
    U of the folded pairs is then counted (on the next read) by a galloping walk of one
    label's sorted scores through the other's. ``update`` only appends, and folds once
    ``max(MIN_FOLD, n / FOLD_FRACTION)`` pairs are pending (n: the pairs held sorted).
    ``result()`` with at most ``MAX_PATCH`` pairs pending patches the last fold's U by
    rank queries for the pairs that arrived and left since, O(pending * log n), else it
    folds first, O(n) plus the sort of the pending pairs; the value is cached until the
    next ``update``. Only the first read after :meth:`from_state` sorts the whole window.
    With a full 1M window (CPU time on a busy 2-core machine): a read after one batch of
    1,280 pairs ~0.5 ms, after a fold ~3 ms, a read that folds ~7 ms, against ~200 ms
    for the full sort; ``update`` costs ~150 ns a pair instead of ~30 ns.
    """

    MIN_FOLD = 65536
    """Pending pairs that trigger a fold in ``update`` (for small windows)."""
    FOLD_FRACTION = 8
    """A fold in ``update`` once ``n / FOLD_FRACTION`` pairs are pending (large windows)."""
    MAX_PATCH = 16384
    """Pending pairs up to which ``result()`` patches the last fold's U by rank queries,
    O(pending * log n), instead of folding, O(n)."""

    count: int
    n_pos: int
    _scores: npt.NDArray[np.float64]
    _labels: npt.NDArray[np.uint8]
    _cache: float | None
    _best: tuple[float, float] | None
    _dropped: int
    _folded_from: int
    _folded_to: int
    _twice_u: int | None
    _pos: _SortedScores
    _neg: _SortedScores

    def __init__(self, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.window = window
        self.reset()

    def _first(self) -> int:
        """Buffer position of the oldest pair inside the window."""
        return 0 if self.window is None else max(0, self.count - self.window)

    def _trim(self) -> None:
        """Keep the newest ``window`` pairs once twice as many are buffered (amortised O(1))."""
        if self.window is None or self.count <= 2 * self.window:
            return
        drop = self.count - self.window
        self.n_pos -= int(np.count_nonzero(self._labels[:drop]))
        self._scores[: self.window] = self._scores[drop : self.count]
        self._labels[: self.window] = self._labels[drop : self.count]
        self.count = self.window
        self._dropped += drop

    def _pending(self) -> int:
        """Pairs appended since the last fold."""
        return self._dropped + self.count - self._folded_to

    def _by_label(self, lo: int, hi: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Sorted scores with their sequence numbers, of the positives then the negatives,
        among buffer positions [lo, hi)."""
        scores = self._scores[lo:hi]
        positive = self._labels[lo:hi].astype(bool)
        out = []
        for of_label in (positive, ~positive):
            rows = np.flatnonzero(of_label)
            rows = rows[np.argsort(scores[rows])]
            out.append((scores[rows], rows + (self._dropped + lo)))
        return out

    def _fold(self) -> None:
        """Bring the sorted scores up to the current window."""
        first = self._first()
        # pairs that arrived and left since the last fold never enter
        new_pos, new_neg = self._by_label(max(self._folded_to - self._dropped, first), self.count)
        oldest = self._dropped + first
        self._pos.refresh(oldest, *new_pos)
        self._neg.refresh(oldest, *new_neg)
        self._folded_from, self._folded_to = oldest, self._dropped + self.count
        self._twice_u = None  # counted by the next read

    def _patchable(self) -> bool:
        """Few pairs pending, and those that left the window since the fold still buffered."""
        return self._pending() <= self.MAX_PATCH and self._folded_from >= self._dropped

    def _patched_auc(self) -> float:
        """The window's AUC from the last fold's: U(W - E + B) = U(W) - U(E x (W - E)) - U(E)
        + U(B x (W - E)) + U(B), for the pairs E that left and B that arrived since, by rank
        queries against the sorted scores (a rank in W - E is one in W minus one in E)."""
        fold_pos, fold_neg = self._pos.values, self._neg.values
        if self._twice_u is None:
            self._twice_u = _twice_u(fold_pos, fold_neg)
        first, dropped = self._first(), self._dropped
        left = self._by_label(self._folded_from - dropped, min(self._folded_to - dropped, first))
        new = self._by_label(max(self._folded_to - dropped, first), self.count)
        (left_pos, _), (left_neg, _) = left
        (new_pos, _), (new_neg, _) = new
        staying_pos = fold_pos.size - left_pos.size

        def twice_wins_against_staying(pos: np.ndarray, neg: np.ndarray) -> int:
            return int(
                _twice_rank_sum(fold_neg, pos)
                - _twice_rank_sum(left_neg, pos)
                + 2 * neg.size * staying_pos
                - _twice_rank_sum(fold_pos, neg)
                + _twice_rank_sum(left_pos, neg)
            )

        twice_u = (
            self._twice_u
            - twice_wins_against_staying(left_pos, left_neg)
            - int(_twice_rank_sum(left_neg, left_pos))
            + twice_wins_against_staying(new_pos, new_neg)
            + int(_twice_rank_sum(new_neg, new_pos))
        )
        n_pos = staying_pos + new_pos.size
        n_neg = fold_neg.size - left_neg.size + new_neg.size
        return twice_u / (2 * n_pos * n_neg) if n_pos and n_neg else math.nan

    def best_f1(self) -> tuple[float, float]:
        """The F1 of "positive when score >= t" at the threshold t that maximises it over
        the window, and that t (the highest one reaching it); nan without a positive.
        O(n) after a fold; cached until the next ``update``."""
        if self._best is None:
            if self._pending():
                self._fold()
            if self._pos.values.size == 0:
                self._best = (math.nan, math.nan)
            else:
                best, at = _best_f1(self._pos.values, self._neg.values)
                self._best = (float(best), float(at))
        return self._best

    def update(self, scores: npt.ArrayLike, y: npt.ArrayLike) -> None:
        """Append a batch of scores (any monotone scale: probabilities or logits) and 0/1 labels."""
        s = _as_1d_float(scores, "scores")
        self.append(s, _labels(y, s.shape[0], binary=True))

    def append(self, s: np.ndarray, ya: np.ndarray) -> None:
        """:meth:`update` with scores and 0/1 labels already checked (float64, 1-d)."""
        n = s.shape[0]
        if n == 0:
            return
        end = self.count + n
        self._scores = _grow(self._scores, end)
        self._labels = _grow(self._labels, end)
        self._scores[self.count : end] = s
        self._labels[self.count : end] = ya
        self.count = end
        self.n_pos += int(np.count_nonzero(ya))
        self._trim()
        n_sorted = self._pos.values.size + self._neg.values.size
        if self._pending() >= max(self.MIN_FOLD, n_sorted // self.FOLD_FRACTION):
            self._fold()
        self._cache = None
        self._best = None

    @property
    def n_neg(self) -> int:
        """Number of negative labels buffered."""
        return self.count - self.n_pos

    def result(self) -> float:
        """AUC = P(score(pos) > score(neg)) + P(tie)/2; nan unless both classes are in the window."""
        if self._cache is None:
            if not self._patchable():
                self._fold()
            self._cache = self._patched_auc()
        return self._cache

    def reset(self) -> None:
        """Forget everything (and release the buffers)."""
        self._scores = np.zeros(0, dtype=np.float64)
        self._labels = np.zeros(0, dtype=np.uint8)
        self.count = 0
        self.n_pos = 0
        self._cache = None
        self._best = None
        self._dropped = 0  # sequence number of buffer position 0
        # the sorted scores hold exactly the pairs numbered [_folded_from, _folded_to),
        # whose twice U is _twice_u (None: not counted yet)
        self._folded_from = self._folded_to = 0
        self._twice_u = None
        self._pos = _SortedScores()
        self._neg = _SortedScores()

    def to_state(self) -> State:
        """Msgpack-friendly snapshot of the window: scores as '<f8' bytes, labels as 'u1'."""
        first = self._first()
        return {
            "scores": _pack(self._scores[first : self.count], _F8),
            "labels": _pack(self._labels[first : self.count], _U1),
            "window": self.window,
        }

    @classmethod
    def from_state(cls, state: State) -> ROCAUC:
        """Rebuild from :meth:`to_state` output (of any version: the format is unchanged).

        The window is sorted on the first :meth:`result`, not here.
        """
        missing = {"scores", "labels"} - state.keys()
        if missing:
            raise ValueError(f"ROCAUC state lacks {sorted(missing)}")
        window = state.get("window")
        m = cls(None if window is None else int(window))
        s = _unpack(state["scores"], _F8)
        lab = _unpack(state["labels"], _U1)
        if s.shape != lab.shape:
            raise ValueError("ROCAUC state: scores and labels differ in length")
        if np.isnan(s).any() or (lab > 1).any():
            raise ValueError("ROCAUC state: NaN scores or labels other than 0/1")
        m._scores, m._labels = s, lab
        m.count = int(s.shape[0])
        m.n_pos = int(np.count_nonzero(lab))
        return m


# ----------------------------------------------------------------------------- baseline CTR


class RunningMeanCTR:
    """The "predict the mean label seen so far" baseline, evaluated progressively.

    Each event is scored with the weighted mean label of all *previous* events (0.5
    before any event carries weight), then learned; its progressive logloss is the floor
    any real CTR model must beat. Within a batch the sequential protocol is vectorised
    with cumulative sums, so the predictions are identical to an event-by-event loop.
    Note: there is no smoothing, so after a first run of identical labels the mean is
    exactly 0 or 1 and the first opposite label costs -log(1e-15) ~ 34.5 nats once.
    """

    PRIOR = 0.5

    sum_w: float
    sum_wy: float
    logloss: Logloss

    def __init__(self) -> None:
        self.reset()

    @property
    def count(self) -> int:
        """Number of events seen."""
        return self.logloss.count

    @property
    def mean(self) -> float:
        """The current prediction (weighted mean label, or the 0.5 prior)."""
        return self.sum_wy / self.sum_w if self.sum_w > 0 else self.PRIOR

    def predictions(self, y: npt.ArrayLike, w: npt.ArrayLike | None = None) -> np.ndarray:
        """The progressive predictions for a batch, without learning it."""
        ya = _labels(y, np.asarray(y).size, binary=False)
        wa = _weights(w, ya.shape[0])
        return self._predict(ya, wa)[0]

    def _predict(
        self, ya: np.ndarray, wa: np.ndarray | None
    ) -> tuple[npt.NDArray[np.float64], float, float]:
        w1 = np.ones_like(ya) if wa is None else wa
        # cumsum seeded with the running totals: element i is exactly the left-to-right
        # sum of everything before event i, as a sequential loop would compute it.
        cw = np.cumsum(np.concatenate(([self.sum_w], w1)))
        cwy = np.cumsum(np.concatenate(([self.sum_wy], w1 * ya)))
        prev_w, prev_wy = cw[:-1], cwy[:-1]
        has = prev_w > 0
        p = np.full(ya.shape[0], self.PRIOR)
        np.divide(prev_wy, prev_w, out=p, where=has)
        return p, float(cw[-1]), float(cwy[-1])

    def add(self, loss_sum: float, weight: float, count: int, sums: tuple[float, float]) -> None:
        """Add a pass already taken over ``count`` checked events
        (:meth:`ProgressiveMetrics.update_labelled`): its logloss sums and the running
        totals ``(sum_w, sum_wy)`` after it."""
        self.logloss.add(loss_sum, weight, count)
        self.sum_w, self.sum_wy = sums

    def update(self, y: npt.ArrayLike, w: npt.ArrayLike | None = None) -> None:
        """Score each event of the batch with the mean of its predecessors, then learn it."""
        ya = _labels(y, np.asarray(y).size, binary=False)
        wa = _weights(w, ya.shape[0])
        if ya.shape[0] == 0:
            return
        p, self.sum_w, self.sum_wy = self._predict(ya, wa)
        self.logloss.update(p, ya, wa)

    def result(self) -> float:
        """Progressive logloss of the baseline; nan when empty."""
        return self.logloss.result()

    def reset(self) -> None:
        """Forget everything."""
        self.sum_w = 0.0
        self.sum_wy = 0.0
        self.logloss = Logloss()

    def to_state(self) -> State:
        """Msgpack-friendly snapshot."""
        return {"sum_w": self.sum_w, "sum_wy": self.sum_wy, "logloss": self.logloss.to_state()}

    @classmethod
    def from_state(cls, state: State) -> RunningMeanCTR:
        """Rebuild from :meth:`to_state` output."""
        m = cls()
        m.sum_w = float(state["sum_w"])
        m.sum_wy = float(state["sum_wy"])
        m.logloss = Logloss.from_state(state["logloss"])
        return m


# ----------------------------------------------------------------------------- ranking


class RankingMetrics:
    """Hit rate@k and NDCG@k of a single held-out item per event (leave-one-out style).

    With one relevant item the ideal DCG is 1, so NDCG@k is 1/log2(rank + 2) when the
    0-based rank is below k and 0 otherwise (Järvelin & Kekäläinen 2002, "Cumulated
    gain-based evaluation of IR techniques"). An item absent from the candidates counts
    as a miss.
    """

    count: int
    hits: int
    _dcg_sum: float
    _dcg_sq_sum: float  # for the NDCG's confidence interval (runtime/experiments.py)

    def __init__(self, k: int = 10) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = int(k)
        self.reset()

    def update(self, rank: int | None) -> None:
        """Record one event: 0-based rank of the held-out item, or None if not a candidate."""
        self.count += 1
        if rank is None:
            return
        if rank < 0:
            raise ValueError("rank must be >= 0 (use None for a missing item)")
        if rank < self.k:
            self.hits += 1
            gain = 1.0 / math.log2(rank + 2)
            self._dcg_sum += gain
            self._dcg_sq_sum += gain * gain

    def update_many(self, ranks: npt.ArrayLike) -> None:
        """Record a batch of ranks; -1 marks an item that was not among the candidates."""
        r = np.asarray(ranks).reshape(-1)
        if r.size and not np.issubdtype(r.dtype, np.integer):
            raise TypeError("ranks must be integers")
        r = r.astype(np.int64, copy=False)
        if (r < -1).any():
            raise ValueError("ranks must be >= -1")
        hit = r[(r >= 0) & (r < self.k)]
        self.count += int(r.shape[0])
        self.hits += int(hit.shape[0])
        gains = 1.0 / np.log2(hit + 2.0)
        self._dcg_sum += float(gains.sum())
        self._dcg_sq_sum += float((gains * gains).sum())

    def hit_rate(self) -> float:
        """Share of events whose item ranked in the top k; nan when empty."""
        return self.hits / self.count if self.count else math.nan

    def ndcg(self) -> float:
        """Mean NDCG@k; nan when empty."""
        return self._dcg_sum / self.count if self.count else math.nan

    def ndcg_moments(self) -> tuple[float, float, int]:
        """The sum and the sum of squares of the per-event NDCG, and the count."""
        return self._dcg_sum, self._dcg_sq_sum, self.count

    def reset(self) -> None:
        """Forget everything (keeps k)."""
        self.count = 0
        self.hits = 0
        self._dcg_sum = 0.0
        self._dcg_sq_sum = 0.0

    def to_state(self) -> State:
        """Msgpack-friendly snapshot."""
        return {"k": self.k, "count": self.count, "hits": self.hits, "dcg_sum": self._dcg_sum,
                "dcg_sq_sum": self._dcg_sq_sum}  # fmt: skip

    @classmethod
    def from_state(cls, state: State) -> RankingMetrics:
        """Rebuild from :meth:`to_state` output."""
        m = cls(int(state["k"]))
        m.count = int(state["count"])
        m.hits = int(state["hits"])
        m._dcg_sum = float(state["dcg_sum"])
        # older snapshots lack it: each gain is at most 1, so the sum bounds the squares
        # (a wider interval, never a narrower one)
        m._dcg_sq_sum = float(state.get("dcg_sq_sum", m._dcg_sum))
        return m


def rank_of(scores: npt.ArrayLike, target_index: int, exclude: npt.ArrayLike | None = None) -> int:
    """0-based rank of ``scores[target_index]`` among the entries not in ``exclude``.

    Deterministic and pessimistic, so ties never flatter a model (e.g. a constant scorer
    does not get a free hit): rank = #(others scoring strictly higher) + #(others scoring
    equal with a lower index). Excluded entries (typically items the user already saw)
    do not compete; the target itself is never excluded. A NaN target ranks last, NaN
    others rank below any non-NaN target. O(n + m log m) for m exclusions, no full sort.
    """
    s = np.asarray(scores).reshape(-1)
    n = s.shape[0]
    t = int(target_index)
    if not 0 <= t < n:
        raise IndexError(f"target_index {target_index} out of range for {n} scores")
    ex = np.zeros(0, dtype=np.int64)
    if exclude is not None:
        ex = np.asarray(exclude).reshape(-1).astype(np.int64, copy=False)
        if ex.size and (ex.min() < 0 or ex.max() >= n):
            raise IndexError("exclude contains an index out of range")
        ex = np.unique(ex)
        ex = ex[ex != t]
    target = s[t]
    if s.dtype.kind in "fc" and np.isnan(target):
        return n - 1 - int(ex.shape[0])
    rank = int(np.count_nonzero(s > target)) + int(np.count_nonzero(s[:t] == target))
    if ex.shape[0]:
        se = s[ex]
        rank -= int(np.count_nonzero(se > target))
        rank -= int(np.count_nonzero((se == target) & (ex < t)))
    return rank


@njit(cache=True, nogil=True)
def _ranks_of(scores: np.ndarray, target: int, excluded: np.ndarray) -> np.ndarray:
    n = scores.shape[1]
    out = np.zeros(scores.shape[0], np.int64)
    for s in range(scores.shape[0]):
        value = scores[s, target]
        if np.isnan(value):
            out[s] = n - 1 - excluded.sum() + excluded[target]
            continue
        rank = 0
        for j in range(n):
            if not excluded[j] and j != target:
                rank += scores[s, j] > value or (scores[s, j] == value and j < target)
        out[s] = rank
    return out


def ranks_of(scores: np.ndarray, target_index: int, exclude: npt.ArrayLike) -> np.ndarray:
    """:func:`rank_of` of ``target_index`` in every row of ``scores`` (rows, items) at once,
    in one compiled pass."""
    values = np.ascontiguousarray(scores, np.float64)
    if not 0 <= target_index < values.shape[1]:
        raise IndexError(f"target_index {target_index} out of range for {values.shape[1]} scores")
    excluded = np.zeros(values.shape[1], np.bool_)
    rows = np.asarray(exclude, np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= values.shape[1]):
        raise IndexError("exclude contains an index out of range")
    excluded[rows] = True
    return _ranks_of(values, int(target_index), excluded)


class _PopularityBase:
    """Shared ranking/top-k/metrics logic of the popularity baselines."""

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self.metrics = RankingMetrics(self.k)
        self.n_events = 0

    def _scores(self, n_items: int) -> np.ndarray:
        raise NotImplementedError

    def _evaluate(self, user_seen: npt.ArrayLike, target: int, n_items: int) -> int | None:
        if target < 0:
            raise ValueError("target must be >= 0")
        if target >= n_items:
            return None
        seen = np.asarray(user_seen, dtype=np.int64).reshape(-1)
        seen = seen[(seen >= 0) & (seen < n_items)]
        return rank_of(self._scores(n_items), target, seen)

    def _recommend(self, user_seen: npt.ArrayLike, n_items: int) -> npt.NDArray[np.int64]:
        if n_items <= 0:
            return np.zeros(0, dtype=np.int64)
        s = self._scores(n_items)
        seen = np.asarray(user_seen, dtype=np.int64).reshape(-1)
        seen = seen[(seen >= 0) & (seen < n_items)]
        mask = np.ones(n_items, dtype=bool)
        mask[seen] = False
        idx = np.flatnonzero(mask)
        cs = s[idx]
        if idx.shape[0] > self.k:
            kth = np.partition(cs, idx.shape[0] - self.k)[idx.shape[0] - self.k]
            above = idx[cs > kth]
            tied = idx[cs == kth][: self.k - above.shape[0]]
            idx = np.concatenate((above, tied))
        order = np.lexsort((idx, -s[idx]))
        out: npt.NDArray[np.int64] = idx[order].astype(np.int64)
        return out


class PopularityBaseline(_PopularityBase):
    """Global-popularity recommender under the progressive protocol.

    Ranks catalog rows 0..n_items-1 by how often they were interacted with so far (ties:
    lower row first), excluding what the user already saw. It is the non-personalised
    floor that the learned ranker has to beat on HR@k / NDCG@k. Protocol per event:
    ``evaluate`` (or ``step``) *before* ``learn``.
    """

    def __init__(self, k: int = 10) -> None:
        super().__init__(k)
        self._counts = np.zeros(0, dtype=np.int64)
        self._n_rows = 0  # 1 + highest row learned

    def learn(self, item: int) -> None:
        """Count one interaction with catalog row ``item`` (the catalog may grow)."""
        if item < 0:
            raise ValueError("item must be >= 0")
        self._counts = _grow(self._counts, item + 1)
        self._counts[item] += 1
        self._n_rows = max(self._n_rows, item + 1)
        self.n_events += 1

    def count_of(self, item: int) -> int:
        """Interactions with ``item`` so far."""
        return int(self._counts[item]) if 0 <= item < self._n_rows else 0

    def _scores(self, n_items: int) -> np.ndarray:
        if n_items <= self._counts.shape[0]:
            return self._counts[:n_items]
        out = np.zeros(n_items, dtype=np.int64)
        out[: self._counts.shape[0]] = self._counts
        return out

    def evaluate(self, user_seen: npt.ArrayLike, target: int, n_items: int) -> int | None:
        """Rank of ``target`` among rows 0..n_items-1 minus ``user_seen``; None if not a row."""
        return self._evaluate(user_seen, target, n_items)

    def recommend(self, user_seen: npt.ArrayLike, n_items: int) -> npt.NDArray[np.int64]:
        """Top-k rows in rank order (the ones ``evaluate`` gives ranks 0..k-1)."""
        return self._recommend(user_seen, n_items)

    def step(self, user_seen: npt.ArrayLike, target: int, n_items: int) -> int | None:
        """Test-then-train on one event: evaluate, record in ``self.metrics``, learn."""
        rank = self.evaluate(user_seen, target, n_items)
        self.metrics.update(rank)
        self.learn(target)
        return rank

    def reset(self) -> None:
        """Forget counts and metrics (keeps k)."""
        self.metrics.reset()
        self.n_events = 0
        self._counts = np.zeros(0, dtype=np.int64)
        self._n_rows = 0

    def to_state(self) -> State:
        """Msgpack-friendly snapshot: counts as '<i8' bytes."""
        return {
            "k": self.k,
            "n_events": self.n_events,
            "counts": _pack(self._counts[: self._n_rows], _I8),
            "metrics": self.metrics.to_state(),
        }

    @classmethod
    def from_state(cls, state: State) -> PopularityBaseline:
        """Rebuild from :meth:`to_state` output."""
        m = cls(int(state["k"]))
        m.n_events = int(state["n_events"])
        m._counts = _unpack(state["counts"], _I8)
        m._n_rows = int(m._counts.shape[0])
        m.metrics = RankingMetrics.from_state(state["metrics"])
        return m


class TimeDecayedPopularity(_PopularityBase):
    """Popularity with exponentially decaying counts (each event's weight halves every
    ``half_life_s`` seconds of event time): a "what's trending" baseline that tracks
    drift, which plain global popularity cannot.

    Scores are kept in log2 space relative to the first event time t0:
    ``L[i] = log2(sum_j 2 ** ((ts_j - t0) / half_life_s))``, updated with a stable
    log-add-exp, so nothing overflows or underflows over years of timestamps. Since all
    items decay by the same factor, the ranking at any evaluation time is the ranking by
    ``L``; ``ts`` in ``evaluate`` only serves :meth:`score` and interface symmetry.
    """

    def __init__(self, half_life_s: float, k: int = 10) -> None:
        if not (half_life_s > 0 and math.isfinite(half_life_s)):
            raise ValueError("half_life_s must be positive and finite")
        super().__init__(k)
        self.half_life_s = float(half_life_s)
        self.t0: float | None = None
        self._log2 = np.zeros(0, dtype=np.float64)
        self._n_rows = 0

    def _exponent(self, ts: float) -> float:
        if not math.isfinite(ts):
            raise ValueError("ts must be finite")
        return 0.0 if self.t0 is None else (ts - self.t0) / self.half_life_s

    def learn(self, item: int, ts: float) -> None:
        """Add one interaction with ``item`` at event time ``ts`` (seconds)."""
        if item < 0:
            raise ValueError("item must be >= 0")
        x = self._exponent(ts)
        if self.t0 is None:
            self.t0 = float(ts)
        if item + 1 > self._log2.shape[0]:
            old = self._log2.shape[0]
            self._log2 = _grow(self._log2, item + 1)
            self._log2[old:] = -math.inf
        cur = float(self._log2[item])
        if cur == -math.inf:
            new = x
        else:
            hi, lo = (cur, x) if cur >= x else (x, cur)
            new = hi + math.log1p(2.0 ** (lo - hi)) / math.log(2.0)
        self._log2[item] = new
        self._n_rows = max(self._n_rows, item + 1)
        self.n_events += 1

    def score(self, item: int, ts: float) -> float:
        """Decayed interaction count of ``item`` as seen at time ``ts`` (may under/overflow)."""
        x = self._exponent(ts)
        if not 0 <= item < self._n_rows:
            return 0.0
        return float(2.0 ** (float(self._log2[item]) - x))

    def _scores(self, n_items: int) -> np.ndarray:
        if n_items <= self._log2.shape[0]:
            return self._log2[:n_items]
        out = np.full(n_items, -math.inf)
        out[: self._log2.shape[0]] = self._log2
        return out

    def evaluate(
        self, user_seen: npt.ArrayLike, target: int, n_items: int, ts: float
    ) -> int | None:
        """Rank of ``target`` among rows 0..n_items-1 minus ``user_seen``; None if not a row."""
        self._exponent(ts)
        return self._evaluate(user_seen, target, n_items)

    def recommend(self, user_seen: npt.ArrayLike, n_items: int, ts: float) -> npt.NDArray[np.int64]:
        """Top-k rows in rank order (the ones ``evaluate`` gives ranks 0..k-1)."""
        self._exponent(ts)
        return self._recommend(user_seen, n_items)

    def step(self, user_seen: npt.ArrayLike, target: int, n_items: int, ts: float) -> int | None:
        """Test-then-train on one event: evaluate, record in ``self.metrics``, learn."""
        rank = self.evaluate(user_seen, target, n_items, ts)
        self.metrics.update(rank)
        self.learn(target, ts)
        return rank

    def reset(self) -> None:
        """Forget counts and metrics (keeps half-life and k)."""
        self.metrics.reset()
        self.n_events = 0
        self.t0 = None
        self._log2 = np.zeros(0, dtype=np.float64)
        self._n_rows = 0

    def to_state(self) -> State:
        """Msgpack-friendly snapshot: log2-scores as '<f8' bytes (-inf = never seen)."""
        return {
            "half_life_s": self.half_life_s,
            "k": self.k,
            "t0": self.t0,
            "n_events": self.n_events,
            "log2": _pack(self._log2[: self._n_rows], _F8),
            "metrics": self.metrics.to_state(),
        }

    @classmethod
    def from_state(cls, state: State) -> TimeDecayedPopularity:
        """Rebuild from :meth:`to_state` output."""
        m = cls(float(state["half_life_s"]), int(state["k"]))
        m.t0 = None if state["t0"] is None else float(state["t0"])
        m.n_events = int(state["n_events"])
        m._log2 = _unpack(state["log2"], _F8)
        m._n_rows = int(m._log2.shape[0])
        m.metrics = RankingMetrics.from_state(state["metrics"])
        return m


# ----------------------------------------------------------------------------- precision, recall, F1


def _f1(precision: float, recall: float) -> float:
    return 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


class ThresholdedCounts:
    """Precision, recall and F1 of the labelled events' progressive predictions, an event
    being predicted positive when its probability is at least ``threshold``.

    Counts events (unweighted, like :class:`ROCAUC`): precision = TP / (TP + FP),
    recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN); nan where a denominator is 0.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)
        self.tp = self.fp = self.fn = self.tn = 0

    def update(self, p: npt.ArrayLike, y: npt.ArrayLike) -> None:
        pa = _as_1d_float(p, "p")
        positive = _labels(y, pa.shape[0], binary=True) == 1.0
        predicted = pa >= self.threshold
        self.tp += int(np.count_nonzero(predicted & positive))
        self.fp += int(np.count_nonzero(predicted & ~positive))
        self.fn += int(np.count_nonzero(~predicted & positive))
        self.tn += int(np.count_nonzero(~predicted & ~positive))

    def add(self, tp: int, fp: int, fn: int, tn: int) -> None:
        """Add counts already taken at this threshold
        (:meth:`ProgressiveMetrics.update_labelled`)."""
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.tn += tn

    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else math.nan

    def to_state(self) -> State:
        return {"threshold": self.threshold, "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "tn": self.tn}  # fmt: skip

    @classmethod
    def from_state(cls, state: State) -> ThresholdedCounts:
        m = cls(float(state["threshold"]))
        m.tp, m.fp = int(state["tp"]), int(state["fp"])
        m.fn, m.tn = int(state["fn"]), int(state["tn"])
        return m


@njit(cache=True, nogil=True)
def _top_allowed(scores: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray:
    """The k best ``allowed`` rows of ``scores``, best first, ties to the lower row, NaN
    as -inf: one pass keeping a sorted list of at most k rows."""
    rows = np.empty(max(k, 0), np.int64)
    kept = np.empty(max(k, 0))
    count = 0
    for i in range(scores.shape[0] if k > 0 else 0):
        if not allowed[i]:
            continue
        value = -np.inf if math.isnan(scores[i]) else scores[i]
        if count == k and not value > kept[k - 1]:
            continue  # an equal score keeps the lower row that came first
        at = count if count < k else k - 1
        while at > 0 and value > kept[at - 1]:
            kept[at], rows[at] = kept[at - 1], rows[at - 1]
            at -= 1
        kept[at], rows[at] = value, i
        count = min(count + 1, k)
    return rows[:count]


def top_rows(
    scores: npt.ArrayLike, k: int, exclude: npt.ArrayLike, keep: int = -1
) -> npt.NDArray[np.int64]:
    """The k best rows of ``scores`` not in ``exclude`` (``keep`` is never excluded), best
    first, ties to the lower row and NaN last: the rows :func:`rank_of` ranks 0..k-1."""
    s = np.ascontiguousarray(np.asarray(scores, np.float64).reshape(-1))
    allowed = np.ones(s.shape[0], np.bool_)
    allowed[np.asarray(exclude, np.int64).reshape(-1)] = False
    if 0 <= keep < s.shape[0]:
        allowed[keep] = True
    return _top_allowed(s, int(k), allowed)


class NextItemMetrics:
    """Progressive precision@k, recall@k and F1@k of the next-item protocol.

    An evaluated interaction of user u is ranked before it is learned; its relevant set
    is the distinct items of u's next ``relevant_next`` interactions, this one first.
    With h the relevant items among the k ranked first: precision@k = h / k, recall@k =
    h / |relevant|, F1@k = 2 P R / (P + R) (0 when h = 0); each is the mean over the
    evaluations whose relevant set is complete.  With ``relevant_next = 1`` the relevant
    set is the held-out item alone, so h is HR@k's hit.  An evaluation waits for the
    user's later interactions; at most ``max_pending`` wait, the oldest past that is
    dropped (counted in ``expired``).
    """

    def __init__(self, k: int = 10, relevant_next: int = 1, max_pending: int = 100_000) -> None:
        if k < 1 or relevant_next < 1 or max_pending < 1:
            raise ValueError("k, relevant_next and max_pending must be >= 1")
        self.k, self.relevant_next, self.max_pending = int(k), int(relevant_next), max_pending
        self.count = 0
        self.expired = 0
        self.precision_sum = self.recall_sum = self.f1_sum = 0.0
        self._next_id = 0
        # id -> [user, relevant items (distinct, in order), interactions seen, top rows]
        self._pending: dict[int, list[Any]] = {}
        self._by_user: dict[str, list[int]] = {}

    def begin(self, user: str, item: int) -> int:
        """An evaluation of ``user``'s interaction with ``item`` (ranked later by
        :meth:`ranked`); returns its id."""
        if not user and self.relevant_next > 1:
            return -1  # an anonymous visitor's next items cannot be followed
        evaluation = self._next_id
        self._next_id += 1
        self._pending[evaluation] = [user, [item], 1, None]
        self._by_user.setdefault(user, []).append(evaluation)
        while len(self._pending) > self.max_pending:
            self._drop(next(iter(self._pending)))
            self.expired += 1
        return evaluation

    def observe(self, user: str, item: int) -> None:
        """A later interaction of ``user``: it joins the relevant sets still collecting."""
        for evaluation in list(self._by_user.get(user, ())):
            entry = self._pending[evaluation]
            if entry[2] >= self.relevant_next:
                continue
            entry[2] += 1
            if item not in entry[1]:
                entry[1].append(item)
            self._finish_if_complete(evaluation)

    def ranked(self, evaluation: int, top: npt.ArrayLike) -> None:
        """The rows the model ranked first (at most k) for ``evaluation``."""
        entry = self._pending.get(evaluation)
        if entry is not None:
            entry[3] = [int(r) for r in np.asarray(top).reshape(-1)[: self.k]]
            self._finish_if_complete(evaluation)

    def _finish_if_complete(self, evaluation: int) -> None:
        _, relevant, seen, top = self._pending[evaluation]
        if top is None or seen < self.relevant_next:
            return
        hits = len(set(top) & set(relevant))
        precision, recall = hits / self.k, hits / len(relevant)
        self.count += 1
        self.precision_sum += precision
        self.recall_sum += recall
        self.f1_sum += _f1(precision, recall)
        self._drop(evaluation)

    def forget(self, user: str) -> int:
        """Drop ``user``'s evaluations still waiting (not counted); how many."""
        waiting = list(self._by_user.get(user, ()))
        for evaluation in waiting:
            self._drop(evaluation)
        return len(waiting)

    def waiting_for(self, user: str) -> bool:
        return user in self._by_user

    def _drop(self, evaluation: int) -> None:
        user = self._pending.pop(evaluation)[0]
        ids = self._by_user[user]
        ids.remove(evaluation)
        if not ids:
            del self._by_user[user]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def precision(self) -> float:
        return self.precision_sum / self.count if self.count else math.nan

    def recall(self) -> float:
        return self.recall_sum / self.count if self.count else math.nan

    def f1(self) -> float:
        return self.f1_sum / self.count if self.count else math.nan

    def to_state(self) -> State:
        return {
            "k": self.k,
            "relevant_next": self.relevant_next,
            "max_pending": self.max_pending,
            "count": self.count,
            "expired": self.expired,
            "sums": [self.precision_sum, self.recall_sum, self.f1_sum],
            "next_id": self._next_id,
            "pending": [[e, *entry] for e, entry in self._pending.items()],
        }

    @classmethod
    def from_state(cls, state: State) -> NextItemMetrics:
        m = cls(int(state["k"]), int(state["relevant_next"]), int(state["max_pending"]))
        m.count, m.expired = int(state["count"]), int(state["expired"])
        m.precision_sum, m.recall_sum, m.f1_sum = (float(x) for x in state["sums"])
        m._next_id = int(state["next_id"])
        for evaluation, user, relevant, seen, top in state["pending"]:
            top = None if top is None else [int(r) for r in top]
            m._pending[int(evaluation)] = [str(user), [int(i) for i in relevant], int(seen), top]
            m._by_user.setdefault(str(user), []).append(int(evaluation))
        return m


# ----------------------------------------------------------------------------- latencies


class LatencyWindow:
    """The most recent ``size`` latency samples (seconds), for p50/p99 in statistics.

    A fixed ring buffer: constant memory however long the daemon runs.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._buf = np.zeros(size, np.float64)
        self.count = 0

    def add(self, seconds: float) -> None:
        self._buf[self.count % self._buf.shape[0]] = seconds
        self.count += 1

    def summary(self) -> dict[str, float | int | None]:
        """count, p50 and p99 in milliseconds (None before any sample)."""
        kept = self._buf[: min(self.count, self._buf.shape[0])]
        if kept.size == 0:
            return {"count": 0, "p50_ms": None, "p99_ms": None}
        p50, p99 = np.percentile(kept, [50, 99]) * 1000.0
        return {"count": self.count, "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


MEAN_CTR_PRIOR = RunningMeanCTR.PRIOR


@njit(cache=True, nogil=True)
def _labelled_sums(
    p: np.ndarray, y: np.ndarray, w: np.ndarray, totals: np.ndarray, threshold: float
) -> tuple[int, np.ndarray, np.ndarray]:
    """One pass over a batch of labelled events: (error code, [model's logloss sum, weight,
    the mean-CTR baseline's logloss sum], [TP, FP, FN, TN]); ``totals`` (the baseline's
    running sum_w, sum_wy) are advanced in place, event by event as its update does."""
    sums = np.zeros(3)
    counts = np.zeros(4, np.int64)
    for i in range(p.shape[0]):
        if math.isnan(p[i]):
            return 1, sums, counts
        if y[i] != 0.0 and y[i] != 1.0:
            return 2, sums, counts
        if not math.isfinite(w[i]) or w[i] < 0.0:
            return 3, sums, counts
    sum_w, sum_wy = totals[0], totals[1]
    for i in range(p.shape[0]):
        pc = min(max(p[i], EPS), 1.0 - EPS)
        sums[0] -= w[i] * (y[i] * math.log(pc) + (1.0 - y[i]) * math.log1p(-pc))
        sums[1] += w[i]
        base = sum_wy / sum_w if sum_w > 0 else MEAN_CTR_PRIOR
        base = min(max(base, EPS), 1.0 - EPS)
        sums[2] -= w[i] * (y[i] * math.log(base) + (1.0 - y[i]) * math.log1p(-base))
        sum_w += w[i]
        sum_wy += w[i] * y[i]
        positive = y[i] == 1.0
        if p[i] >= threshold:  # TP, FP
            counts[0 if positive else 1] += 1
        else:  # FN, TN
            counts[2 if positive else 3] += 1
    totals[0], totals[1] = sum_w, sum_wy
    return 0, sums, counts


LABELLED_ERRORS = ("", "p contains NaN", "labels must be 0 or 1",
                   "weights must be finite and non-negative")  # fmt: skip


class ProgressiveMetrics:
    """Every event is scored before it is learned (Blum, Kalai & Langford 1999)."""

    def __init__(
        self,
        k: int = 10,
        popularity: bool = True,
        auc_window: int | None = None,
        relevant_next: int = 1,
        threshold: float = 0.5,
    ) -> None:
        self.logloss = Logloss()
        self.auc = ROCAUC(auc_window)
        self.thresholded = ThresholdedCounts(threshold)
        self.next_item = NextItemMetrics(k, relevant_next)
        self.mean_ctr = RunningMeanCTR()
        self.ranking = RankingMetrics(k)
        self.popularity = PopularityBaseline(k) if popularity else None
        self.popularity_ranking = RankingMetrics(k)
        self.signals: dict[str, RankingMetrics] = {}  # each sequence signal ranking alone
        self.k = k

    def update_labelled(self, p: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        """The progressive predictions ``p`` of labelled events (0/1 labels ``y``, weights
        ``w``): logloss, AUC, the thresholded counts and the mean-CTR baseline, as each
        one's ``update`` would add them, in one compiled pass with the inputs checked once
        (the four updates, each checking its inputs, cost more per batch than the learning
        step whose predictions they measure)."""
        pa, ya, wa = (np.ascontiguousarray(a, np.float64).reshape(-1) for a in (p, y, w))
        if not pa.shape[0] == ya.shape[0] == wa.shape[0]:
            raise ValueError(
                f"{pa.shape[0]} predictions, {ya.shape[0]} labels, {wa.shape[0]} weights"
            )
        totals = np.array([self.mean_ctr.sum_w, self.mean_ctr.sum_wy])
        error, sums, counts = _labelled_sums(pa, ya, wa, totals, self.thresholded.threshold)
        if error:
            raise ValueError(LABELLED_ERRORS[error])
        n = pa.shape[0]
        self.logloss.add(float(sums[0]), float(sums[1]), n)
        self.mean_ctr.add(float(sums[2]), float(sums[1]), n, (float(totals[0]), float(totals[1])))
        self.thresholded.add(*(int(c) for c in counts))
        self.auc.append(pa, ya)

    def signal(self, name: str) -> RankingMetrics:
        """The ranking metrics of one signal alone (what it adds, next to the model's)."""
        metrics = self.signals.get(name)
        if metrics is None:
            metrics = self.signals[name] = RankingMetrics(self.k)
        return metrics

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.logloss.count:
            out.update(
                logloss=self.logloss.result(),
                auc=self.auc.result(),
                labelled=self.logloss.count,
                baseline_mean_ctr_logloss=self.mean_ctr.result(),
                threshold=self.thresholded.threshold,
                precision=self.thresholded.precision(),
                recall=self.thresholded.recall(),
                f1=self.thresholded.f1(),
            )
            out["best_f1"], out["best_f1_threshold"] = self.auc.best_f1()
        if self.ranking.count:
            out.update(
                {
                    f"hr@{self.k}": self.ranking.hit_rate(),
                    f"ndcg@{self.k}": self.ranking.ndcg(),
                    "rank_evaluated": self.ranking.count,
                }
            )
            if self.popularity is not None:
                out[f"baseline_popularity_hr@{self.k}"] = self.popularity_ranking.hit_rate()
                out[f"baseline_popularity_ndcg@{self.k}"] = self.popularity_ranking.ndcg()
            for name, metrics in self.signals.items():
                out[f"signal_{name}_hr@{self.k}"] = metrics.hit_rate()
                out[f"signal_{name}_ndcg@{self.k}"] = metrics.ndcg()
        next_item = self.next_item
        if next_item.count or next_item.pending:
            out.update(
                {
                    f"precision@{self.k}": next_item.precision(),
                    f"recall@{self.k}": next_item.recall(),
                    f"f1@{self.k}": next_item.f1(),
                    "relevant_next": next_item.relevant_next,
                    "next_item_evaluated": next_item.count,
                    "next_item_pending": next_item.pending,
                    "next_item_expired": next_item.expired,
                }
            )
        return out

    STATE_VERSION: ClassVar[int] = 1

    def to_state(self) -> dict[str, Any]:
        state = {
            "logloss": self.logloss.to_state(),
            "auc": self.auc.to_state(),
            "mean_ctr": self.mean_ctr.to_state(),
            "ranking": self.ranking.to_state(),
            "popularity_ranking": self.popularity_ranking.to_state(),
            "signals": {name: m.to_state() for name, m in self.signals.items()},
            "thresholded": self.thresholded.to_state(),
            "next_item": self.next_item.to_state(),
        }
        if self.popularity is not None:
            state["popularity"] = self.popularity.to_state()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self.logloss = Logloss.from_state(state["logloss"])
        self.auc = ROCAUC.from_state(state["auc"])
        self.mean_ctr = RunningMeanCTR.from_state(state["mean_ctr"])
        self.ranking = RankingMetrics.from_state(state["ranking"])
        self.popularity_ranking = RankingMetrics.from_state(state["popularity_ranking"])
        self.signals = {n: RankingMetrics.from_state(s) for n, s in state["signals"].items()}
        if "popularity" in state:
            self.popularity = PopularityBaseline.from_state(state["popularity"])
        # a snapshot from before these metrics, or of another threshold / relevant set,
        # leaves them counting from here
        thresholded = state.get("thresholded")
        if thresholded is not None and thresholded["threshold"] == self.thresholded.threshold:
            self.thresholded = ThresholdedCounts.from_state(thresholded)
        next_item = state.get("next_item")
        settings = (self.next_item.k, self.next_item.relevant_next)
        if next_item is not None and (next_item["k"], next_item["relevant_next"]) == settings:
            self.next_item = NextItemMetrics.from_state(next_item)
