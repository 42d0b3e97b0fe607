"""Learner shards: each the single writer of its slice of the optimizer state (a parameter
server): FTRL-Proximal (actors/ftrl.py) or plain SGD (actors/sgd.py), ``[optimizer] kind``.

Global feature index ``i`` belongs to shard ``i % shards`` at local slot
``i // shards``.  In one process the shards' arrays are strided views of one
:class:`ParameterStore`, which is then also the trainers' and rankers' weight
replica: zero copies and zero staleness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit

from actors.factors import (
    FactorParams,
    FactorStore,
    add_factor_increments,
    apply_factor_gradients,
)
from actors.ftrl import FTRLParams, add_increments, apply_gradients, dot_rows, weights_at
from actors.sgd import SGDParams, apply_sgd
from runtime.actor import Actor
from runtime.messages import GradBatch, WeightDelta
from runtime.transport import Channel

OptimizerParams = FTRLParams | SGDParams


def learn_step(
    params: OptimizerParams,
    z: np.ndarray,
    n: np.ndarray,
    w: np.ndarray,
    idx: np.ndarray,
    grads: np.ndarray,
) -> None:
    """Apply (local coordinate, gradient) pairs to one shard's state, keeping ``w`` the
    weights the trainers and rankers read."""
    if isinstance(params, SGDParams):
        apply_sgd(w, n, idx, grads, params)
    else:
        apply_gradients(z, n, idx, grads, params, w)


def count_nonzero_weights(params: OptimizerParams, z: np.ndarray, w: np.ndarray) -> int:
    if isinstance(params, SGDParams):
        return int(np.count_nonzero(w))
    return int(np.count_nonzero(np.abs(z) > params.l1))


@njit(cache=True, nogil=True)
def learned_coordinates(
    n: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The coordinates with ``n != 0``, and ``values`` and ``n`` at them, without the
    interpreter: a snapshot copies them in a worker thread while the event loop runs,
    and numpy's nonzero and gathers hold the GIL (over 70 ms at 2^24 slots)."""
    count = 0
    for i in range(n.size):
        if n[i] != 0:
            count += 1
    index = np.empty(count, np.int64)
    at_values = np.empty(count, values.dtype)
    at_n = np.empty(count, n.dtype)
    k = 0
    for i in range(n.size):
        if n[i] != 0:
            index[k], at_values[k], at_n[k] = i, values[i], n[i]
            k += 1
    return index, at_values, at_n


