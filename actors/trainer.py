"""Trainer: test-then-train.  Scores each batch with the weight replica, keeps the
progressive metrics, and sends each learner shard its slice of the gradients.

In synchronous mode it waits until every shard has applied batch ``s`` before it
scores batch ``s + 1``, so results do not depend on the number of shards.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.factors import FactorAggregator, FactorScorer, FactorStore
from actors.features import (
    BaseFeatures,
    Catalog,
    FeatureSpace,
    UserState,
    expand,
    expand_dense,
    expand_dense_factors,
    expand_factors,
    score_items,
    stack_rows,
    with_history,
)
from actors.ftrl import GradientAggregator
from actors.hasher import take_rows
from actors.learner import ParameterStore, split_by_shard
from actors.metrics import (
    ROCAUC,
    LatencyWindow,
    Logloss,
    PopularityBaseline,
    RankingMetrics,
    RunningMeanCTR,
    rank_of,
)
from runtime.actor import Actor
from runtime.messages import FeatureBatch, GradBatch, WeightDelta
from runtime.transport import Channel


class ProgressiveMetrics:
    """Every event is scored before it is learned (Blum, Kalai & Langford 1999)."""

    def __init__(self, k: int = 10, popularity: bool = True, auc_window: int | None = None) -> None:
        self.logloss = Logloss()
        self.auc = ROCAUC(auc_window)
        self.mean_ctr = RunningMeanCTR()
        self.ranking = RankingMetrics(k)
        self.popularity = PopularityBaseline(k) if popularity else None
        self.popularity_ranking = RankingMetrics(k)
        self.k = k

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.logloss.count:
            out.update(
                logloss=self.logloss.result(),
                auc=self.auc.result(),
                labelled=self.logloss.count,
                baseline_mean_ctr_logloss=self.mean_ctr.result(),
            )
        if self.ranking.count:
            out.update(
                {
                    f"hr@{self.k}": self.ranking.hit_rate(),
                    f"ndcg@{self.k}": self.ranking.ndcg(),
                    "rank_evaluated": self.ranking.count,
                }
            )
            if self.popularity is not None:
                out[f"baseline_popularity_hr@{self.k}"] = self.popularity_ranking.hit_rate()
                out[f"baseline_popularity_ndcg@{self.k}"] = self.popularity_ranking.ndcg()
        return out

    def to_state(self) -> dict[str, Any]:
        state = {
            "logloss": self.logloss.to_state(),
            "auc": self.auc.to_state(),
            "mean_ctr": self.mean_ctr.to_state(),
            "ranking": self.ranking.to_state(),
            "popularity_ranking": self.popularity_ranking.to_state(),
        }
        if self.popularity is not None:
            state["popularity"] = self.popularity.to_state()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self.logloss = Logloss.from_state(state["logloss"])
        self.auc = ROCAUC.from_state(state["auc"])
        self.mean_ctr = RunningMeanCTR.from_state(state["mean_ctr"])
        self.ranking = RankingMetrics.from_state(state["ranking"])
        self.popularity_ranking = RankingMetrics.from_state(state["popularity_ranking"])
        if "popularity" in state:
            self.popularity = PopularityBaseline.from_state(state["popularity"])


@dataclass
class BatchGradients:
    """A batch's gradients summed per coordinate: linear weights and factor vector rows."""

    index: np.ndarray
    grad: np.ndarray
    factor_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    factor_grad: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @classmethod
    def empty(cls) -> BatchGradients:
        return cls(np.zeros(0, np.int64), np.zeros(0))


