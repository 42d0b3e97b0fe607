"""Built-in event simulator with KNOWN true preferences.

Used to demo the daemon and to measure exploration regret and cold start: because the
simulator owns the ground-truth click model, a consumer can compare what it learned (or
ranked) against :meth:`Simulator.true_ctr_matrix` / :meth:`Simulator.best_items`.

Pure and synchronous: numpy only, no asyncio, no I/O, no wall clock. Everything is
deterministic given ``SimulatorConfig.seed`` (a single ``numpy.random.Generator`` drives all
randomness, consumed event by event, so ``next_batch(10)`` twice yields exactly the same
events as ``next_batch(20)`` once).

Emitted records are plain dicts (what the rest of the system ingests):

* an event (an impression with its click / no-click outcome)::

    {"user": "u42", "item": "i7", "ts": 1700000000.5, "label": 1,
     "user_features": {"age": "25-34", "country": "fr"},
     "item_features": {"genre": ["drama", "war"], "price": 12.5},
     "context": {"device": "mobile"}}

* an item upsert (a brand-new item appears; no ``user``, no ``ts``)::

    {"item": "i7", "item_features": {"genre": ["drama", "war"], "price": 12.5}}

Ground truth
------------
Each user ``u`` has a taste vector ``taste[u]`` over the genres (partly explained by the
user's age bucket and country, so user features carry cold-start signal, plus an individual
component), which drifts as a random walk. Each item ``i`` has a genre set ``G(i)`` (1 to
``max_genres_per_item`` genres), a price (observable, uncorrelated with taste) and a hidden
``quality``. The true click probability is::

    affinity(u, i) = sum(taste[u][g] for g in G(i)) / sqrt(len(G(i)))
                   = taste[u] · onehot(G(i)) / sqrt(|G(i)|)
    true_ctr(u, i) = sigmoid(ctr_scale * affinity(u, i) + quality[i] - 2.0)

Which item is shown to the acting user is drawn with some noise: with probability
``EXPLORE_PROB`` uniformly from the current catalog, otherwise from
``softmax(logit(u, i) / CHOICE_TEMPERATURE)`` over the catalog (the user's preference),
where ``logit`` is the argument of the sigmoid above. The label is then a Bernoulli draw
with probability ``true_ctr``, so the stream is a mix of clicks (1) and non-clicks (0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AGE_BUCKETS",
    "CHOICE_TEMPERATURE",
    "COUNTRIES",
    "CTR_BIAS",
    "DEVICES",
    "EXPLORE_PROB",
    "GENRE_NAMES",
    "Simulator",
    "SimulatorConfig",
    "genre_click_stream",
    "sigmoid",
]

AGE_BUCKETS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
COUNTRIES: tuple[str, ...] = ("us", "fr", "de", "gb", "es", "it", "br", "jp", "in")
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
GENRE_NAMES: tuple[str, ...] = (
    "drama",
    "comedy",
    "action",
    "thriller",
    "romance",
    "documentary",
    "horror",
    "scifi",
    "animation",
    "war",
    "crime",
    "fantasy",
)

#: Constant offset in the true-CTR logit: an item with zero affinity and average quality
#: is clicked with probability sigmoid(-2) ≈ 0.12.
CTR_BIAS: float = 2.0
#: Probability that the shown item is drawn uniformly from the catalog (noise).
EXPLORE_PROB: float = 0.3
#: Softmax temperature of the preference-driven item choice (higher = noisier).
CHOICE_TEMPERATURE: float = 2.0
#: Probability that an event happens on the user's preferred device.
DEVICE_LOYALTY: float = 0.8
#: Exponent of the Zipf-like user-activity and genre-popularity distributions.
ZIPF_EXPONENT: float = 0.8

_AGE_P = np.array([0.15, 0.3, 0.22, 0.15, 0.1, 0.08])
_COUNTRY_P = np.array([0.3, 0.12, 0.12, 0.1, 0.08, 0.08, 0.08, 0.06, 0.06])


def sigmoid(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _sigmoid_array(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


def _genre_names(n_genres: int) -> tuple[str, ...]:
    if n_genres <= len(GENRE_NAMES):
        return GENRE_NAMES[:n_genres]
    return GENRE_NAMES + tuple(f"g{j}" for j in range(len(GENRE_NAMES), n_genres))


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return np.asarray(w / w.sum(), dtype=np.float64)


@dataclass
class SimulatorConfig:
    """Configuration of :class:`Simulator`.

    ``impressions_per_event``: if True (default) every shown item becomes an event with
    ``label`` 0 or 1 (explicit impressions with click / no-click). If False only clicks are
    emitted (an implicit-feedback stream: every event has ``label`` 1; non-clicked
    impressions still happen, advance nothing and are simply not reported), and
    ``next_batch(n)`` still returns ``n`` events.
    """

    seed: int = 0
    n_users: int = 1000
    n_items: int = 500
    n_genres: int = 12
    max_genres_per_item: int = 3
    new_item_rate: float = 0.002
    drift: float = 0.01
    impressions_per_event: bool = True
    start_ts: float = 1_700_000_000.0
    events_per_second: float = 100.0
    ctr_scale: float = 3.0

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 1 or self.n_genres < 1:
            raise ValueError("n_users, n_items and n_genres must be >= 1")
        if not 1 <= self.max_genres_per_item <= self.n_genres:
            raise ValueError("max_genres_per_item must be in [1, n_genres]")
        if not 0.0 <= self.new_item_rate <= 1.0:
            raise ValueError("new_item_rate must be in [0, 1]")
        if self.drift < 0.0:
            raise ValueError("drift must be >= 0")
        if not self.events_per_second > 0.0:
            raise ValueError("events_per_second must be > 0")


class Simulator:
    """Synthetic user–item event stream with known ground-truth click probabilities.

    Users are ``"u0" .. f"u{n_users-1}"``; the initial catalog is ``"i0" ..
    f"i{n_items-1}"`` and new items continue the numbering. Item order (columns of
    :meth:`true_ctr_matrix`, order of :meth:`items` / :meth:`item_ids`) is creation order.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        cfg = self.config
        self._rng = np.random.default_rng(cfg.seed)
        rng = self._rng
        self.genres: tuple[str, ...] = _genre_names(cfg.n_genres)
        g = cfg.n_genres

        # --- users -------------------------------------------------------------------
        age_effect = rng.normal(0.0, 0.6, size=(len(AGE_BUCKETS), g))
        country_effect = rng.normal(0.0, 0.4, size=(len(COUNTRIES), g))
        self._user_age = rng.choice(len(AGE_BUCKETS), size=cfg.n_users, p=_AGE_P)
        self._user_country = rng.choice(len(COUNTRIES), size=cfg.n_users, p=_COUNTRY_P)
        self._user_device = rng.integers(0, len(DEVICES), size=cfg.n_users)
        individual = rng.normal(0.0, 0.7, size=(cfg.n_users, g))
        self._taste: np.ndarray = (
            age_effect[self._user_age] + country_effect[self._user_country] + individual
        )
        self._user_ids: list[str] = [f"u{j}" for j in range(cfg.n_users)]
        self._user_index: dict[str, int] = {u: j for j, u in enumerate(self._user_ids)}
        self._user_features: list[dict[str, str]] = [
            {"age": AGE_BUCKETS[a], "country": COUNTRIES[c]}
            for a, c in zip(self._user_age, self._user_country, strict=True)
        ]
        # Zipf-ish activity over a random ranking of the users.
        activity = np.empty(cfg.n_users)
        activity[rng.permutation(cfg.n_users)] = _zipf_weights(cfg.n_users, ZIPF_EXPONENT)
        self._activity_cdf = np.cumsum(activity)
        self._activity_cdf[-1] = 1.0

        # --- items -------------------------------------------------------------------
        self._genre_p = _zipf_weights(g, ZIPF_EXPONENT)[rng.permutation(g)]
        cap = max(16, 2 * cfg.n_items)
        self._genre_mat = np.zeros((cap, g))  # onehot(G(i)) / sqrt(|G(i)|)
        self._quality = np.zeros(cap)
        self._item_ids: list[str] = []
        self._item_index: dict[str, int] = {}
        self._item_features: list[dict[str, Any]] = []
        for _ in range(cfg.n_items):
            self._new_item()

        self._n_events = 0
        self._n_upserts = 0
        self._n_clicks = 0

    # --- construction helpers ------------------------------------------------------------
    def _new_item(self) -> int:
        cfg, rng = self.config, self._rng
        row = len(self._item_ids)
        if row == self._genre_mat.shape[0]:
            self._genre_mat = np.concatenate([self._genre_mat, np.zeros_like(self._genre_mat)])
            self._quality = np.concatenate([self._quality, np.zeros_like(self._quality)])
        k = int(rng.integers(1, cfg.max_genres_per_item + 1))
        gidx = np.sort(rng.choice(cfg.n_genres, size=k, replace=False, p=self._genre_p))
        self._genre_mat[row, gidx] = 1.0 / math.sqrt(k)
        self._quality[row] = rng.normal(0.0, 0.5)
        price = float(round(float(rng.lognormal(2.3, 0.6)), 2))
        item_id = f"i{row}"
        self._item_ids.append(item_id)
        self._item_index[item_id] = row
        self._item_features.append({"genre": [self.genres[j] for j in gidx], "price": price})
        return row

    def _upsert(self, row: int) -> dict[str, Any]:
        feats = self._item_features[row]
        return {
            "item": self._item_ids[row],
            "item_features": {"genre": list(feats["genre"]), "price": feats["price"]},
        }

    def _user_row(self, user: int | str) -> int:
        if isinstance(user, str):
            return self._user_index[user]
        if not 0 <= user < self.config.n_users:
            raise IndexError(f"user row {user} out of range")
        return int(user)

    def _item_row(self, item: int | str) -> int:
        if isinstance(item, str):
            return self._item_index[item]
        if not 0 <= item < len(self._item_ids):
            raise IndexError(f"item row {item} out of range")
        return int(item)

    def _logits(self, user_rows: np.ndarray | int) -> np.ndarray:
        """True-CTR logits of the given user row(s) against every current item."""
        n = len(self._item_ids)
        aff = self._taste[user_rows] @ self._genre_mat[:n].T
        return np.asarray(
            self.config.ctr_scale * aff + self._quality[:n] - CTR_BIAS, dtype=np.float64
        )

    # --- ground truth --------------------------------------------------------------------
    def true_ctr(self, user_row: int | str, item_row: int | str) -> float:
        """True click probability of a user for an item (rows or ids), at current taste.

        ``sigmoid(ctr_scale * taste[u]·onehot(G(i))/sqrt(|G(i)|) + quality[i] - 2.0)``.
        """
        u, i = self._user_row(user_row), self._item_row(item_row)
        aff = float(self._taste[u] @ self._genre_mat[i])
        return sigmoid(self.config.ctr_scale * aff + float(self._quality[i]) - CTR_BIAS)

    def affinity(self, user: int | str, item: int | str) -> float:
        """``taste[u]·onehot(G(i))/sqrt(|G(i)|)`` — the user–genre affinity of a pair."""
        return float(self._taste[self._user_row(user)] @ self._genre_mat[self._item_row(item)])

    def true_ctr_matrix(self, users: Sequence[str]) -> np.ndarray:
        """True CTRs, shape ``(len(users), n_current_items)``; columns in :meth:`item_ids` order."""
        rows = np.array([self._user_row(u) for u in users], dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, len(self._item_ids)))
        return _sigmoid_array(self._logits(rows))

    def best_items(self, user: str, k: int) -> list[str]:
        """The ``k`` current items with the highest true CTR for ``user``, best first.

        Ties are broken by item creation order (stable sort).
        """
        if k <= 0:
            return []
        ctr = self.true_ctr_matrix([user])[0]
        order = np.argsort(-ctr, kind="stable")[:k]
        return [self._item_ids[j] for j in order]

    def user_taste(self, user: int | str) -> np.ndarray:
        """A copy of the user's current (drifting) taste vector over :attr:`genres`."""
        return np.array(self._taste[self._user_row(user)], copy=True)

    def item_quality(self, item: int | str) -> float:
        """The hidden quality term of an item."""
        return float(self._quality[self._item_row(item)])

    # --- catalog views -------------------------------------------------------------------
    def user_ids(self) -> list[str]:
        return list(self._user_ids)

    def item_ids(self) -> list[str]:
        return list(self._item_ids)

    def user_features(self, user: int | str) -> dict[str, str]:
        return dict(self._user_features[self._user_row(user)])

    def items(self) -> list[dict[str, Any]]:
        """Upsert dicts for the whole current catalog (so a consumer can preload it)."""
        return [self._upsert(j) for j in range(len(self._item_ids))]

    def statistics(self) -> dict[str, int]:
        """Counters: ``events`` emitted, new-item ``upserts`` emitted, ``users``, ``items``
        (current catalog size) and ``clicks`` (events with label 1)."""
        return {
            "events": self._n_events,
            "upserts": self._n_upserts,
            "users": self.config.n_users,
            "items": len(self._item_ids),
            "clicks": self._n_clicks,
        }

    # --- stream --------------------------------------------------------------------------
    def next_batch(self, n: int) -> list[dict[str, Any]]:
        """Generate ``n`` events, preceded in place by any new-item upserts that occur.

        Per impression: maybe (prob ``new_item_rate``) create a new item and emit its upsert;
        pick a user (Zipf-ish activity); pick an item by the user's preference with noise;
        draw the label ~ Bernoulli(true_ctr); advance the simulated clock by
        ``1 / events_per_second`` per emitted event; random-walk the user's taste by
        ``drift``.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        cfg, rng = self.config, self._rng
        out: list[dict[str, Any]] = []
        emitted = 0
        while emitted < n:
            if cfg.new_item_rate > 0.0 and rng.random() < cfg.new_item_rate:
                out.append(self._upsert(self._new_item()))
                self._n_upserts += 1
            u = int(np.searchsorted(self._activity_cdf, rng.random(), side="right"))
            u = min(u, cfg.n_users - 1)
            logits = self._logits(u)
            n_items = logits.shape[0]
            if rng.random() < EXPLORE_PROB:
                i = int(rng.integers(0, n_items))
            else:
                i = int(np.argmax(logits / CHOICE_TEMPERATURE + rng.gumbel(size=n_items)))
            label = int(rng.random() < sigmoid(float(logits[i])))
            if rng.random() < DEVICE_LOYALTY:
                device = DEVICES[self._user_device[u]]
            else:
                device = DEVICES[int(rng.integers(0, len(DEVICES)))]
            if cfg.drift > 0.0:
                self._taste[u] += cfg.drift * rng.standard_normal(cfg.n_genres)
            if label == 0 and not cfg.impressions_per_event:
                continue
            ts = cfg.start_ts + self._n_events / cfg.events_per_second
            feats = self._item_features[i]
            out.append(
                {
                    "user": self._user_ids[u],
                    "item": self._item_ids[i],
                    "ts": float(ts),
                    "label": label,
                    "user_features": dict(self._user_features[u]),
                    "item_features": {"genre": list(feats["genre"]), "price": feats["price"]},
                    "context": {"device": device},
                }
            )
            self._n_events += 1
            self._n_clicks += label
            emitted += 1
        return out


def genre_click_stream(
    user: str,
    genre: str,
    item_ids: Sequence[str],
    n: int,
    start_ts: float,
    *,
    interval: float = 1.0,
    price: float = 10.0,
    user_features: Mapping[str, str] | None = None,
    device: str = "mobile",
) -> list[dict[str, Any]]:
    """``n`` label-1 events of ``user`` on items of a single ``genre`` (freshness tests).

    Items are taken round-robin from ``item_ids``; each event's ``item_features`` is
    ``{"genre": [genre], "price": price}``. Timestamps are ``start_ts + k * interval``.
    ``user_features`` defaults to ``{}`` (unknown demographics).
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if n > 0 and not item_ids:
        raise ValueError("item_ids must not be empty")
    if not interval > 0.0:
        raise ValueError("interval must be > 0")
    ufeats = dict(user_features) if user_features is not None else {}
    return [
        {
            "user": user,
            "item": item_ids[k % len(item_ids)],
            "ts": float(start_ts + k * interval),
            "label": 1,
            "user_features": dict(ufeats),
            "item_features": {"genre": [genre], "price": float(price)},
            "context": {"device": device},
        }
        for k in range(n)
    ]
