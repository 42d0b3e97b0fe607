"""Trending items: each item's interactions, exponentially decayed in stream time.

For a half-life ``h`` (seconds) the trend of item ``j`` at time ``t`` is

    trend_h(j, t) = sum over j's interactions at times t_i <= t of 2^(-(t - t_i) / h)

(a time-decayed popularity count, as in the "recently popular" baselines of
Ji et al., "A re-visit of the popularity baseline in recommender systems", SIGIR
2020).  Every item decays at the same rate, so the trend divided by its maximum
over the items does not depend on ``t``: the counts are kept scaled by
``2^((t_i - t0) / h)`` and only rescaled when they grow large, and a query needs no
clock.  Pure, synchronous code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

RESCALE_ABOVE = 1e150  # far below float64's range, so one more event cannot overflow


class TrendingCounts:
    """Time-decayed interaction counts per catalog row, one row per half-life."""

    STATE_VERSION: ClassVar[int] = 1

    def __init__(self, half_lives_s: Sequence[float]) -> None:
        self.half_lives = np.asarray(half_lives_s, np.float64)
        if self.half_lives.size and not (self.half_lives > 0).all():
            raise ValueError(f"half-lives must be > 0 seconds, got {list(half_lives_s)}")
        self.names = tuple(f"trend_{_duration(h)}" for h in self.half_lives)
        self.scaled = np.zeros((self.half_lives.size, 0))
        self.rows = 0  # catalog rows seen: 1 + the highest
        self.origin = np.nan  # t0: the stream time the scaled counts refer to
        self.latest = -np.inf  # the latest stream time learned
        self._summary: tuple[np.ndarray, np.ndarray] | None = None  # (peaks, totals), cached

    def learn(self, items: np.ndarray, ts: np.ndarray) -> None:
        """Interactions with catalog rows ``items`` at stream times ``ts`` (seconds)."""
        if items.size == 0 or self.half_lives.size == 0:
            return
        self._grow(int(items.max()) + 1)
        self.rows = max(self.rows, int(items.max()) + 1)
        if not np.isfinite(ts).all():  # the fronts stamp arrival times; else: the latest
            ts = np.where(np.isfinite(ts), ts, self.latest if self.latest > -np.inf else 0.0)
        if np.isnan(self.origin):
            self.origin = float(ts.min())
        self.latest = max(self.latest, float(ts.max()))
        exponents = (ts[None, :] - self.origin) / self.half_lives[:, None]
        if exponents.max() > 400:  # 2^400 ≈ 1e120: move t0 up before the counts overflow
            self._rescale(float(ts.max()))
            exponents = (ts[None, :] - self.origin) / self.half_lives[:, None]
        weights = np.exp2(np.minimum(exponents, 400.0))
        for row, w in enumerate(weights):
            np.add.at(self.scaled[row], items, w)
        if self.scaled.max(initial=0.0) > RESCALE_ABOVE:
            self._rescale(float(ts.max()))
        self._summary = None

    def summary(self) -> tuple[np.ndarray, np.ndarray]:
        """Each trend's maximum and total over the catalog (scaled), until the next learn."""
        if self._summary is None:
            used = self.scaled[:, : self.rows]  # sums must not depend on spare capacity
            self._summary = (used.max(axis=1, initial=0.0), used.sum(axis=1))
        return self._summary

    def top(self, count: int) -> np.ndarray:
        """The rows among the ``count`` highest of any trend (unordered, distinct)."""
        used = self.scaled[:, : self.rows]
        if count <= 0 or used.size == 0:
            return np.zeros(0, np.int64)
        if count >= self.rows:
            return np.arange(self.rows, dtype=np.int64)
        best = np.argpartition(-used, count - 1, axis=1)[:, :count]
        return np.unique(best).astype(np.int64)

    def raw_scores_at(self, items: np.ndarray) -> np.ndarray:
        """(half-lives, items): the scaled counts (proportional to the trends)."""
        out = np.zeros((self.half_lives.size, items.size))
        known = items < self.scaled.shape[1]
        out[:, known] = self.scaled[:, items[known]]
        return out

    def scores_at(self, items: np.ndarray) -> np.ndarray:
        """(half-lives, items): each trend divided by its maximum over the catalog."""
        peaks, _ = self.summary()
        return self.raw_scores_at(items) / np.where(peaks > 0, peaks, 1.0)[:, None]

    def scores(self, n_items: int) -> np.ndarray:
        return self.scores_at(np.arange(n_items))

    def reserve(self, rows: int) -> None:
        """Room for rows ``0..rows-1`` (``rows`` still counts only those learned)."""
        self._grow(rows)

    def forget_summary(self) -> None:
        """The counts were changed in place: :meth:`summary` recomputes."""
        self._summary = None

    def _grow(self, rows: int) -> None:
        if rows > self.scaled.shape[1]:
            grown = np.zeros((self.half_lives.size, max(rows, 2 * self.scaled.shape[1], 64)))
            grown[:, : self.scaled.shape[1]] = self.scaled
            self.scaled = grown

    def _rescale(self, new_origin: float) -> None:
        shift = (new_origin - self.origin) / self.half_lives[:, None]
        self.scaled *= np.exp2(-shift)
        self.origin = new_origin

    def to_state(self) -> dict[str, Any]:
        return {
            "half_lives": self.half_lives,
            "scaled": self.scaled[:, : self.rows],
            "origin": self.origin,
            "latest": self.latest,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if not np.array_equal(np.asarray(state["half_lives"]), self.half_lives):
            raise ValueError(
                f"trend half-lives {state['half_lives']} differ from {self.half_lives}"
            )
        self.scaled = np.array(state["scaled"], np.float64)
        self.rows = self.scaled.shape[1]
        self._summary = None
        self.origin = float(state["origin"])
        self.latest = float(state["latest"])


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