def evaluation_rows(
    prescore: np.ndarray, origin: np.ndarray, probs: np.ndarray, explicit: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities the metrics score and the rows they evaluate: a row's prescore
    (its prediction when first scored, e.g. at impression time) where finite, else the
    prediction now; a NOT_EVALUATED (negative) prescore is learned but not evaluated."""
    if prescore.size == 0:
        return probs, explicit
    row_prescore = prescore[origin]
    known = np.isfinite(row_prescore)
    return np.where(known, row_prescore, probs), explicit & ~(known & (row_prescore < 0))


class Watermark:
    """The highest batch sequence number learned by every shard; awaitable."""

    def __init__(self, value: int = -1) -> None:
        self.value = value
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._counter = 0

    def advance(self, seq: int) -> None:
        self.value = max(self.value, seq)
        while self._waiters and self._waiters[0][0] <= self.value:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    async def wait_for(self, seq: int) -> None:
        if seq <= self.value:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._counter += 1
        heapq.heappush(self._waiters, (seq, self._counter, future))
        await future


class TrainerActor(Actor):
    """Wraps prediction, metrics, negative sampling and gradient routing for one stream."""

    def __init__(
        self,
        space: FeatureSpace,
        store: ParameterStore,
        catalog: Catalog,
        users: UserState,
        *,
        negatives: int,
        sync: bool,
        max_staleness: int = 1,
        exclude_seen: bool,
        seed: int,
        metrics: ProgressiveMetrics,
        inbox: Channel | None,
        grads: list[Channel],
        weights: Channel,
        name: str = "trainer-0",
        shared_replica: bool = True,
        factors: FactorStore | None = None,
        dense_factors: bool = False,
    ) -> None:
        super().__init__(name, inbox)
        self.space = space
        self.store = store
        self.catalog = catalog
        self.users = users
        self.negatives = negatives
        self.sync = sync
        self.max_staleness = 0 if sync else max_staleness
        self._acked = asyncio.Event()
        self.exclude_seen = exclude_seen
        self.seed = seed
        self.metrics = metrics
        self.grads = grads
        self.weights = weights
        self.shared_replica = shared_replica
        self.freshness = LatencyWindow()
        self.staleness_sum = 0
        self.staleness_max = 0
        self.learned = Watermark()
        self.aggregate = GradientAggregator(space.size)
        self.factors = factors
        self.dense_factors = dense_factors
        self.factor_step = FactorAggregator(space.size, factors.params.size) if factors else None
        self.scorer = FactorScorer(factors) if factors else None
        self._pending: dict[int, tuple[int, float]] = {}
        self.events = 0
        self.rows = 0
        self.batches = 0
        self.busy_seconds = 0.0

    async def start(self) -> None:
        if self._started:
            return
        await super().start()
        self.spawn(self._replica_loop(), "replica")

    async def handle(self, message: FeatureBatch) -> None:
        while len(self._pending) > self.max_staleness:  # bounded staleness
            self._acked.clear()
            await self._acked.wait()
        started = time.perf_counter()
        # batches whose updates this one's predictions cannot see yet (0 in synchronous mode)
        staleness = len(self._pending)
        self.staleness_sum += staleness
        self.staleness_max = max(self.staleness_max, staleness)
        step = self.train_batch(message)
        self._pending[message.seq] = (len(self.grads), message.created_at)
        shards = len(self.grads)
        linear = split_by_shard(step.index, step.grad, shards)
        factor = split_by_shard(step.factor_index, step.factor_grad, shards)
        for shard, ((idx, g), (fidx, fg)) in enumerate(zip(linear, factor, strict=True)):
            grad = GradBatch(
                seq=message.seq,
                shard=shard,
                index=idx,
                grad=g,
                trainer=self.name,
                created_at=message.created_at,
                source_partition=message.source_partition,
                source_offset=message.source_offset,
                factor_index=fidx,
                factor_grad=fg,
            )
            await self.grads[shard].send(grad)
        self.busy_seconds += time.perf_counter() - started
        if self.sync:
            await self.learned.wait_for(message.seq)

    def train_batch(self, batch: FeatureBatch) -> BatchGradients:
        """Score, evaluate and differentiate one batch; returns its summed gradients."""
        n = len(batch)
        self.events += n
        self.batches += 1
        if n == 0:
            return BatchGradients.empty()
        factor_rows = None
        if batch.dense.size:
            indptr, indices, values = expand_dense(self.space, batch.dense)
            if self.factors is not None and self.dense_factors:
                factor_rows = expand_dense_factors(batch.dense, self.factors.params.mask)
            labels = batch.label.astype(np.float64)
            weights = batch.weight
            explicit = np.ones(n, bool)
            origin = np.arange(n)
        else:
            user = BaseFeatures(batch.user_ptr, batch.user_ns, batch.user_raw, batch.user_x)
            if batch.item_rows.size and (batch.item_rows >= 0).any():
                user = self._rank_and_remember(batch, user)
            origin, item_rows, labels, explicit = self._rows_with_negatives(batch)
            weights = batch.weight[origin]
            rows_user = take_rows(user, origin)
            indptr, indices, values = expand(self.space, rows_user, item_rows, self.catalog)
            if self.factors is not None:
                factor_rows = expand_factors(
                    rows_user, item_rows, self.catalog, self.factors.params.mask
                )
        if factor_rows is None or self.factor_step is None or self.factors is None:
            probs, touched, grads = self.aggregate.logistic_step(
                self.store.w, indptr, indices, values, labels, weights
            )
            step = BatchGradients(touched, grads)
        else:
            probs, touched, grads, ftouched, fgrads = self.factor_step.logistic_step(
                self.store.w,
                self.factors.v,
                (indptr, indices, values),
                factor_rows,
                labels,
                weights,
            )
            step = BatchGradients(touched, grads, ftouched, fgrads)
        scores, evaluated = evaluation_rows(batch.prescore, origin, probs, explicit)
        if evaluated.any():
            self.metrics.logloss.update(scores[evaluated], labels[evaluated], weights[evaluated])
            self.metrics.auc.update(scores[evaluated], labels[evaluated])
            self.metrics.mean_ctr.update(labels[evaluated], weights[evaluated])
        self.rows += int(labels.size)
        return step

    def _rows_with_negatives(
        self, batch: FeatureBatch
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each implicit positive is followed by ``negatives`` items drawn from the catalog."""
        implicit = batch.label < 0
        known = self.catalog.known_at(batch.seq)
        per_row = np.where(implicit & (batch.item_rows >= 0) & (known > 1), 1 + self.negatives, 1)
        origin = np.repeat(np.arange(len(batch)), per_row)
        item_rows = batch.item_rows[origin].copy()
        labels = np.where(implicit, 1.0, batch.label.astype(np.float64))[origin]
        explicit = ~implicit[origin]
        first = np.zeros(len(batch) + 1, np.int64)
        np.cumsum(per_row, out=first[1:])
        is_negative = np.ones(origin.size, bool)
        is_negative[first[:-1]] = False
        count = int(is_negative.sum())
        if count:
            rng = np.random.default_rng([self.seed, batch.seq])
            drawn = rng.integers(0, max(known, 1), count)
            positive = item_rows[is_negative]
            drawn = np.where(drawn == positive, (drawn + 1) % max(known, 1), drawn)
            item_rows[is_negative] = drawn
            labels[is_negative] = 0.0
        return origin, item_rows, labels, explicit

    def _rank_and_remember(self, batch: FeatureBatch, user: BaseFeatures) -> BaseFeatures:
        """Rank flagged events against the catalog before learning them, then record history.

        Returns the user rows with each user's recent items as of that event (when
        ``users.recent_len``), so an event is learned with the history it was ranked with.
        """
        known = self.catalog.known_at(batch.seq)
        candidates = np.arange(known) if known < len(self.catalog) else None
        popularity = self.metrics.popularity
        history = self.users.recent_len > 0
        rows = []
        for r in range(len(batch)):
            item = int(batch.item_rows[r])
            name = batch.users[r] if batch.users else ""
            row = user.row(r)
            if history:
                row, _ = with_history(self.space, self.catalog, self.users, name, row)
                rows.append(row)
            if item < 0:
                continue
            if batch.rank_eval[r]:
                seen = self.users.seen(name) if self.exclude_seen else set()
                exclude = np.fromiter(seen, np.int64, len(seen))
                scores = score_items(
                    self.space, row, self.catalog, self.store.w, candidates, self.scorer
                )
                self.metrics.ranking.update(rank_of(scores, item, exclude))
                if popularity is not None:
                    self.metrics.popularity_ranking.update(
                        popularity.evaluate(exclude, item, known)
                    )
            if name:
                self.users.add(name, item)
            if popularity is not None:
                popularity.learn(item)
        return stack_rows(rows) if history else user

    async def _replica_loop(self) -> None:
        """Apply weight deltas to the replica; a delta of our own batch is also its ack."""
        while True:
            delta: WeightDelta = await self.weights.recv()
            if not self.shared_replica:
                self.store.w[delta.index] = delta.w
                if self.factors is not None and delta.factor_index.size:
                    self.factors.v[delta.factor_index] = delta.factor_v
                    self.factors.version += 1
            if delta.trainer == self.name:
                self._acknowledge(delta.seq)

    def _acknowledge(self, seq: int) -> None:
        if seq not in self._pending:
            return  # a delta published for an earlier incarnation of this trainer
        left, created_at = self._pending[seq]
        if left > 1:
            self._pending[seq] = (left - 1, created_at)
            return
        self._pending.pop(seq, None)
        self._acked.set()
        if created_at:
            self.freshness.add(time.time() - created_at)
        if not self._pending or seq < min(self._pending):
            self.learned.advance(seq)

    def statistics(self) -> dict[str, Any]:
        return {
            **super().statistics(),
            "events": self.events,
            "rows": self.rows,
            "batches": self.batches,
            "learned_seq": self.learned.value,
            "in_flight": len(self._pending),
            "freshness": self.freshness.summary(),
            "staleness": {
                "mean_batches": round(self.staleness_sum / max(self.batches, 1), 3),
                "max_batches": self.staleness_max,
            },
            "busy_seconds": round(self.busy_seconds, 3),
            "metrics": self.metrics.summary(),
        }
