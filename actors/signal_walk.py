"""The sequence signals of a whole batch in one compiled pass, event by event.

:class:`actors.signals.SequenceSignals` defines the signals one event at a time
(``values`` of an event's rows, then ``learn_event``); a trainer walking a batch that
way pays the interpreter for every event.  :func:`walk_events` does exactly the same
steps in stream order inside one numba function: event ``e``'s rows are scored from
what came before it, its whole-catalog values are taken if it is ranked, then it
is learned, so event ``e + 1`` sees it.  ``tests/test_signal_walk.py`` checks it
against the per-event methods.

The trends' maximum and total over the catalog are kept up to date per event
instead of recomputed over the catalog, so they agree with
``TrendingCounts.summary`` to rounding.  Pure, synchronous code.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from actors.content import _match_scores, _profile_of
from actors.itemstats import _learn_events, _raw_scores_and_totals, _scores_events

RESCALE_ABOVE = 1e150  # as actors.trending
MAX_EXPONENT = 400.0


@njit(cache=True, nogil=True)
def _content(
    recent: np.ndarray,
    items: np.ndarray,
    n_catalog: int,
    catalog: tuple[np.ndarray, np.ndarray, np.ndarray],
    counted: tuple[np.ndarray, np.ndarray],
    half_life: float,
    id_ns: int,
) -> tuple[np.ndarray, float, float]:
    """``ContentProfile.raw_scores_and_totals``: raw scores, profile weight, total."""
    c_raw, c_ns, c_x = catalog
    rows = recent[(recent >= 0) & (recent < n_catalog)]
    if rows.size == 0:
        return np.zeros(items.size), 0.0, 0.0
    features, weights = _profile_of(c_raw[rows], c_ns[rows], c_x[rows], half_life, id_ns)
    if features.size == 0:
        return np.zeros(items.size), 0.0, 0.0
    raw = _match_scores(
        features, weights, c_raw[:n_catalog], c_ns[:n_catalog], c_x[:n_catalog], items, id_ns
    )
    known, items_with = counted
    total = 0.0
    for f in range(features.size):
        at = np.searchsorted(known, features[f])
        if at < known.size and known[at] == features[f]:
            total += weights[f] * items_with[at]
    return raw, weights.sum(), total


@njit(cache=True, nogil=True)
def _mixture_log_np(shares: np.ndarray, weights: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """``SignalMixture.log_probability`` with the bucket's totals ``weights`` (a copy)."""
    for s in range(shares.shape[0]):
        if not evidence[s]:
            weights[1 + s] = 0.0
    weights /= weights.sum()
    out = np.full(shares.shape[1], weights[0])
    for s in range(shares.shape[0]):
        for i in range(out.size):
            out[i] += weights[1 + s] * shares[s, i]
    return np.log(out)


@njit(cache=True, nogil=True)
def _mixture_learn(
    totals: np.ndarray, bucket: int, shares: np.ndarray, keep: float, evidence: np.ndarray
) -> None:
    """``SignalMixture.learn``: one online EM step for the picked item's ``shares``."""
    weights = totals[bucket].copy()
    for s in range(shares.shape[0]):
        if not evidence[s]:
            weights[1 + s] = 0.0
    weights /= weights.sum()
    parts = weights.copy()
    for s in range(shares.shape[0]):
        parts[1 + s] *= shares[s]
    total = parts.sum()
    if total > 0:
        totals[bucket] = keep * totals[bucket] + parts / total