class ParameterStore:
    """The optimizer state of the whole index space and the weights ``w`` read for scoring.

    FTRL: the sums ``z`` and ``n``; the learners keep ``w[i]`` equal to the closed-form
    weight of ``(z[i], n[i])`` as they update, so scoring is one gather per feature
    instead of a square root and a division.  SGD: ``w`` is the state itself and ``n``
    its per-coordinate accumulator (update count or AdaGrad sum); ``z`` is empty.
    """

    def __init__(self, size: int, params: OptimizerParams) -> None:
        self.params = params
        self.sgd = isinstance(params, SGDParams)
        self.z = np.zeros(0 if self.sgd else size, np.float64)
        self.n = np.zeros(size, np.float64)
        self.w = np.zeros(size, np.float64)

    def shard_view(self, shard: int, shards: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.z[shard::shards], self.n[shard::shards], self.w[shard::shards]

    def refresh(self, idx: np.ndarray | None = None) -> None:
        """Recompute the FTRL weights from z and n (after a restore, or writing z/n
        directly); SGD's weights are its state, nothing to recompute."""
        if isinstance(self.params, SGDParams):
            return
        if idx is None:
            idx = np.flatnonzero(self.n)
            self.w[:] = 0.0
        self.w[idx] = weights_at(self.z, self.n, idx, self.params)

    def learn(self, idx: np.ndarray, grads: np.ndarray) -> None:
        """Apply (global coordinate, gradient) pairs, as one shard owning every index."""
        learn_step(self.params, self.z, self.n, self.w, idx, grads)

    def weights(self, idx: np.ndarray) -> np.ndarray:
        return self.w[idx]

    def logits(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        return dot_rows(self.w, indptr, indices, values)

    def nonzero_weights(self) -> int:
        return count_nonzero_weights(self.params, self.z, self.w)

    STATE_VERSION: ClassVar[int] = 1

    def to_state(self) -> dict[str, Any]:
        """The coordinates ever learned (``n > 0``): FTRL's z and n (the weights follow from
        them), or SGD's w and n."""
        index, values, n = learned_coordinates(self.n, self.w if self.sgd else self.z)
        return {"index": index, "w" if self.sgd else "z": values, "n": n}

    def load_state(self, state: dict[str, Any]) -> None:
        index = np.asarray(state["index"], np.int64)
        self.n[:] = 0.0
        self.n[index] = state["n"]
        if self.sgd:
            self.w[:] = 0.0
            self.w[index] = state["w"]
            return
        self.z[:] = 0.0
        self.z[index] = state["z"]
        self.refresh()


@dataclass
class FactorShard:
    """A shard's rows of the factor vectors: every ``shards``-th row of a store shared by
    all shards (one process), or all rows of the shard's own store (``own=True``)."""

    store: FactorStore  # whose ``version`` to bump, so ranking caches see the change
    shard: int = 0
    shards: int = 1
    own: bool = False

    def rows(self, name: str) -> np.ndarray:
        array: np.ndarray = getattr(self.store, name)
        return array if self.own else array[self.shard :: self.shards]

    @property
    def params(self) -> FactorParams:
        return self.store.params


def split_by_shard(
    indices: np.ndarray, grads: np.ndarray, shards: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per shard, its (local index, gradient) pairs in stream order."""
    return [(local, g) for local, (g,) in split_columns_by_shard(indices, (grads,), shards)]


def split_columns_by_shard(
    indices: np.ndarray, columns: Sequence[np.ndarray], shards: int
) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Per shard, its local indices in stream order and each column's rows for them (one
    sort for all the columns); an empty column stays empty for every shard."""
    if shards == 1:
        return [(indices, list(columns))]
    owner = indices % shards
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(shards + 1))
    local = indices[order] // shards
    ordered = [column[order] if column.size else column for column in columns]
    return [
        (
            local[bounds[k] : bounds[k + 1]],
            [c[bounds[k] : bounds[k + 1]] if c.size else c for c in ordered],
        )
        for k in range(shards)
    ]


EMPTY_INDEX = np.zeros(0, np.int64)
EMPTY_INDEX.flags.writeable = False
EMPTY_VALUES = np.zeros(0)
EMPTY_VALUES.flags.writeable = False


class LearnerActor(Actor):
    """Applies :class:`GradBatch` messages for one shard, then acknowledges them."""

    def __init__(
        self,
        shard: int,
        shards: int,
        z: np.ndarray,
        n: np.ndarray,
        w: np.ndarray,
        params: OptimizerParams,
        inbox: Channel,
        weights: Channel,
        factors: FactorShard | None = None,
        *,
        publish: bool = True,
    ) -> None:
        super().__init__(f"learner-{shard}", inbox)
        # whether the deltas carry the new values: in one process every replica is a view
        # of the same arrays, and the trainer only needs the acknowledgement
        self.publish = publish
        self.factors = factors
        self.shard = shard
        self.shards = shards
        self.z = z
        self.n = n
        self.w = w
        self.params = params
        self.weights = weights
        self.updates = 0
        self.batches = 0
        self.duplicates = 0
        # events partition -> last events offset applied (exactly-once in effect)
        self.applied_upto: dict[int, int] = {}
        # weights that are not zero, kept up to date per batch: statistics() is read on
        # every /v1/stats and /metrics request, and counting all 2^bits slots there stalled
        # the event loop (14 ms at 2^22, 400 ms at 2^24)
        self.nonzero = 0
        self.factor_rows = 0

    def recount(self) -> None:
        """Count the nonzero weights and learned factor rows from scratch (after a restore)."""
        self.nonzero = count_nonzero_weights(self.params, self.z, self.w)
        active = self.factors.rows("active") if self.factors else np.zeros(0)
        self.factor_rows = int(np.count_nonzero(active))

    async def start(self) -> None:
        self.recount()  # the weights may have been restored since this actor was made
        if self.factors is not None:
            # the seeded start of the vectors (2^18 x k normals) is made now, not while
            # the first batch after "ready" waits for it
            self.factors.rows("init")
        await super().start()

    async def handle(self, message: GradBatch) -> None:
        if self._already_applied(message):
            self.duplicates += 1
            await self.weights.send(self._delta(message, EMPTY_INDEX, EMPTY_INDEX), key=self.shard)
            return
        self._apply_linear(message)
        factor_rows = self._apply_factors(message)
        self.updates += int(message.index.size)
        self.batches += 1
        if message.source_offset >= 0:
            self.applied_upto[message.source_partition] = message.source_offset
        delta = self._delta(message, message.index, factor_rows)
        await self.weights.send(delta, key=self.shard)

    def _apply_linear(self, message: GradBatch) -> None:
        # each coordinate appears once in a batch (the trainer sums gradients per coordinate)
        if message.n_step.size and isinstance(self.params, FTRLParams):
            self.nonzero += add_increments(
                self.z, self.n, self.w, message.index, message.grad, message.n_step, self.params
            )
            return
        before = int(np.count_nonzero(self.w[message.index]))
        learn_step(self.params, self.z, self.n, self.w, message.index, message.grad)
        self.nonzero += int(np.count_nonzero(self.w[message.index])) - before

    def _delta(self, message: GradBatch, index: np.ndarray, factor_rows: np.ndarray) -> WeightDelta:
        """The acknowledgement of ``message``; with ``publish``, also the new values of the
        coordinates ``index`` and vector rows ``factor_rows`` (shard-local) for replicas."""
        delta = WeightDelta(
            seq=message.seq,
            shard=self.shard,
            trainer=message.trainer,
            index=EMPTY_INDEX,
            w=EMPTY_VALUES,
            created_at=message.created_at,
        )
        if not self.publish:
            return delta
        delta.index = index * self.shards + self.shard
        delta.w = self.w[index]
        if self.z.size:
            delta.z, delta.n = self.z[index], self.n[index]
        if factor_rows.size and self.factors is not None:
            v, n = self.factors.rows("v"), self.factors.rows("n")
            delta.factor_index = factor_rows * self.shards + self.shard
            delta.factor_v, delta.factor_n = v[factor_rows], n[factor_rows]
        return delta

    def _apply_factors(self, message: GradBatch) -> np.ndarray:
        """Apply the batch's factor gradients, or add its increments; returns the rows
        (shard-local) it changed."""
        f = self.factors
        if f is None or message.factor_index.size == 0:
            return EMPTY_INDEX
        rows, (v, n, active) = message.factor_index, (f.rows(a) for a in ("v", "n", "active"))
        if message.factor_n_step.size:
            self.factor_rows += add_factor_increments(
                v, n, active, rows, message.factor_grad, message.factor_n_step
            )
        else:
            before = int(np.count_nonzero(active[rows]))
            init = f.rows("init")
            apply_factor_gradients(v, n, active, init, rows, message.factor_grad, f.params)
            self.factor_rows += int(np.count_nonzero(active[rows])) - before
        f.store.changed(rows if f.own else rows * f.shards + f.shard)
        return rows

    def _already_applied(self, message: GradBatch) -> bool:
        """A re-sent batch (its trainer died before committing) is applied at most once."""
        if message.source_offset < 0:
            return False
        return self.applied_upto.get(message.source_partition, -1) >= message.source_offset

    def statistics(self) -> dict[str, Any]:
        return {
            **super().statistics(),
            "duplicates_skipped": self.duplicates,
            "shard": self.shard,
            "batches": self.batches,
            "updates": self.updates,
            "slots": int(self.w.shape[0]),
            "nonzero_weights": self.nonzero,
            "factor_rows_learned": self.factor_rows,
        }
