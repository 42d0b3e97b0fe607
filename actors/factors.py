"""Second-order factorization-machine terms learned online next to the FTRL weights.

Pure numeric code, no asyncio: the trainer, learner and ranker only wrap it.

Reference: S. Rendle, "Factorization Machines", ICDM 2010.  Every hashed base
feature ``j`` (ids and ``u.*``/``i.*``/``c.*`` values, not the bias and not the
explicit crosses) has a latent vector ``v_j`` of ``k`` factors, and a row ``x``
scores

    logit(x) = w·x + sum_{i<j} <v_i, v_j> x_i x_j
             = w·x + 1/2 sum_f [ (sum_j v_jf x_j)^2 - sum_j v_jf^2 x_j^2 ]   (Rendle, Lemma 3.1)

so the pairwise part costs O(k · features).  Its gradient with respect to v_jf is
``x_j (a_f - v_jf x_j)`` with ``a_f = sum_i v_if x_i``.

Learning: per-coordinate AdaGrad with L2 (Duchi et al. 2011), the learning rate
``alpha / (beta + sqrt(n))`` of FTRL's own schedule.  As with the linear weights,
a batch's gradients are summed per coordinate and applied in one step.

Start: a feature that was never learned has a zero vector, so it adds nothing to
any score (a user never seen gets the same ranking as any other stranger, not a
random one).  Zero vectors alone would never move (their gradients are products
of other zero vectors), so the first time a shard learns a row it sets it to a
small seeded Gaussian start (the usual FM initialisation) before the step.  Every
process derives the same start from ``seed``, so shards and replicas agree.

Sharding: vector ``j`` belongs to shard ``j % shards`` like a linear weight.  The
two sums above are sums over features, so the partial sums of the shards add up
to those of the unsharded model (:func:`partial_sums`) and so do the gradients,
which depend only on the row's totals.

Ranking: a row is a user side ``U`` and an item side ``I``, and
``a = a_U + a_I``, so the pairwise part splits into
``1/2(|a_U|^2 - q_U) + 1/2(|a_I|^2 - q_I) + a_U·a_I``.  The item terms are kept
per catalog item (:class:`ItemFactorCache`), so ranking a user against the whole
catalog is one matrix-vector product plus the linear part.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit

from actors.ftrl import MAX_LOGIT, FTRLParams, _contiguous, _gather, _row_dot, _update


@dataclass(frozen=True)
class FactorParams:
    """Dimension, hash space and learning settings of the factor vectors."""

    k: int = 8
    bits: int = 18
    alpha: float = 0.05
    beta: float = 1.0
    l2: float = 0.0
    init_std: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 256:
            raise ValueError(f"factor dimension k must be in 1..256, got {self.k}")
        if not 1 <= self.bits <= 28:
            raise ValueError(f"factor hash bits must be in 1..28, got {self.bits}")
        if not self.alpha > 0:
            raise ValueError(f"factor alpha must be > 0, got {self.alpha}")
        for name in ("beta", "l2", "init_std"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"factor {name} must be >= 0, got {getattr(self, name)}")

    @property
    def size(self) -> int:
        return 1 << self.bits

    @property
    def mask(self) -> int:
        return self.size - 1


def initial_vectors(params: FactorParams, shard: int = 0, shards: int = 1) -> np.ndarray:
    """The seeded start of the vectors ``j % shards == shard`` (all of them by default)."""
    rng = np.random.default_rng([params.seed, 0x464D])
    full = rng.normal(0.0, params.init_std, (params.size, params.k))
    return full if shards == 1 else np.ascontiguousarray(full[shard::shards])


class FactorStore:
    """Factor vectors ``v``, their AdaGrad sums ``n`` and which rows were ever learned
    (``active``); rows are hashed feature slots (a shard's own rows when sharded).

    ``version`` counts applied updates, so caches of item-side sums know when they
    are stale; every update goes through :meth:`changed`, which also keeps the rows of
    the last ``CHANGE_LOG`` updates, so a cache can refresh just those rows.
    """

    CHANGE_LOG: ClassVar[int] = 64

    def __init__(self, params: FactorParams, shard: int = 0, shards: int = 1) -> None:
        self.params = params
        self._where = (shard, shards)
        rows = len(range(shard, params.size, shards))
        self.v = np.zeros((rows, params.k))
        self.n = np.zeros_like(self.v)
        self.active = np.zeros(rows, np.bool_)
        self._init: np.ndarray | None = None
        self.version = 0
        self._changes: deque[tuple[int, np.ndarray | None]] = deque(maxlen=self.CHANGE_LOG)

    def changed(self, rows: np.ndarray | None) -> None:
        """Count an update of ``rows`` of ``v`` (None: possibly any row)."""
        self.version += 1
        self._changes.append((self.version, None if rows is None else np.asarray(rows, np.int64)))

    def changed_since(self, version: int) -> np.ndarray | None:
        """The rows of ``v`` the updates after ``version`` changed, or None when that is
        not known (older than the log, or an update of any row)."""
        after = [rows for at, rows in self._changes if at > version]
        known = [rows for rows in after if rows is not None]
        if len(known) != self.version - version:
            return None
        return np.concatenate(known) if known else np.zeros(0, np.int64)

    @property
    def init(self) -> np.ndarray:
        """The seeded start of each row (only learners need it: made on first use)."""
        if self._init is None:
            self._init = initial_vectors(self.params, *self._where)
        return self._init

    def touched_rows(self) -> np.ndarray:
        return np.flatnonzero(self.active)

    STATE_VERSION: ClassVar[int] = 1

    def to_state(self) -> dict[str, Any]:
        """The rows ever learned (the rest are zero)."""
        rows = self.touched_rows()
        return {"index": rows, "v": self.v[rows], "n": self.n[rows]}

    def load_state(self, state: dict[str, Any]) -> None:
        rows = np.asarray(state["index"], np.int64)
        self.v[:] = 0.0
        self.n[:] = 0.0
        self.active[:] = False
        self.v[rows] = state["v"]
        self.n[rows] = state["n"]
        self.active[rows] = True
        self.changed(None)


# --------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True, inline="always")
def _pairwise(
    v: np.ndarray, fidx: np.ndarray, fx: np.ndarray, lo: int, hi: int, a: np.ndarray
) -> float:
    """Fills ``a`` with sum_j v_j x_j over entries lo:hi and returns the pairwise term."""
    a[:] = 0.0
    q = 0.0
    for e in range(lo, hi):
        j = fidx[e]
        x = fx[e]
        for f in range(a.shape[0]):
            t = v[j, f] * x
            a[f] += t
            q += t * t
    s = 0.0
    for f in range(a.shape[0]):
        s += a[f] * a[f]
    return 0.5 * (s - q)


@njit(cache=True, nogil=True)
def _pairwise_rows(v: np.ndarray, fptr: np.ndarray, fidx: np.ndarray, fx: np.ndarray) -> np.ndarray:
    rows = fptr.shape[0] - 1
    out = np.empty(rows, np.float64)
    a = np.empty(v.shape[1], np.float64)
    for r in range(rows):
        out[r] = _pairwise(v, fidx, fx, fptr[r], fptr[r + 1], a)
    return out


@njit(cache=True, nogil=True, inline="always")
def _add_linear_gradient(
    indices: np.ndarray,
    values: np.ndarray,
    lo: int,
    hi: int,
    err: float,
    slot: np.ndarray,
    out_idx: np.ndarray,
    out_g: np.ndarray,
    m: int,
) -> int:
    """Adds one row's weight gradients into the batch's (one entry per coordinate, found
    through ``slot``); returns the new number of entries."""
    for e in range(lo, hi):
        i = indices[e]
        at = slot[i]
        if at < 0:
            at = m
            slot[i] = m
            out_idx[m] = i
            out_g[m] = 0.0
            m += 1
        out_g[at] += err * values[e]
    return m


@njit(cache=True, nogil=True, inline="always")
def _add_factor_gradient(
    v: np.ndarray,
    fidx: np.ndarray,
    fx: np.ndarray,
    lo: int,
    hi: int,
    err: float,
    a: np.ndarray,
    fslot: np.ndarray,
    out_fidx: np.ndarray,
    out_fg: np.ndarray,
    mf: int,
) -> int:
    """Adds one row's factor gradients (``a``: the row's sum_j v_j x_j) into the batch's;
    returns the new number of factor rows."""
    for e in range(lo, hi):
        j = fidx[e]
        x = fx[e]
        at = fslot[j]
        if at < 0:
            at = mf
            fslot[j] = mf
            out_fidx[mf] = j
            mf += 1
        for f in range(a.shape[0]):
            out_fg[at, f] += err * x * (a[f] - v[j, f] * x)
    return mf


@njit(cache=True, nogil=True)
def _fm_logistic_step(
    w: np.ndarray,
    v: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    fptr: np.ndarray,
    fidx: np.ndarray,
    fx: np.ndarray,
    labels: np.ndarray,
    sample_weights: np.ndarray,
    slot: np.ndarray,
    fslot: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rows = indptr.shape[0] - 1
    k = v.shape[1]
    probs = np.empty(rows, np.float64)
    out_idx = np.empty(indices.shape[0], np.int64)
    out_g = np.empty(indices.shape[0], np.float64)
    out_fidx = np.empty(fidx.shape[0], np.int64)
    out_fg = np.zeros((fidx.shape[0], k), np.float64)
    a = np.empty(k, np.float64)
    m = 0
    mf = 0
    for r in range(rows):
        lo, hi = indptr[r], indptr[r + 1]
        s = 0.0
        for e in range(lo, hi):
            s += w[indices[e]] * values[e]
        flo, fhi = fptr[r], fptr[r + 1]
        s += _pairwise(v, fidx, fx, flo, fhi, a)
        s = min(max(s, -MAX_LOGIT), MAX_LOGIT)
        p = 1.0 / (1.0 + math.exp(-s))
        probs[r] = p
        err = (p - labels[r]) * sample_weights[r]
        m = _add_linear_gradient(indices, values, lo, hi, err, slot, out_idx, out_g, m)
        mf = _add_factor_gradient(v, fidx, fx, flo, fhi, err, a, fslot, out_fidx, out_fg, mf)
    for t in range(m):
        slot[out_idx[t]] = -1
    for t in range(mf):
        fslot[out_fidx[t]] = -1
    return probs, out_idx[:m], out_g[:m], out_fidx[:mf], out_fg[:mf]


@njit(cache=True, nogil=True, inline="always")
def _factor_step(
    v: np.ndarray, n: np.ndarray, active: np.ndarray, start: np.ndarray, j: int,
    g: np.ndarray, alpha: float, beta: float, l2: float,
) -> None:  # fmt: skip
    """One AdaGrad step of row ``j``; a row learned for the first time starts at ``start``."""
    if not active[j]:
        active[j] = True
        for f in range(v.shape[1]):
            v[j, f] = start[f]
    for f in range(v.shape[1]):
        gf = g[f] + l2 * v[j, f]
        n[j, f] += gf * gf
        v[j, f] -= alpha * gf / (beta + math.sqrt(n[j, f]))


@njit(cache=True, nogil=True)
def _apply_factor_gradients(
    v: np.ndarray,
    n: np.ndarray,
    active: np.ndarray,
    init: np.ndarray,
    idx: np.ndarray,
    g: np.ndarray,
    alpha: float,
    beta: float,
    l2: float,
) -> None:
    for t in range(idx.shape[0]):
        _factor_step(v, n, active, init[idx[t]], idx[t], g[t], alpha, beta, l2)


@njit(cache=True, nogil=True)
def _add_factor_increments(
    v: np.ndarray, n: np.ndarray, active: np.ndarray, rows: np.ndarray, dv: np.ndarray,
    dn: np.ndarray,
) -> int:  # fmt: skip
    newly_active = 0
    for t in range(rows.shape[0]):
        j = rows[t]
        newly_active += int(not active[j])
        active[j] = True
        for f in range(v.shape[1]):
            v[j, f] += dv[t, f]
            n[j, f] += dn[t, f]
    return newly_active


@njit(cache=True, nogil=True)
def _gather_rows(
    v: np.ndarray, n: np.ndarray, active: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = v.shape[1]
    v_local = np.empty((rows.shape[0], k), np.float64)
    n_local = np.empty((rows.shape[0], k), np.float64)
    active_local = np.empty(rows.shape[0], np.bool_)
    for t in range(rows.shape[0]):
        active_local[t] = active[rows[t]]
        for f in range(k):
            v_local[t, f] = v[rows[t], f]
            n_local[t, f] = n[rows[t], f]
    return v_local, n_local, active_local


@njit(cache=True, nogil=True)
def _fm_sequential(
    z: np.ndarray, n: np.ndarray, v: np.ndarray, vn: np.ndarray, active: np.ndarray,
    init: np.ndarray, indptr: np.ndarray, local: np.ndarray, values: np.ndarray,
    fptr: np.ndarray, frows: np.ndarray, flocal: np.ndarray, fx: np.ndarray,
    labels: np.ndarray, sample_weights: np.ndarray, linear: np.ndarray, factor: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Test-then-train one row at a time on local copies: the linear part by FTRL
    (``linear``: alpha, beta, l1, l2), the vectors by AdaGrad (``factor``: alpha, beta,
    l2) with each row's gradients taken before any of its own steps."""
    alpha, beta, l1, l2 = linear[0], linear[1], linear[2], linear[3]
    k = v.shape[1]
    probs = np.empty(indptr.shape[0] - 1, np.float64)
    a = np.empty(k, np.float64)
    grads = np.empty((max(fx.shape[0], 1), k), np.float64)
    for r in range(probs.shape[0]):
        lo, hi, flo, fhi = indptr[r], indptr[r + 1], fptr[r], fptr[r + 1]
        s = _row_dot(z, n, local, values, lo, hi, alpha, beta, l1, l2)
        s += _pairwise(v, flocal, fx, flo, fhi, a)
        s = min(max(s, -MAX_LOGIT), MAX_LOGIT)
        p = 1.0 / (1.0 + math.exp(-s))
        probs[r] = p
        err = (p - labels[r]) * sample_weights[r]
        for e in range(flo, fhi):
            for f in range(k):
                grads[e, f] = err * fx[e] * (a[f] - v[flocal[e], f] * fx[e])
        for e in range(lo, hi):
            _update(z, n, local[e], err * values[e], alpha, beta, l1, l2)
        for e in range(flo, fhi):
            j = flocal[e]
            _factor_step(v, vn, active, init[frows[j]], j, grads[e], factor[0], factor[1],
                         factor[2])  # fmt: skip
    return probs


