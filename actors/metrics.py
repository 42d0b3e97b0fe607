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
from typing import Any

import numpy as np
import numpy.typing as npt

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


class ROCAUC:
    """Exact ROC AUC over every (score, label) pair seen so far; ties count half.

    Ranking quality of the CTR predictions, insensitive to calibration, so it complements
    :class:`Logloss`. All pairs are kept in float64 / uint8 buffers that grow by doubling
    (9 bytes per event: 1e8 events is ~0.9 GB, so reset or snapshot-and-reset on long
    runs); ``result()`` does one sort and computes the Mann–Whitney U statistic from
    mid-ranks (tied scores get the average of their ranks) in exact integer arithmetic.
    The value is cached until the next ``update``.

    With ``window`` set, only the most recent ``window`` pairs are kept and scored (a
    sliding-window AUC), so a long-running daemon's memory stays bounded.
    """

    count: int
    n_pos: int
    _scores: npt.NDArray[np.float64]
    _labels: npt.NDArray[np.uint8]
    _cache: float | None

    def __init__(self, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.window = window
        self.reset()

    def _trim(self) -> None:
        """Keep the newest ``window`` pairs once twice as many are buffered (amortised O(1))."""
        if self.window is None or self.count <= 2 * self.window:
            return
        drop = self.count - self.window
        self.n_pos -= int(np.count_nonzero(self._labels[:drop]))
        self._scores[: self.window] = self._scores[drop : self.count]
        self._labels[: self.window] = self._labels[drop : self.count]
        self.count = self.window

    def update(self, scores: npt.ArrayLike, y: npt.ArrayLike) -> None:
        """Append a batch of scores (any monotone scale: probabilities or logits) and 0/1 labels."""
        s = _as_1d_float(scores, "scores")
        ya = _labels(y, s.shape[0], binary=True)
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
        self._cache = None

    @property
    def n_neg(self) -> int:
        """Number of negative labels seen."""
        return self.count - self.n_pos

    def result(self) -> float:
        """AUC = P(score(pos) > score(neg)) + P(tie)/2; nan unless both classes were seen."""
        if self._cache is not None:
            return self._cache
        first = 0 if self.window is None else max(0, self.count - self.window)
        s = self._scores[first : self.count]
        labels = self._labels[first : self.count]
        n = s.shape[0]
        n_pos = self.n_pos if first == 0 else int(np.count_nonzero(labels))
        n_neg = n - n_pos
        if n_pos == 0 or n_neg == 0:
            return math.nan
        order = np.argsort(s)
        s_sorted = s[order]
        lab_sorted = labels[order]
        # tie groups of equal scores: [starts[g], starts[g + 1])
        starts = np.flatnonzero(np.concatenate(([True], s_sorted[1:] != s_sorted[:-1])))
        sizes = np.diff(np.append(starts, n)).astype(np.int64)
        pos_per_group = np.add.reduceat(lab_sorted.astype(np.int64), starts)
        # 1-based mid-rank of group g is starts[g] + (sizes[g] + 1) / 2; keep it doubled
        # so that everything stays an exact integer.
        twice_rank_sum = int(pos_per_group @ (2 * starts.astype(np.int64) + sizes + 1))
        twice_u = twice_rank_sum - n_pos * (n_pos + 1)
        self._cache = twice_u / (2 * n_pos * n_neg)
        return self._cache

    def reset(self) -> None:
        """Forget everything (and release the buffers)."""
        self._scores = np.zeros(0, dtype=np.float64)
        self._labels = np.zeros(0, dtype=np.uint8)
        self.count = 0
        self.n_pos = 0
        self._cache = None

    def to_state(self) -> State:
        """Msgpack-friendly snapshot: scores as '<f8' bytes, labels as 'u1' bytes."""
        return {
            "scores": _pack(self._scores[: self.count], _F8),
            "labels": _pack(self._labels[: self.count], _U1),
            "window": self.window,
        }

    @classmethod
    def from_state(cls, state: State) -> ROCAUC:
        """Rebuild from :meth:`to_state` output."""
        m = cls(state.get("window"))
        s = _unpack(state["scores"], _F8)
        lab = _unpack(state["labels"], _U1)
        if s.shape != lab.shape:
            raise ValueError("scores and labels differ in length")
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
            self._dcg_sum += 1.0 / math.log2(rank + 2)

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
        self._dcg_sum += float((1.0 / np.log2(hit + 2.0)).sum())

    def hit_rate(self) -> float:
        """Share of events whose item ranked in the top k; nan when empty."""
        return self.hits / self.count if self.count else math.nan

    def ndcg(self) -> float:
        """Mean NDCG@k; nan when empty."""
        return self._dcg_sum / self.count if self.count else math.nan

    def reset(self) -> None:
        """Forget everything (keeps k)."""
        self.count = 0
        self.hits = 0
        self._dcg_sum = 0.0

    def to_state(self) -> State:
        """Msgpack-friendly snapshot."""
        return {"k": self.k, "count": self.count, "hits": self.hits, "dcg_sum": self._dcg_sum}

    @classmethod
    def from_state(cls, state: State) -> RankingMetrics:
        """Rebuild from :meth:`to_state` output."""
        m = cls(int(state["k"]))
        m.count = int(state["count"])
        m.hits = int(state["hits"])
        m._dcg_sum = float(state["dcg_sum"])
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
