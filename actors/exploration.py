"""Exploration for cold start: Thompson sampling from FTRL's own state, or ε-greedy.

Pure numeric code, no asyncio: the ranker only calls it.

Posterior.  FTRL-Proximal's weight is ``w_i = -(z_i - sign(z_i) l1) / p_i`` with

    p_i = (beta + sqrt(n_i)) / alpha + l2

the inverse of coordinate i's learning rate, which grows with the sum of squared
gradients ``n_i`` the coordinate has seen.  Read as the precision of a diagonal
Gaussian (Laplace) approximation, ``w_i ~ N(w_i, scale^2 / p_i)``: the uncertainty
estimate McMahan et al. 2013 (§6, "confidence estimates") derive from the same
per-coordinate counts.  A coordinate never updated (``n_i = 0``, a new item's id)
has the lowest precision, ``beta / alpha + l2``, and so the largest variance.
(With ``l1 > 0`` a weight clipped to 0 is not Gaussian; the approximation ignores it.)

The score of item row r for a user is ``w · x_r``, so its variance under that
posterior is ``sum_i x_ri^2 scale^2 / p_i`` over the row's features.  The user-side
features (bias, user id, profile, context) are the same for every item and shift
every sample by the same draw, so they cannot change a ranking: they are left out.
Thompson sampling (Chapelle & Li 2011) ranks by one draw per item from
``N(logit_r, var_r)`` instead of by ``logit_r``.  (Drawing the item scores
independently ignores that items sharing a feature share its weight; drawing the
weight vector once per request instead measured no better in the simulator,
bench/README.md "Exploration".)

ε-greedy replaces each of the k ranked slots, with probability ε, by an item drawn
uniformly from the allowed candidates not already shown.

Every draw comes from one ``numpy.random.Generator``, so a policy built from a seed
answers the same sequence of requests with the same rankings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from numba import njit

from actors.features import BaseFeatures, Catalog, FeatureSpace, cross_pairs
from actors.ftrl import FTRLParams
from actors.murmur import fmix32_scalar as _fmix
from runtime.errors import BadInput

MODES = ("off", "thompson", "epsilon")
# draws with a std a million times the posterior's are noise already, and scale² × variance
# overflows a float from about 1e154 on
MAX_SCALE = 1e6


class ExplorationError(BadInput, ValueError):
    """An exploration setting that cannot be used (unknown mode, bad scale or ε)."""


class ExplorationUnavailable(ExplorationError):
    """Thompson sampling requested from a ranker that does not hold the learners' ``n``."""


@dataclass(frozen=True)
class WeightPosterior:
    """The per-coordinate sums of squared gradients ``n`` (shared with the learners) and the
    FTRL settings that turn them into precisions."""

    n: np.ndarray
    params: FTRLParams

    def precision(self, idx: np.ndarray) -> np.ndarray:
        p = self.params
        return np.asarray((p.beta + np.sqrt(self.n[idx])) / p.alpha + p.l2, np.float64)


@njit(cache=True, nogil=True, inline="always")
def _inverse_precision(ni: float, alpha: float, beta: float, l2: float) -> float:
    return 1.0 / ((beta + math.sqrt(ni)) / alpha + l2)


@njit(cache=True, nogil=True)
def _variance_rows(
    n: np.ndarray,
    alpha: float,
    beta: float,
    l2: float,
    mask: int,
    rows: np.ndarray,
    ins: np.ndarray,
    iraw: np.ndarray,
    ix: np.ndarray,
    pair_ns: np.ndarray,
    pair_pre: np.ndarray,
    pair_x: np.ndarray,
) -> np.ndarray:
    """Per catalog row: sum of x^2 / precision over the item-side features and the crosses,
    enumerated exactly as ``features._score_rows`` enumerates them for the score."""
    out = np.empty(rows.shape[0], np.float64)
    m = np.uint64(mask)
    for k in range(rows.shape[0]):
        r = rows[k]
        s = 0.0
        for c in range(ix.shape[1]):
            x = ix[r, c]
            if x == 0.0:
                continue
            h = np.uint64(iraw[r, c])
            s += x * x * _inverse_precision(n[np.int64(h & m)], alpha, beta, l2)
            ns = ins[r, c]
            for p in range(pair_ns.shape[0]):
                if pair_ns[p] == ns:
                    xc = x * pair_x[p]
                    i = np.int64(_fmix(pair_pre[p] ^ h) & m)
                    s += xc * xc * _inverse_precision(n[i], alpha, beta, l2)
        out[k] = s
    return out


def _require_posterior(posterior: WeightPosterior | None) -> WeightPosterior:
    if posterior is None:
        raise ExplorationUnavailable(
            "thompson exploration needs FTRL's per-coordinate state (n), which this ranker "
            "does not hold (a cluster ranker, or optimizer.kind = sgd); use explore=epsilon or off"
        )
    return posterior