@njit(cache=True, nogil=True, inline="always")
def _add_vector(
    out_a: np.ndarray, r: int, v: np.ndarray, j: int | np.integer, x: float, q: float
) -> float:
    """out_a[r] += v[j] x; returns q + |v[j] x|^2 (summed term by term, in order)."""
    for f in range(v.shape[1]):
        t = v[j, f] * x
        out_a[r, f] += t
        q += t * t
    return q


@njit(cache=True, nogil=True, inline="always")
def _own_term(out_a: np.ndarray, r: int, q: float) -> float:
    """Row r's own pairwise term 1/2(|a|^2 - q)."""
    s = 0.0
    for f in range(out_a.shape[1]):
        s += out_a[r, f] * out_a[r, f]
    return 0.5 * (s - q)


@njit(cache=True, nogil=True)
def _item_sums(
    v: np.ndarray, mask: int, iraw: np.ndarray, ix: np.ndarray, out_a: np.ndarray, out_t: np.ndarray
) -> None:
    m = np.uint64(mask)
    k = v.shape[1]
    for r in range(out_a.shape[0]):
        q = 0.0
        for f in range(k):
            out_a[r, f] = 0.0
        for c in range(ix.shape[1]):
            x = ix[r, c]
            if x != 0.0:
                q = _add_vector(out_a, r, v, np.int64(np.uint64(iraw[r, c]) & m), x, q)
        out_t[r] = _own_term(out_a, r, q)


