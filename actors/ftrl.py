"""FTRL-Proximal for logistic regression over hashed sparse features.

Pure numeric kernels, no asyncio: the learner and trainer actors only wrap them.

Reference: H. B. McMahan et al., "Ad Click Prediction: a View from the Trenches",
KDD 2013, Algorithm 1 (per-coordinate FTRL-Proximal with L1 and L2).  Each
coordinate i keeps two sums, ``z_i`` and ``n_i``; its weight is a closed form
of them:

    w_i = 0                                                   if |z_i| <= l1
    w_i = -(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)   otherwise

and a gradient g on coordinate i updates

    sigma = (sqrt(n_i + g^2) - sqrt(n_i)) / alpha
    z_i  += g - sigma * w_i
    n_i  += g^2

Because the update of a coordinate touches only that coordinate, the state can be
split by coordinate across shards (a parameter server): each shard applies its own
coordinates' gradients in stream order and the result does not depend on how many
shards there are.

Batches, exactly: a trainer that holds the FTRL state (one process) walks the batch
event by event on a copy of the coordinates it touches
(:meth:`GradientAggregator.sequential_increments`), so each event is predicted with
weights that include every earlier one, and sends the shards the increments of z and
n, which they add (:func:`add_increments`).  The batch size changes only the speed.

Batches, summed: a trainer with only a replica of the weights (a cluster trainer, the
factor terms) predicts a whole batch with the weights as they were before
the batch, sums the batch's gradients per coordinate (:func:`aggregate_gradients`)
and applies one FTRL step per touched coordinate.  Summing matters: applying a
batch's stale per-event gradients one after another lets a frequent coordinate
(the bias) take hundreds of steps on one stale prediction and diverge, while one
summed step is bounded by alpha, as in mini-batch AdaGrad.  With a batch of one
event this is exactly Algorithm 1 (a coordinate hit twice in one event gets one
update with the summed x_i, as in the paper); ``fit_sequential`` is that
per-event loop, the single-process reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

MAX_LOGIT = 35.0


@dataclass(frozen=True)
class FTRLParams:
    """Learning-rate and regularisation settings (McMahan et al. 2013, §3.1)."""

    alpha: float = 0.1
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"ftrl alpha must be > 0, got {self.alpha}")
        for name in ("beta", "l1", "l2"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"ftrl {name} must be >= 0, got {value}")


@njit(cache=True, nogil=True, inline="always")
def _weight(z: float, n: float, alpha: float, beta: float, l1: float, l2: float) -> float:
    if abs(z) <= l1:
        return 0.0
    sign = 1.0 if z > 0 else -1.0
    return -(z - sign * l1) / ((beta + math.sqrt(n)) / alpha + l2)


@njit(cache=True, nogil=True)
def _weights_at(
    z: np.ndarray, n: np.ndarray, idx: np.ndarray, alpha: float, beta: float, l1: float, l2: float
) -> np.ndarray:
    out = np.empty(idx.shape[0], dtype=np.float64)
    for k in range(idx.shape[0]):
        i = idx[k]
        out[k] = _weight(z[i], n[i], alpha, beta, l1, l2)
    return out


@njit(cache=True, nogil=True, inline="always")
def _row_dot(
    z: np.ndarray, n: np.ndarray, indices: np.ndarray, values: np.ndarray, lo: int, hi: int,
    alpha: float, beta: float, l1: float, l2: float,
) -> float:  # fmt: skip
    s = 0.0
    for k in range(lo, hi):
        i = indices[k]
        s += _weight(z[i], n[i], alpha, beta, l1, l2) * values[k]
    return s


@njit(cache=True, nogil=True, inline="always")
def _update(
    z: np.ndarray, n: np.ndarray, i: int, g: float, alpha: float, beta: float, l1: float, l2: float
) -> None:
    ni = n[i]
    w = _weight(z[i], ni, alpha, beta, l1, l2)
    sigma = (math.sqrt(ni + g * g) - math.sqrt(ni)) / alpha
    z[i] += g - sigma * w
    n[i] = ni + g * g


@njit(cache=True, nogil=True)
def _predict_logits(
    z: np.ndarray,
    n: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    alpha: float,
    beta: float,
    l1: float,
    l2: float,
) -> np.ndarray:
    rows = indptr.shape[0] - 1
    out = np.empty(rows, dtype=np.float64)
    for r in range(rows):
        out[r] = _row_dot(z, n, indices, values, indptr[r], indptr[r + 1], alpha, beta, l1, l2)
    return out


@njit(cache=True, nogil=True)
def _apply_gradients(
    z: np.ndarray,
    n: np.ndarray,
    idx: np.ndarray,
    grads: np.ndarray,
    alpha: float,
    beta: float,
    l1: float,
    l2: float,
) -> None:
    for k in range(idx.shape[0]):
        _update(z, n, idx[k], grads[k], alpha, beta, l1, l2)


@njit(cache=True, nogil=True)
def _apply_gradients_replica(
    z: np.ndarray,
    n: np.ndarray,
    w: np.ndarray,
    idx: np.ndarray,
    grads: np.ndarray,
    alpha: float,
    beta: float,
    l1: float,
    l2: float,
) -> None:
    for k in range(idx.shape[0]):
        i = idx[k]
        _update(z, n, i, grads[k], alpha, beta, l1, l2)
        w[i] = _weight(z[i], n[i], alpha, beta, l1, l2)


@njit(cache=True, nogil=True)
def _add_increments(
    z: np.ndarray,
    n: np.ndarray,
    w: np.ndarray,
    idx: np.ndarray,
    dz: np.ndarray,
    dn: np.ndarray,
    alpha: float,
    beta: float,
    l1: float,
    l2: float,
) -> int:
    became_nonzero = 0
    for k in range(idx.shape[0]):
        i = idx[k]
        was_nonzero = w[i] != 0.0
        z[i] += dz[k]
        n[i] += dn[k]
        w[i] = _weight(z[i], n[i], alpha, beta, l1, l2)
        became_nonzero += int(w[i] != 0.0) - int(was_nonzero)
    return became_nonzero


@njit(cache=True, nogil=True)
def _dot_rows(
    w: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray
) -> np.ndarray:
    rows = indptr.shape[0] - 1
    out = np.empty(rows, dtype=np.float64)
    for r in range(rows):
        s = 0.0
        for k in range(indptr[r], indptr[r + 1]):
            s += w[indices[k]] * values[k]
        out[r] = s
    return out


@njit(cache=True, nogil=True)
def _logistic_step(
    w: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    sample_weights: np.ndarray,
    slot: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = indptr.shape[0] - 1
    probs = np.empty(rows, np.float64)
    out_idx = np.empty(indices.shape[0], np.int64)
    out_g = np.empty(indices.shape[0], np.float64)
    m = 0
    for r in range(rows):
        lo, hi = indptr[r], indptr[r + 1]
        s = 0.0
        for k in range(lo, hi):
            s += w[indices[k]] * values[k]
        s = min(max(s, -MAX_LOGIT), MAX_LOGIT)
        p = 1.0 / (1.0 + math.exp(-s))
        probs[r] = p
        err = (p - labels[r]) * sample_weights[r]
        for k in range(lo, hi):
            i = indices[k]
            j = slot[i]
            if j < 0:
                slot[i] = m
                out_idx[m] = i
                out_g[m] = err * values[k]
                m += 1
            else:
                out_g[j] += err * values[k]
    for k in range(m):
        slot[out_idx[k]] = -1
    return probs, out_idx[:m], out_g[:m]


@njit(cache=True, nogil=True)
def _fit_sequential(
    z: np.ndarray,
    n: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    sample_weights: np.ndarray,
    alpha: float,
    beta: float,
    l1: float,
    l2: float,
) -> np.ndarray:
    rows = indptr.shape[0] - 1
    probs = np.empty(rows, dtype=np.float64)
    for r in range(rows):
        lo, hi = indptr[r], indptr[r + 1]
        s = _row_dot(z, n, indices, values, lo, hi, alpha, beta, l1, l2)
        s = min(max(s, -MAX_LOGIT), MAX_LOGIT)
        p = 1.0 / (1.0 + math.exp(-s))
        probs[r] = p
        err = (p - labels[r]) * sample_weights[r]
        for k in range(lo, hi):
            _update(z, n, indices[k], err * values[k], alpha, beta, l1, l2)
    return probs


@njit(cache=True, nogil=True)
def _sequential_increments(
    z: np.ndarray,
    n: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    sample_weights: np.ndarray,
    slot: np.ndarray,
    alpha: float,
    beta: float,
    l1: float,
    l2: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    touched, local = _gather(indices, slot)
    z_local = np.empty(touched.shape[0], np.float64)
    n_local = np.empty(touched.shape[0], np.float64)
    for k in range(touched.shape[0]):
        z_local[k] = z[touched[k]]
        n_local[k] = n[touched[k]]
    z_start = z_local.copy()
    n_start = n_local.copy()
    probs = _fit_sequential(
        z_local, n_local, indptr, local, values, labels, sample_weights, alpha, beta, l1, l2
    )
    return probs, touched, z_local - z_start, n_local - n_start


@njit(cache=True, nogil=True)
def _gather(indices: np.ndarray, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``indices`` in first-seen order, and each entry's position among
    them (``slot``: one scratch entry per coordinate, -1, left as it was found)."""
    touched = np.empty(indices.shape[0], np.int64)
    local = np.empty(indices.shape[0], np.int64)
    m = 0
    for k in range(indices.shape[0]):
        i = indices[k]
        if slot[i] < 0:
            slot[i] = m
            touched[m] = i
            m += 1
        local[k] = slot[i]
    for k in range(m):
        slot[touched[k]] = -1
    return touched[:m], local