def score_variances(
    space: FeatureSpace,
    user: BaseFeatures,
    catalog: Catalog,
    posterior: WeightPosterior | None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Variance (at scale 1) of the item-dependent part of each catalog row's logit for one
    user context (a single-row BaseFeatures), in the order of ``rows`` (all by default)."""
    post = _require_posterior(posterior)
    p = post.params
    if rows is None:
        rows = np.arange(len(catalog))
    return _variance_rows(
        post.n,
        p.alpha,
        p.beta,
        p.l2,
        space.mask,
        np.ascontiguousarray(rows, np.int64),
        catalog.ns,
        catalog.raw,
        catalog.x,
        *cross_pairs(space, user),
    )


@dataclass(frozen=True)
class ScoreUncertainty:
    """What a ranking request knows to draw its scores from the posterior (computed lazily,
    so only a Thompson request pays for it)."""

    space: FeatureSpace
    user: BaseFeatures
    catalog: Catalog
    posterior: WeightPosterior | None
    rows: np.ndarray | None = None

    def variances(self) -> np.ndarray:
        return score_variances(self.space, self.user, self.catalog, self.posterior, self.rows)


def thompson(logits: np.ndarray, variances: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One independent draw per item from N(logit, variance)."""
    return logits + np.sqrt(variances) * rng.standard_normal(logits.shape[0])


def epsilon_greedy(
    ranking: np.ndarray, epsilon: float, rng: np.random.Generator, candidates: np.ndarray
) -> np.ndarray:
    """``ranking`` with each slot replaced, with probability ε, by a uniformly drawn candidate
    that is not already in the list (the slot keeps its item when none is left)."""
    out = np.array(ranking, np.int64, copy=True)
    if epsilon <= 0.0 or out.size == 0:
        return out
    slots = np.flatnonzero(rng.random(out.size) < epsilon)
    if slots.size == 0:
        return out
    taken = set(out.tolist())
    free = candidates.size - int(np.isin(out, candidates).sum())
    for slot in slots:
        if free == 0:
            break
        pick = _draw_untaken(candidates, taken, free, rng)
        out[slot] = pick
        taken.add(pick)
        free -= 1
    return out


def _draw_untaken(
    candidates: np.ndarray, taken: set[int], free: int, rng: np.random.Generator
) -> int:
    """A uniform draw from the candidates not taken: by rejection while most are free (no
    pass over the catalog), else from the explicit remainder."""
    if free * 2 > candidates.size:
        while True:
            pick = int(candidates[rng.integers(candidates.size)])
            if pick not in taken:
                return pick
    pool = candidates[~np.isin(candidates, np.fromiter(taken, np.int64, len(taken)))]
    return int(pool[rng.integers(pool.size)])


def _check(mode: str, scale: float, epsilon: float) -> None:
    if mode not in MODES:
        raise ExplorationError(f"explore must be one of {', '.join(MODES)}, got {mode!r}")
    if not (math.isfinite(scale) and 0 < scale <= MAX_SCALE):
        raise ExplorationError(
            f"exploration scale must be a finite number > 0 and at most {MAX_SCALE:g}, "
            f"got {scale!r}"
        )
    if not 0.0 <= epsilon <= 1.0:
        raise ExplorationError(f"exploration epsilon must be in [0, 1], got {epsilon!r}")


@dataclass(frozen=True)
class ExplorationPolicy:
    """How a ranking explores: ``off``, ``thompson`` (posterior draws with std × ``scale``)
    or ``epsilon`` (ε-greedy).  Copies made by :meth:`override` share the generator."""

    mode: str = "off"
    scale: float = 1.0
    epsilon: float = 0.05
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def __post_init__(self) -> None:
        _check(self.mode, self.scale, self.epsilon)

    @classmethod
    def from_settings(
        cls, mode: str = "off", scale: float = 1.0, epsilon: float = 0.05, seed: int = 0
    ) -> ExplorationPolicy:
        return cls(mode, scale, epsilon, np.random.default_rng(seed))

    def override(
        self, mode: str | None = None, scale: float | None = None, epsilon: float | None = None
    ) -> ExplorationPolicy:
        """This policy with some settings replaced (a request's own), drawing from the same
        generator; a setting that does not apply to the resulting mode is an error."""
        mode = self.mode if mode is None else mode
        if scale is not None and mode != "thompson":
            raise ExplorationError(f"'scale' applies to explore=thompson only (explore={mode})")
        if epsilon is not None and mode != "epsilon":
            raise ExplorationError(f"'epsilon' applies to explore=epsilon only (explore={mode})")
        return replace(
            self,
            mode=mode,
            scale=self.scale if scale is None else scale,
            epsilon=self.epsilon if epsilon is None else epsilon,
        )

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def perturb(self, logits: np.ndarray, uncertainty: ScoreUncertainty) -> np.ndarray:
        """The scores to rank by: a posterior draw under Thompson, else the logits themselves."""
        if self.mode != "thompson":
            return logits
        return thompson(logits, self.scale**2 * uncertainty.variances(), self.rng)

    def substitute(self, ranking: np.ndarray, excluded: np.ndarray) -> np.ndarray:
        """The ranking to show: ε-greedy's replacements drawn from the positions not excluded."""
        if self.mode != "epsilon":
            return ranking
        return epsilon_greedy(ranking, self.epsilon, self.rng, np.flatnonzero(~excluded))