@njit(cache=True, nogil=True)
def _item_sums_compact(
    rows: np.ndarray,
    ptr: np.ndarray,
    slots: np.ndarray,
    xs: np.ndarray,
    out_a: np.ndarray,
    out_t: np.ndarray,
) -> None:
    """:func:`_item_sums` from ``rows``, the catalog's vectors in one small array: item r's
    nonzero features are ``slots[ptr[r]:ptr[r + 1]]`` there (in column order), with values
    ``xs``; the same sums in the same order."""
    k = rows.shape[1]
    for r in range(out_a.shape[0]):
        q = 0.0
        for f in range(k):
            out_a[r, f] = 0.0
        for e in range(ptr[r], ptr[r + 1]):
            q = _add_vector(out_a, r, rows, slots[e], xs[e], q)
        out_t[r] = _own_term(out_a, r, q)


# --------------------------------------------------------------------------- wrappers


def pairwise_logits(
    v: np.ndarray, fptr: np.ndarray, fidx: np.ndarray, fx: np.ndarray
) -> np.ndarray:
    """The pairwise part of each row's logit (rows in CSR over factor indices)."""
    return _pairwise_rows(v, fptr, np.ascontiguousarray(fidx, np.int64), fx)


def partial_sums(
    v: np.ndarray, fidx: np.ndarray, fx: np.ndarray, shard: int, shards: int
) -> tuple[np.ndarray, float]:
    """One shard's share ``(sum_j v_j x_j, sum_j |v_j x_j|^2)`` of a row's factor sums.

    ``v`` is the shard's own slice (row ``j // shards``); the shards' shares add up
    to the unsharded sums, which is why sharding the vectors leaves the model exact.
    """
    mine = fidx % shards == shard
    return factor_sums(v, fidx[mine] // shards, fx[mine])


def factor_sums(v: np.ndarray, fidx: np.ndarray, fx: np.ndarray) -> tuple[np.ndarray, float]:
    """``(a, q) = (sum_j v_j x_j, sum_j |v_j x_j|^2)`` of one row's entries; its pairwise
    term is ``(a·a - q) / 2``."""
    vx = v[fidx] * fx[:, None]
    return vx.sum(axis=0), float((vx * vx).sum())


def apply_factor_gradients(
    v: np.ndarray,
    n: np.ndarray,
    active: np.ndarray,
    init: np.ndarray,
    idx: np.ndarray,
    g: np.ndarray,
    params: FactorParams,
) -> None:
    """AdaGrad steps for the rows ``idx`` (local to ``v``) with summed gradients ``g``, in
    place; a row learned for the first time starts from its ``init`` row."""
    _apply_factor_gradients(
        v,
        n,
        active,
        init,
        np.ascontiguousarray(idx, np.int64),
        g,
        params.alpha,
        params.beta,
        params.l2,
    )


def add_factor_increments(
    v: np.ndarray,
    n: np.ndarray,
    active: np.ndarray,
    rows: np.ndarray,
    dv: np.ndarray,
    dn: np.ndarray,
) -> int:
    """Add a trainer's increments of the vectors ``rows`` (local to ``v``, each once;
    :func:`fm_sequential_increments`) and of their AdaGrad sums, in place, and mark the
    rows learned; returns how many of them were not learned before."""
    rows = np.ascontiguousarray(rows, np.int64)
    return int(_add_factor_increments(v, n, active, rows, dv, dn))


class FactorAggregator:
    """One pass over a batch: probabilities and the per-coordinate sums of the linear and
    factor gradients (coordinates in first-seen order, scratch slots reset after each call)."""

    def __init__(self, size: int, factor_size: int) -> None:
        self._slot = np.full(size, -1, np.int32)
        self._fslot = np.full(factor_size, -1, np.int32)

    def logistic_step(
        self,
        w: np.ndarray,
        v: np.ndarray,
        linear: tuple[np.ndarray, np.ndarray, np.ndarray],
        factors: tuple[np.ndarray, np.ndarray, np.ndarray],
        labels: np.ndarray,
        sample_weights: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        indptr, indices, values = linear
        fptr, fidx, fx = factors
        return _fm_logistic_step(
            w,
            v,
            indptr,
            np.ascontiguousarray(indices, np.int64),
            np.ascontiguousarray(values, np.float64),
            fptr,
            np.ascontiguousarray(fidx, np.int64),
            np.ascontiguousarray(fx, np.float64),
            np.ascontiguousarray(labels, np.float64),
            np.ascontiguousarray(sample_weights, np.float64),
            self._slot,
            self._fslot,
        )


def fm_sequential_increments(
    state: tuple[np.ndarray, np.ndarray, FactorStore],
    linear: tuple[np.ndarray, np.ndarray, np.ndarray],
    factors: tuple[np.ndarray, np.ndarray, np.ndarray],
    labels: np.ndarray,
    sample_weights: np.ndarray,
    p: FTRLParams,
    slots: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, ...]:
    """:meth:`actors.ftrl.GradientAggregator.sequential_increments` with the factor
    terms: each row predicted with the linear weights and vectors that include every
    earlier row, on copies of what the batch touches.  ``state``: FTRL's z and n and the
    vectors' store.  Returns the predictions; the touched coordinates with their z and n
    increments; the touched vector rows with their v and AdaGrad-sum increments (a row
    never learned before starts from its seeded start, and ``v`` is 0 there, so its
    increment is the whole vector)."""
    z, n, store = state
    indptr, indices, values = linear
    fptr, fidx, fx = factors
    fp = store.params
    indices, values, labels, sample_weights = _contiguous(indices, values, labels, sample_weights)
    touched, local = _gather(indices, slots[0])
    frows, flocal = _gather(np.ascontiguousarray(fidx, np.int64), slots[1])
    z_local, n_local = z[touched], n[touched]
    v_local, vn_local, active_local = _gather_rows(store.v, store.n, store.active, frows)
    starts = (z_local.copy(), n_local.copy(), v_local.copy(), vn_local.copy())
    probs = _fm_sequential(
        z_local, n_local, v_local, vn_local, active_local, store.init, indptr, local, values,
        fptr, frows, flocal, np.ascontiguousarray(fx, np.float64), labels, sample_weights,
        np.array([p.alpha, p.beta, p.l1, p.l2]), np.array([fp.alpha, fp.beta, fp.l2]),
    )  # fmt: skip
    return (
        probs, touched, z_local - starts[0], n_local - starts[1],
        frows, v_local - starts[2], vn_local - starts[3],
    )  # fmt: skip


class ItemFactorCache:
    """Per catalog item: ``a_I`` (k) and its own pairwise term, refreshed when the vectors or
    the catalog changed since the last use.

    The vectors of the catalog's features are scattered over the whole hashed table, so
    summing them straight from it costs a cache miss per feature.
    Once the catalog has stayed the same for two refreshes, the cache keeps a copy of
    just those vectors and, on a refresh, copies in only the rows the store's updates
    changed (:meth:`FactorStore.changed_since`) before summing from the copy: the same
    sums, in the same order, from memory that stays in cache.
    """

    def __init__(self) -> None:
        self._key: tuple[int, int, int, int] | None = None
        self.a = np.zeros((0, 0))
        self.t = np.zeros(0)
        self._layout: tuple[int, int, int] | None = None  # (store, catalog version, rows)
        self._seen_layout: tuple[int, int, int] | None = None
        self._rows = np.zeros(0, np.int64)  # the store rows the catalog's features use
        self._entries = (np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0))
        self._copy = np.zeros((0, 0))  # v[self._rows] as of self._version
        self._version = -1

    def get(
        self, store: FactorStore, iraw: np.ndarray, ix: np.ndarray, catalog_version: int
    ) -> tuple[np.ndarray, np.ndarray]:
        key = (id(store), store.version, catalog_version, iraw.shape[0])
        if key == self._key:
            return self.a, self.t
        rows = iraw.shape[0]
        if self.a.shape != (rows, store.params.k):
            self.a = np.empty((rows, store.params.k))
            self.t = np.empty(rows)
        layout = (id(store), catalog_version, rows)
        if layout == self._layout:
            self._refresh_copy(store)
            _item_sums_compact(self._copy, *self._entries, self.a, self.t)
        elif layout == self._seen_layout:  # the catalog stayed: worth a copy of its rows
            self._lay_out(store, iraw, ix, layout)
            _item_sums_compact(self._copy, *self._entries, self.a, self.t)
        else:
            self._seen_layout = layout
            _item_sums(store.v, store.params.mask, iraw, ix, self.a, self.t)
        self._key = key
        return self.a, self.t

    def _lay_out(
        self, store: FactorStore, iraw: np.ndarray, ix: np.ndarray, layout: tuple[int, int, int]
    ) -> None:
        hashed = iraw.astype(np.int64) & store.params.mask
        used = ix != 0.0
        self._rows, slots = np.unique(hashed[used], return_inverse=True)  # row-major
        ptr = np.zeros(iraw.shape[0] + 1, np.int64)
        np.cumsum(used.sum(axis=1), out=ptr[1:])
        self._entries = (ptr, slots.astype(np.int32), np.ascontiguousarray(ix[used]))
        self._copy = store.v[self._rows]
        self._version = store.version
        self._layout = layout

    def _refresh_copy(self, store: FactorStore) -> None:
        changed = store.changed_since(self._version)
        if changed is None:
            self._copy = store.v[self._rows]
        elif changed.size and self._rows.size:
            at = np.minimum(np.searchsorted(self._rows, changed), self._rows.size - 1)
            mine = self._rows[at] == changed
            self._copy[at[mine]] = store.v[changed[mine]]
        self._version = store.version


class FactorScorer:
    """The factorization terms of one user context against catalog items, for ranking."""

    def __init__(self, store: FactorStore) -> None:
        self.store = store
        self.cache = ItemFactorCache()

    def user_sums(self, user_raw: np.ndarray, user_x: np.ndarray) -> tuple[np.ndarray, float]:
        """``a_U`` and the user side's own pairwise term."""
        fidx = (user_raw & np.uint32(self.store.params.mask)).astype(np.int64)
        a_user, q = factor_sums(self.store.v, fidx, np.asarray(user_x, np.float64))
        return a_user, 0.5 * (float(a_user @ a_user) - q)

    def sides(
        self,
        user_raw: np.ndarray,
        user_x: np.ndarray,
        iraw: np.ndarray,
        ix: np.ndarray,
        catalog_version: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """``a_I`` and the item term per catalog row (cached), ``a_U`` and the user term:
        what the terms of any row are summed from."""
        a_items, t_items = self.cache.get(self.store, iraw, ix, catalog_version)
        a_user, user_term = self.user_sums(user_raw, user_x)
        return a_items, t_items, a_user, user_term


def pair_contributions(
    v: np.ndarray, fidx: np.ndarray, fx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of a row's entries with its term <v_i, v_j> x_i x_j (for explanations)."""
    vx = v[fidx] * fx[:, None]
    first, second = np.triu_indices(fidx.size, 1)
    return first, second, np.einsum("pf,pf->p", vx[first], vx[second])