@njit(cache=True, nogil=True)
def _aggregate(
    idx: np.ndarray, grads: np.ndarray, slot: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    out_idx = np.empty(idx.shape[0], np.int64)
    out_g = np.empty(idx.shape[0], np.float64)
    m = 0
    for k in range(idx.shape[0]):
        i = idx[k]
        s = slot[i]
        if s < 0:
            slot[i] = m
            out_idx[m] = i
            out_g[m] = grads[k]
            m += 1
        else:
            out_g[s] += grads[k]
    for k in range(m):
        slot[out_idx[k]] = -1
    return out_idx[:m], out_g[:m]


def _contiguous(
    indices: np.ndarray, values: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A CSR batch's columns as the kernels take them."""
    return (
        np.ascontiguousarray(indices, np.int64),
        np.ascontiguousarray(values, np.float64),
        np.ascontiguousarray(labels, np.float64),
        np.ascontiguousarray(sample_weights, np.float64),
    )


class GradientAggregator:
    """Sums gradients per coordinate in O(entries), coordinates in first-seen (stream) order.

    Keeps one int32 scratch slot per coordinate (reset after each call) instead of sorting.
    """

    def __init__(self, size: int) -> None:
        self._slot = np.full(size, -1, np.int32)

    @property
    def scratch(self) -> np.ndarray:
        """One -1 per coordinate, for kernels that map coordinates to local slots."""
        return self._slot

    def __call__(self, idx: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _aggregate(
            np.ascontiguousarray(idx, np.int64), np.ascontiguousarray(grads, np.float64), self._slot
        )

    def logistic_step(
        self,
        w: np.ndarray,
        indptr: np.ndarray,
        indices: np.ndarray,
        values: np.ndarray,
        labels: np.ndarray,
        sample_weights: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pass over a CSR batch: probabilities with the weights ``w`` and the logistic-loss
        gradients summed per coordinate; equals ``sigmoid(dot_rows)``, ``row_gradients`` and
        ``__call__`` in sequence, without their temporaries."""
        columns = _contiguous(indices, values, labels, sample_weights)
        return _logistic_step(w, indptr, *columns, self._slot)

    def sequential_increments(
        self,
        z: np.ndarray,
        n: np.ndarray,
        indptr: np.ndarray,
        indices: np.ndarray,
        values: np.ndarray,
        labels: np.ndarray,
        sample_weights: np.ndarray,
        p: FTRLParams,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Algorithm 1 one event at a time over a CSR batch, on a copy of the coordinates
        it touches: each event is predicted with weights that include every earlier event
        of the batch.  Returns the predictions, the touched coordinates (first-seen order)
        and their increments of z and n; added to the owners' state (:func:`add_increments`)
        they give the sequential result at any batch size and any number of shards (to
        rounding: ``z + (z' - z)``).  ``z`` and ``n`` are not changed."""
        columns = _contiguous(indices, values, labels, sample_weights)
        return _sequential_increments(
            z, n, indptr, *columns, self._slot, p.alpha, p.beta, p.l1, p.l2
        )


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function with the logits clipped so exp() never overflows."""
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -MAX_LOGIT, MAX_LOGIT)))


def weights_at(z: np.ndarray, n: np.ndarray, idx: np.ndarray, p: FTRLParams) -> np.ndarray:
    """The FTRL weights of the coordinates ``idx`` (computed lazily from z and n)."""
    return _weights_at(z, n, np.ascontiguousarray(idx, np.int64), p.alpha, p.beta, p.l1, p.l2)


def predict_logits(
    z: np.ndarray,
    n: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    p: FTRLParams,
) -> np.ndarray:
    """Logits w·x for each row of a CSR batch (unclipped)."""
    return _predict_logits(z, n, indptr, indices, values, p.alpha, p.beta, p.l1, p.l2)


def apply_gradients(
    z: np.ndarray,
    n: np.ndarray,
    idx: np.ndarray,
    grads: np.ndarray,
    p: FTRLParams,
    w: np.ndarray | None = None,
) -> None:
    """Apply (coordinate, gradient) pairs in order, in place (Algorithm 1's update).

    ``z`` and ``n`` may be strided views (a shard's slice of a shared array).  With
    ``w``, the weight replica of every updated coordinate is kept equal to its closed
    form, so readers gather weights instead of recomputing them from z and n.
    """
    if w is None:
        _apply_gradients(z, n, idx, grads, p.alpha, p.beta, p.l1, p.l2)
    else:
        _apply_gradients_replica(z, n, w, idx, grads, p.alpha, p.beta, p.l1, p.l2)


def add_increments(
    z: np.ndarray,
    n: np.ndarray,
    w: np.ndarray,
    idx: np.ndarray,
    dz: np.ndarray,
    dn: np.ndarray,
    p: FTRLParams,
) -> int:
    """Add a trainer's increments (:meth:`GradientAggregator.sequential_increments`) to
    the state of the coordinates ``idx`` (each once) and keep their weights ``w`` in
    closed form; returns how many more of those weights are nonzero than before.
    Increments add up, so batches of several trainers in flight commute."""
    return int(_add_increments(z, n, w, idx, dz, dn, p.alpha, p.beta, p.l1, p.l2))


def dot_rows(
    w: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Logits w·x for each row of a CSR batch, from a weight replica."""
    return _dot_rows(w, indptr, indices, values)


def fit_sequential(
    z: np.ndarray,
    n: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    sample_weights: np.ndarray,
    p: FTRLParams,
) -> np.ndarray:
    """Test-then-train one event at a time; returns each event's prediction before it was learned."""
    return _fit_sequential(
        z, n, indptr, indices, values, labels, sample_weights, p.alpha, p.beta, p.l1, p.l2
    )


def row_gradients(
    probs: np.ndarray,
    labels: np.ndarray,
    sample_weights: np.ndarray,
    indptr: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    """Logistic-loss gradient of every CSR entry: (p_r - y_r) * weight_r * x_rk."""
    err = (probs - labels) * sample_weights
    return np.repeat(err, np.diff(indptr)) * values