@njit(cache=True, nogil=True)
def _values(
    recent: np.ndarray,
    items: np.ndarray,
    n_catalog: int,
    stats: tuple[Any, ...],
    stat_params: tuple[int, float, int, float],
    content: tuple[Any, ...],
    trends: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    mixture: tuple[np.ndarray, np.ndarray],
    sizes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``SequenceSignals.values(recent, items)``, the shares of ``items[0]`` and which
    signals have evidence.

    ``sizes`` holds [ItemStats.n_items, TrendingCounts.rows]."""
    window, half_life, order, decay = stat_params
    knn_nbr, knn_sure, knn_fill, mk_nbr, mk_sure, mk_fill, inv_sqrt, mk_total, buf, touched = stats
    _, scaled, peaks_t, totals_t = trends
    mix_totals, buckets = mixture
    base = 3 + scaled.shape[0]
    m = items.size
    raw, peaks, totals = np.zeros((base, m)), np.zeros(base), np.zeros(base)
    if recent.size and m:
        rows = recent[(recent >= 0) & (recent < sizes[0])]
        r, p, t = _raw_scores_and_totals(
            rows, items, window, half_life, order, decay,
            knn_nbr, knn_sure, knn_fill, mk_nbr, mk_sure, mk_fill, inv_sqrt, mk_total, buf, touched,
        )  # fmt: skip
        raw[:2], peaks[:2], totals[:2] = r, p, t
        raw[2], peaks[2], totals[2] = _content(recent, items, n_catalog, *content)
    for h in range(scaled.shape[0]):
        for i in range(m):
            if items[i] < scaled.shape[1]:
                raw[3 + h, i] = scaled[h, items[i]]
        peaks[3 + h], totals[3 + h] = peaks_t[h], totals_t[h]
    out = np.zeros((base + 1, m))
    n = max(n_catalog, sizes[0], sizes[1], items.max() + 1 if m else 0)
    shares = np.zeros((base, m))
    for s in range(base):  # in place: a temporary per signal cost more than the division
        for i in range(m if peaks[s] > 0 else 0):
            out[s, i] = raw[s, i] / peaks[s]
        for i in range(m if totals[s] > 0 else 0):
            shares[s, i] = raw[s, i] * n / totals[s]
    bucket = np.searchsorted(buckets, recent.size, side="right")
    evidence = totals > 0
    out[base] = np.maximum(_mixture_log_np(shares, mix_totals[bucket].copy(), evidence), 0.0)
    picked = shares[:, 0].copy() if m else np.zeros(base)
    return out, picked, evidence


@njit(cache=True, nogil=True)
def _rescale(trends: tuple[Any, ...], scalars: np.ndarray, origin: float) -> None:
    half_lives, scaled, peaks, totals = trends
    for h in range(half_lives.size):
        factor = 2.0 ** (-(origin - scalars[1]) / half_lives[h])
        scaled[h] *= factor
        peaks[h] *= factor
        totals[h] *= factor
    scalars[1] = origin


@njit(cache=True, nogil=True)
def _learn_trend(item: int, ts: float, trends: tuple[Any, ...], scalars: np.ndarray) -> None:
    """``TrendingCounts.learn`` of one event; ``scalars`` = [rows, origin, latest]."""
    half_lives, scaled, peaks, totals = trends
    if half_lives.size == 0:
        return
    scalars[0] = max(scalars[0], item + 1)
    if not math.isfinite(ts):
        ts = scalars[2] if scalars[2] > -np.inf else 0.0
    if math.isnan(scalars[1]):
        scalars[1] = ts
    scalars[2] = max(scalars[2], ts)
    if ((ts - scalars[1]) / half_lives).max() > MAX_EXPONENT:
        _rescale(trends, scalars, ts)
    for h in range(half_lives.size):
        w = 2.0 ** min((ts - scalars[1]) / half_lives[h], MAX_EXPONENT)
        scaled[h, item] += w
        totals[h] += w
        peaks[h] = max(peaks[h], scaled[h, item])
    if peaks.max() > RESCALE_ABOVE:
        _rescale(trends, scalars, ts)


@njit(cache=True, nogil=True)
def _draw_hard_negatives(
    recent: np.ndarray,
    span: np.ndarray,
    hard: tuple[int, int, int],
    stats: tuple[Any, ...],
    stat_params: tuple[int, float, int, float],
    n_items: int,
    blocked: np.ndarray,
) -> None:
    """Replace the first ``count`` negatives of ``span`` (the positive first) by rows among
    the ``known`` ones the personal signals score above 0, other than the positive and the
    ones ``blocked`` marks (empty: none); ``hard`` = (count, known, seed)."""
    count, known, _ = hard
    end = min(span.size, 1 + count)
    if end <= 1:
        return
    window, half_life, order, decay = stat_params
    knn_nbr, knn_sure, knn_fill, mk_nbr, mk_sure, mk_fill, inv_sqrt, mk_total, buf, touched = stats
    scores = _scores_events(
        np.array([0, recent.size]), recent, np.array([0, known]), np.arange(known), n_items,
        window, half_life, order, decay, knn_nbr, knn_sure, knn_fill, mk_nbr, mk_sure, mk_fill,
        inv_sqrt, mk_total, buf, touched, False,
    )  # fmt: skip
    total = scores[0] + scores[1]
    if 0 <= span[0] < known:
        total[span[0]] = 0.0
    for row in range(min(known, blocked.size)):
        if blocked[row]:
            total[row] = 0.0
    pool = np.flatnonzero(total)
    if pool.size:
        for k in range(1, end):
            span[k] = pool[np.random.randint(0, pool.size)]


@njit(cache=True, nogil=True)
def _walk(
    events: tuple[Any, ...],
    n_catalog: int,
    stats: tuple[Any, ...],
    learning: tuple[Any, ...],
    stat_params: tuple[int, float, int, float],
    content: tuple[Any, ...],
    trends: tuple[Any, ...],
    mixture: tuple[Any, ...],
    scalars: np.ndarray,
    sizes: np.ndarray,
    hard: tuple[int, int, int],
    blocked: np.ndarray,
    signals: np.ndarray,
    ranked: np.ndarray,
) -> None:
    """The batch's events in order (module docstring); ``hard`` = (negatives per positive
    drawn among the user's neighbours, not ``blocked``, catalog rows drawn from, seed)."""
    seq_ptr, seq_rows, named, items, learn, ts, row_first, row_items, rank_slot, draw = events
    np.random.seed(hard[2])
    window, _, order, decay = stat_params
    mix_totals, buckets, keep = mixture
    for e in range(items.size):
        item = items[e]
        if item < 0:
            continue
        recent = seq_rows[seq_ptr[e] : seq_ptr[e + 1]]
        lo, hi = row_first[e], row_first[e + 1]
        span = row_items[lo:hi]
        if hard[0] and draw[e] and recent.size:
            _draw_hard_negatives(recent, span, hard, stats, stat_params, sizes[0], blocked)
        keep_rows = np.flatnonzero(span >= 0)
        values, picked, evidence = _values(
            recent, span[keep_rows], n_catalog, stats, stat_params, content,
            trends, (mix_totals, buckets), sizes,
        )  # fmt: skip
        for k in range(keep_rows.size):
            signals[lo + keep_rows[k]] = values[:, k]
        if rank_slot[e] >= 0:
            every = np.arange(n_catalog)
            catalog_values, _, _ = _values(
                recent, every, n_catalog, stats, stat_params, content,
                trends, (mix_totals, buckets), sizes,
            )  # fmt: skip
            ranked[rank_slot[e]] = catalog_values
        if not learn[e]:
            continue
        if named[e]:
            bucket = np.searchsorted(buckets, recent.size, side="right")
            _mixture_learn(mix_totals, bucket, picked, keep, evidence)
        _learn_trend(item, ts[e], trends, scalars)
        sizes[1] = int(scalars[0])
        if named[e]:
            top = max(item, recent.max() if recent.size else 0)
            sizes[0] = max(sizes[0], top + 1)
            _learn_events(
                seq_ptr[e : e + 2] - seq_ptr[e], recent, items[e : e + 1], window, order, decay,
                *learning,
            )  # fmt: skip
