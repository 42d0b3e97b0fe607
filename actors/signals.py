"""What the user just did, and what everyone is doing now, as features of the model.

Each signal is one numeric feature ``signal=<name>`` in [0, 1]: the item-to-item
signals of :mod:`actors.itemstats` (``knn``, ``markov``: the item's normalised score
given the user's recent items) and the trends of :mod:`actors.trending`
(``trend_1d``, …: the item's time-decayed popularity, normalised).  Its weight is learned by FTRL with every other weight, so the
model learns online how much to trust each signal next to the item's own weights,
the user's and the factor terms.  Training rows and ranking read the same values
(``ItemStats.scores_at`` equals ``ItemStats.scores``), so they agree.
Pure, synchronous code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from actors.content import ContentProfile
from actors.features import ITEM_NS, Catalog, FeatureSpace
from actors.itemstats import ItemStats, ItemStatsParams
from actors.signal_walk import _values, _walk
from actors.trending import TrendingCounts

SIGNAL_NS = "signal"


class SignalMixture:
    """How much to trust each signal, learned online: the weights of a mixture of the
    signals' distributions over the catalog (each signal's scores divided by their sum)
    and a uniform one, fitted by online EM (Neal & Hinton 1998; Cappé & Moulines,
    "Online EM", JRSS B 2009) on the items users go on to pick.

    The weights are kept per bucket of the user's history length, since a user with
    one item and one with twenty trust the personal signals differently.  The
    mixture's probability of an item, as ``log(n · p)`` (0 for a uniform guess), is a
    feature of the model like the signals themselves.
    """

    BUCKETS = np.array([1, 2, 5, 10])  # history lengths where a new bucket starts

    def __init__(self, signals: int, memory: float = 10_000.0) -> None:
        self.keep = 1.0 - 1.0 / memory  # responsibilities decay: the weights follow drift
        self.totals = np.ones((self.BUCKETS.size + 1, signals + 1))

    def bucket(self, history: int) -> int:
        return int(np.searchsorted(self.BUCKETS, history, side="right"))

    def log_probability(self, shares: np.ndarray, bucket: int, evidence: np.ndarray) -> np.ndarray:
        """``log(n · p_mix)`` of items whose signal shares (value / sum over the catalog,
        times the catalog size n) are ``shares`` (signals, items); ``evidence``: which
        signals score some catalog item for this user (the others sit out)."""
        weights = self._weights(bucket, evidence)
        return np.log(weights[0] + weights[1:] @ shares)

    def learn(self, shares: np.ndarray, bucket: int, evidence: np.ndarray) -> None:
        """An item was picked whose shares are ``shares`` (signals,): one EM step."""
        weights = self._weights(bucket, evidence)
        parts = weights * np.concatenate(([1.0], shares))
        total = parts.sum()
        if total > 0:
            self.totals[bucket] = self.keep * self.totals[bucket] + parts / total

    def _weights(self, bucket: int, evidence: np.ndarray) -> np.ndarray:
        """The bucket's weights over the uniform part and the signals with evidence.

        Evidence is a property of the user's catalog-wide distribution, not of the
        items asked about, so a candidate subset, the training rows and the whole
        catalog all get the same mixture."""
        weights = self.totals[bucket].copy()
        weights[1:][~evidence] = 0.0
        return weights / weights.sum()


@dataclass
class SignalEvents:
    """A batch's events as :meth:`SequenceSignals.walk` reads them: event e's user had
    ``seq_rows[seq_ptr[e]:seq_ptr[e+1]]`` (the user's sequence, oldest first) and is
    ``named[e]`` (else anonymous), picked catalog row ``items[e]`` (< 0: none) at
    ``ts[e]``, is learned if ``learn[e]``, has training rows
    ``row_items[row_first[e]:row_first[e+1]]`` (the positive first), is ranked into
    slot ``rank_slot[e]`` (< 0: not ranked) and has hard negatives drawn if ``draw[e]``
    (they are written into ``row_items``, which must be int64)."""

    seq_ptr: np.ndarray
    seq_rows: np.ndarray
    named: np.ndarray
    items: np.ndarray
    learn: np.ndarray
    ts: np.ndarray
    row_first: np.ndarray
    row_items: np.ndarray
    rank_slot: np.ndarray
    draw: np.ndarray

    def between(self, lo: int, hi: int) -> SignalEvents:
        """Events ``lo..hi-1`` (their rows are a view: hard negatives still land here),
        their ranked events in slots from 0 (the slots increase with the events)."""
        seq, first = self.seq_ptr[lo : hi + 1], self.row_first[lo : hi + 1]
        slots = self.rank_slot[lo:hi]
        ranked = slots >= 0
        slots = np.where(ranked, slots - (slots[ranked][0] if ranked.any() else 0), -1)
        return SignalEvents(
            seq - seq[0], self.seq_rows[seq[0] : seq[-1]], self.named[lo:hi],
            self.items[lo:hi], self.learn[lo:hi], self.ts[lo:hi], first - first[0],
            self.row_items[first[0] : first[-1]], slots, self.draw[lo:hi],
        )  # fmt: skip

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (
            np.ascontiguousarray(self.seq_ptr, np.int64),
            np.ascontiguousarray(self.seq_rows, np.int64),
            np.ascontiguousarray(self.named, np.bool_),
            np.ascontiguousarray(self.items, np.int64),
            np.ascontiguousarray(self.learn, np.bool_),
            np.ascontiguousarray(self.ts, np.float64),
            np.ascontiguousarray(self.row_first, np.int64),
            self.row_items,
            np.ascontiguousarray(self.rank_slot, np.int64),
            np.ascontiguousarray(self.draw, np.bool_),
        )


class SequenceSignals:
    """The model part that owns the item-to-item statistics: learns them per event,
    saves and restores them, and turns them into features (where each signal's
    weight lives in the hashed index space, and its values)."""

    STATE_VERSION: ClassVar[int] = 1

    def __init__(
        self,
        space: FeatureSpace,
        catalog: Catalog,
        params: ItemStatsParams,
        trend_half_lives_s: Sequence[float],
    ) -> None:
        self.stats = ItemStats(params)
        self.content = ContentProfile(catalog, params.half_life, space.ns_hash(ITEM_NS))
        self.trends = TrendingCounts(trend_half_lives_s)
        self.names = (*self.stats.names, "content", *self.trends.names, "mixture")
        raw = np.array([space.value_hash(SIGNAL_NS, name) for name in self.names], np.uint32)
        self.index = space.index(raw)
        self._personal = len(self.stats.names) + 1  # the co-occurrence signals and content
        self._base = len(self.names) - 1
        self.mixture = SignalMixture(self._base)
        self._last_shares: tuple[np.ndarray, int, np.ndarray, np.ndarray] | None = None

    def learn_event(self, recent: np.ndarray | None, item: int, ts: float) -> None:
        """One interaction with catalog row ``item`` at stream time ``ts``; ``recent``: the
        user's items before it (None: an anonymous user, who only moves the trends)."""
        picked = np.array([item], np.int64)
        if recent is not None:
            shares, evidence = self._picked_shares(recent, picked)
            self.mixture.learn(shares, self.mixture.bucket(recent.size), evidence)
        self.trends.learn(picked, np.array([ts], np.float64))
        if recent is not None:
            self.stats.learn(recent, item)

    def walk(
        self,
        events: SignalEvents,
        n_catalog: int,
        hard: tuple[int, int, int] = (0, 0, 0),
        blocked: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every event of a batch in stream order, as :meth:`values` of its rows then
        :meth:`learn_event` (:mod:`actors.signal_walk`).  Returns the rows' values (rows,
        signals) and the whole-catalog values of the ranked events (ranked, signals,
        n_catalog), as :meth:`catalog_values` just before each was learned.

        ``hard``: (negatives per positive to draw among the rows the user's kNN and
        Markov signals score above 0, the catalog rows to draw from, a seed); the rows
        ``blocked`` marks (hidden, deleted, expired, ...) are never drawn."""
        if events.row_items.dtype != np.int64:
            raise TypeError("row_items must be int64: hard negatives are written into it")
        rows = events.row_items.size
        signals = np.zeros((rows, len(self.names)))
        ranked = np.zeros((int((events.rank_slot >= 0).sum()), len(self.names), n_catalog))
        if events.items.size == 0:
            return signals, ranked
        top = max(int(events.items.max()), int(events.seq_rows.max(initial=0)), 0)
        self.stats.reserve(top + 1)
        self.trends.reserve(top + 1)
        t, s, c = self.trends, self.stats, self.content
        peaks, totals = (np.array(part) for part in t.summary())
        scalars = np.array([t.rows, t.origin, t.latest], np.float64)
        sizes = np.array([s.n_items, t.rows], np.int64)
        catalog = self.content.catalog
        _walk(
            events.arrays(), n_catalog, s.scoring_arrays(), s.learning_arrays(),
            s.kernel_params(),
            ((catalog.raw, catalog.ns, catalog.x), c.counted(n_catalog), c.half_life,
             int(c.id_namespace)),
            (t.half_lives, t.scaled, peaks, totals),
            (self.mixture.totals, SignalMixture.BUCKETS, self.mixture.keep),
            scalars, sizes, hard, np.zeros(0, np.bool_) if blocked is None else blocked,
            signals, ranked,
        )  # fmt: skip
        s.n_items, t.rows = int(sizes[0]), int(sizes[1])
        t.origin, t.latest = float(scalars[1]), float(scalars[2])
        t.forget_summary()
        self._last_shares = None
        return signals, ranked

    def to_state(self) -> dict[str, Any]:
        return {
            "stats": self.stats.to_state(),
            "trends": self.trends.to_state(),
            "mixture": self.mixture.totals,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.stats.load_state(state["stats"])
        self.trends.load_state(state["trends"])
        self.mixture.totals = np.array(state["mixture"], np.float64)

    def statistics(self) -> dict[str, Any]:
        return {**self.stats.statistics(), "trends": list(self.trends.names)}

    def _raw(self, recent: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every base signal's undivided values of ``items`` (signals, items), and its
        maximum and total over the catalog: one pass over the recent items' neighbours."""
        raw = np.zeros((self._base, items.size))
        peaks, totals = np.zeros(self._base), np.zeros(self._base)
        mine = slice(0, self._personal - 1)
        if recent.size and items.size:
            raw[mine], peaks[mine], totals[mine] = self.stats.raw_scores_and_totals(recent, items)
            c = self._personal - 1  # content: divided by the profile's weight, not a maximum
            raw[c], peaks[c], totals[c] = self.content.raw_scores_and_totals(recent, items)
        trends = slice(self._personal, self._base)
        raw[trends] = self.trends.raw_scores_at(items)
        peaks[trends], totals[trends] = self.trends.summary()
        return raw, peaks, totals

    def _picked_shares(
        self, recent: np.ndarray, picked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The shares of the item a user picked: those :meth:`values` computed for it just
        before (the trainer scores an event's rows, then learns it), else anew."""
        last = self._last_shares
        if last is not None and last[0] is recent and last[1] == int(picked[0]):
            return last[2], last[3]
        raw, _, totals = self._raw(recent, picked)
        return self._shares(raw, totals, self._rows_known(picked))[:, 0], totals > 0

    def _shares(self, raw: np.ndarray, totals: np.ndarray, n: int) -> np.ndarray:
        """(signals, items): n · value / (the signal's total over the n rows)."""
        share = np.zeros_like(raw)
        np.divide(raw * n, totals[:, None], out=share, where=totals[:, None] > 0)
        return share

    def _rows_known(self, items: np.ndarray) -> int:
        """The catalog size n the shares are scaled by (the same for every request)."""
        n = max(len(self.content.catalog), self.stats.n_items, self.trends.rows)
        return max(n, int(items.max(initial=0)) + 1)

    def values(self, recent: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(signals, items): each signal's value for ``items`` after ``recent``; the last
        row is the mixture's ``log(n · p)``.  One compiled call (the one :meth:`walk`
        makes per event), since a request pays the interpreter for every small step."""
        t, s, c = self.trends, self.stats, self.content
        peaks, totals = t.summary()
        catalog = c.catalog
        out, picked, evidence = _values(
            np.ascontiguousarray(recent, np.int64), np.ascontiguousarray(items, np.int64),
            len(catalog), s.scoring_arrays(), s.kernel_params(),
            ((catalog.raw, catalog.ns, catalog.x), c.counted(), c.half_life, int(c.id_namespace)),
            (t.half_lives, t.scaled, peaks, totals),
            (self.mixture.totals, SignalMixture.BUCKETS),
            np.array([s.n_items, t.rows], np.int64),
        )  # fmt: skip
        if items.size:  # what learn_event needs if the first item is the one picked
            self._last_shares = (recent, int(items[0]), picked, evidence)
        return out

    def catalog_values(self, recent: np.ndarray, n_items: int) -> np.ndarray:
        """(signals, n_items): every catalog row's values."""
        return self.values(recent, np.arange(n_items, dtype=np.int64))

    def terms(self, w: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The signals' weights and ``values`` (signals, rows), as ``score_items`` adds
        them to the logit: Σ_s w[signal s] · value_s."""
        return w[self.index], np.ascontiguousarray(values, np.float64)
