"""Candidate generation for large catalogs: the rows worth scoring for one visitor.

Scoring every catalog row costs O(catalog) per request; above
``whole_catalog_below`` rows the ranker scores the union of

* the kNN neighbours of the visitor's last ``window`` items and the Markov
  successors of their last ``markov_order`` items (every row those signals can
  score above 0: :meth:`ItemStats.neighbour_rows`),
* the ``trending`` rows each trend ranks highest (recomputed at most every
  ``refresh_s`` seconds, so the O(catalog) pass is shared by every request in
  between),
* the ``newest`` catalog rows, so new items can be shown (and explored) before
  anyone has picked them together with anything.

Below the threshold, and for the progressive evaluation, the whole catalog is
scored.  Pure, synchronous code: the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from actors.features import Catalog
from actors.signals import SequenceSignals


@njit(cache=True, nogil=True)
def _collect(out: np.ndarray, count: int, n: int, marks: np.ndarray) -> np.ndarray:
    """The ``count`` marked values in ``out``, sorted, with their marks cleared."""
    if 16 * count >= n:  # dense: the marks in order are the sorted values, no sort needed
        count = 0
        for value in range(n):
            if marks[value]:
                marks[value] = False
                out[count] = value
                count += 1
        return out[:count]
    for i in range(count):
        marks[out[i]] = False
    return np.sort(out[:count])


@njit(cache=True, nogil=True)
def _candidate_rows(
    recent: np.ndarray,
    lists: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    last: tuple[int, int, int],
    extra: np.ndarray,
    n: int,
    marks: np.ndarray,
) -> np.ndarray:
    """The distinct rows in [0, n), sorted, of the kNN lists of the last ``last[0]`` and
    the Markov lists of the last ``last[1]`` of ``recent``'s rows below ``last[2]`` (the
    rows the statistics know), and of ``extra``; as ``ItemStats.neighbour_rows`` +
    ``extra`` made distinct, without the concatenated copy.  ``marks`` is all False
    before and after (a scratch of at least n flags, so no O(n) clearing per call)."""
    knn_nbr, knn_fill, mk_nbr, mk_fill = lists
    window, order, known = last
    rows = recent[(recent >= 0) & (recent < known)]
    out = np.empty(n, np.int64)
    count = 0
    for lo, nbr, fill in (
        (rows.size - window, knn_nbr, knn_fill),
        (rows.size - order, mk_nbr, mk_fill),
    ):
        for r in rows[max(lo, 0) :]:
            for value in nbr[r, : fill[r]]:
                if 0 <= value < n and not marks[value]:
                    marks[value] = True
                    out[count] = value
                    count += 1
    for value in extra:
        if 0 <= value < n and not marks[value]:
            marks[value] = True
            out[count] = value
            count += 1
    return _collect(out, count, n, marks)


@dataclass(frozen=True)
class CandidateParams:
    whole_catalog_below: int = 5_000
    trending: int = 200
    newest: int = 100
    refresh_s: float = 1.0


class CandidateGenerator:
    """The rows to score for a visitor (None: the whole catalog)."""

    def __init__(
        self, catalog: Catalog, sequence: SequenceSignals | None, params: CandidateParams
    ) -> None:
        self.catalog = catalog
        self.sequence = sequence
        self.params = params
        self._trending = np.zeros(0, np.int64)
        self._refreshed_at = -np.inf
        self._marks = np.zeros(0, np.bool_)
        self.generated = 0  # requests answered from generated candidates
        self.candidates = 0  # rows they scored, in total

    def rows(self, sequence_rows: np.ndarray, now: float) -> np.ndarray | None:
        """Sorted distinct candidate rows for a visitor whose last items are
        ``sequence_rows``, or None when the whole catalog should be scored."""
        n = len(self.catalog)
        if self.sequence is None or n < self.params.whole_catalog_below:
            return None
        stats = self.sequence.stats
        newest = np.arange(max(0, n - self.params.newest), n, dtype=np.int64)
        if self._marks.size < n:
            self._marks = np.zeros(2 * n, np.bool_)
        rows = _candidate_rows(
            np.ascontiguousarray(sequence_rows, np.int64),
            (stats.knn_nbr, stats.knn_fill, stats.mk_nbr, stats.mk_fill),
            (stats.params.window, stats.params.markov_order, stats.n_items),
            np.concatenate([self._top_trending(now), newest]),
            n,
            self._marks,
        )
        self.generated += 1
        self.candidates += int(rows.size)
        return rows

    def _top_trending(self, now: float) -> np.ndarray:
        if now - self._refreshed_at >= self.params.refresh_s:
            assert self.sequence is not None
            self._trending = self.sequence.trends.top(self.params.trending)
            self._refreshed_at = now
        return self._trending

    def statistics(self) -> dict[str, float | int]:
        return {
            "whole_catalog_below": self.params.whole_catalog_below,
            "generated_requests": self.generated,
            "mean_candidates": round(self.candidates / max(self.generated, 1), 1),
        }
