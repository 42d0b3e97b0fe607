"""Plain stochastic gradient descent for logistic regression over hashed sparse features.

Pure numeric kernels, no asyncio: the learner actors only call them.

The update of the reference design, w <- w - eta_t * grad Q_i(w), per coordinate:
a gradient g on coordinate i (with optional L2, applied to the coordinates an event
touches, as sparse SGD does) takes the step

    g'   = g + l2 * w_i
    w_i -= rate_i * g'

with one of three learning rates:

* ``constant``: ``rate_i = eta``;
* ``invsqrt``: ``rate_i = eta / sqrt(t_i)``, ``t_i`` the updates coordinate i has
  taken, this one included (a per-coordinate clock, so shards need no global count);
* ``adagrad``: ``rate_i = eta / sqrt(n_i)``, ``n_i`` the sum of the squared g' the
  coordinate has seen, this one included (Duchi, Hazan & Singer 2011, diagonal).

The state is the weights ``w`` themselves and one accumulator ``n`` per coordinate
(``t_i`` or the AdaGrad sum).  As with FTRL, an update touches only its own
coordinate, so the state splits by coordinate across shards and the result does not
depend on how many there are; a trainer sums a batch's gradients per coordinate and
each touched coordinate takes one step, so a batch of one event is exactly the
per-event algorithm (a coordinate hit twice in one event takes one step with the
summed x_i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from actors.ftrl import MAX_LOGIT

RATES = ("constant", "invsqrt", "adagrad")
_CONSTANT, _INVSQRT, _ADAGRAD = range(3)


@dataclass(frozen=True)
class SGDParams:
    """The learning-rate schedule, its scale ``eta`` and the L2 strength."""

    rate: str = "adagrad"
    eta: float = 0.05
    l2: float = 0.0

    def __post_init__(self) -> None:
        if self.rate not in RATES:
            raise ValueError(f"sgd rate must be one of {', '.join(RATES)}, got {self.rate!r}")
        if not 0 < self.eta < math.inf:
            raise ValueError(f"sgd eta must be finite and > 0, got {self.eta}")
        if not 0 <= self.l2 < math.inf:
            raise ValueError(f"sgd l2 must be finite and >= 0, got {self.l2}")

    @property
    def rate_code(self) -> int:
        return RATES.index(self.rate)


@njit(cache=True, nogil=True, inline="always")
def _step(w: np.ndarray, n: np.ndarray, i: int, g: float, rate: int, eta: float, l2: float) -> None:
    g = g + l2 * w[i]
    if rate == _ADAGRAD:
        n[i] += g * g
        if n[i] > 0.0:
            w[i] -= eta / math.sqrt(n[i]) * g
    elif rate == _INVSQRT:
        n[i] += 1.0
        w[i] -= eta / math.sqrt(n[i]) * g
    else:
        n[i] += 1.0
        w[i] -= eta * g


@njit(cache=True, nogil=True)
def _apply_sgd(
    w: np.ndarray, n: np.ndarray, idx: np.ndarray, grads: np.ndarray, rate: int, eta: float,
    l2: float,
) -> None:  # fmt: skip
    for k in range(idx.shape[0]):
        _step(w, n, idx[k], grads[k], rate, eta, l2)


@njit(cache=True, nogil=True)
def _fit_sequential(
    w: np.ndarray,
    n: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    sample_weights: np.ndarray,
    slot: np.ndarray,
    rate: int,
    eta: float,
    l2: float,
) -> np.ndarray:
    rows = indptr.shape[0] - 1
    probs = np.empty(rows, np.float64)
    touched = np.empty(indices.shape[0], np.int64)
    summed = np.empty(indices.shape[0], np.float64)
    for r in range(rows):
        lo, hi = indptr[r], indptr[r + 1]
        s = 0.0
        for k in range(lo, hi):
            s += w[indices[k]] * values[k]
        s = min(max(s, -MAX_LOGIT), MAX_LOGIT)
        p = 1.0 / (1.0 + math.exp(-s))
        probs[r] = p
        err = (p - labels[r]) * sample_weights[r]
        m = 0
        for k in range(lo, hi):  # one step per coordinate, with the event's summed x_i
            i = indices[k]
            j = slot[i]
            if j < 0:
                slot[i] = m
                touched[m] = i
                summed[m] = err * values[k]
                m += 1
            else:
                summed[j] += err * values[k]
        for k in range(m):
            slot[touched[k]] = -1
            _step(w, n, touched[k], summed[k], rate, eta, l2)
    return probs


def apply_sgd(
    w: np.ndarray, n: np.ndarray, idx: np.ndarray, grads: np.ndarray, p: SGDParams
) -> None:
    """Apply (coordinate, gradient) pairs in order, in place; ``w`` and ``n`` may be strided
    views (a shard's slice of a shared array)."""
    _apply_sgd(
        w,
        n,
        np.ascontiguousarray(idx, np.int64),
        np.ascontiguousarray(grads, np.float64),
        p.rate_code,
        p.eta,
        p.l2,
    )


def fit_sequential(
    w: np.ndarray,
    n: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    sample_weights: np.ndarray,
    p: SGDParams,
) -> np.ndarray:
    """Test-then-train one event at a time; returns each event's prediction before it was
    learned."""
    slot = np.full(w.shape[0], -1, np.int32)
    return _fit_sequential(
        w,
        n,
        indptr,
        np.ascontiguousarray(indices, np.int64),
        np.ascontiguousarray(values, np.float64),
        np.ascontiguousarray(labels, np.float64),
        np.ascontiguousarray(sample_weights, np.float64),
        slot,
        p.rate_code,
        p.eta,
        p.l2,
    )
