"""Trainer: test-then-train.  Scores each batch with the weight replica, keeps the
progressive metrics, and sends each learner shard its slice of the gradients.

In synchronous mode it waits until every shard has applied batch ``s`` before it
scores batch ``s + 1``, so results do not depend on the number of shards.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.factors import FactorAggregator, FactorScorer, fm_sequential_increments
from actors.features import (
    NO_TAIL,
    BaseFeatures,
    expand,
    expand_dense,
    expand_dense_factors,
    expand_factors,
    score_items,
    with_histories,
)
from actors.featurizer import take_rows
from actors.ftrl import FTRLParams, GradientAggregator
from actors.learner import split_columns_by_shard
from actors.metrics import LatencyWindow, ProgressiveMetrics, rank_of, ranks_of, top_rows
from actors.model import Model
from actors.signals import SignalEvents
from runtime.actor import Actor
from runtime.messages import (
    IMPLICIT,
    NEGATIVE,
    NOT_EVALUATED,
    FeatureBatch,
    GradBatch,
    WeightDelta,
    seen_flags,
)
from runtime.transport import Channel

RANKED_BYTES = 64 << 20  # whole-catalog signal values of ranked events held at once
# Between these the trainer lets the event loop run: a 256-event batch is 10-25 ms of
# work, and a request waiting that long behind it is the stall issue 12 measured.
EVENTS_PER_PAUSE = 64
RANKINGS_PER_PAUSE = 2
# what a step of the batch's work yields: None, a pause, or work for a worker thread
# (the loop runs meanwhile; nothing else learns, since the trainer waits for it)
Pause = Callable[[], None] | None


@dataclass
class InteractionRows:
    """The training rows of an interaction batch (see ``TrainerActor._interaction_rows``)."""

    origin: np.ndarray  # the event of each row
    labels: np.ndarray
    explicit: np.ndarray  # the label was given, not implied (evaluated as logloss/AUC)
    linear: tuple[np.ndarray, np.ndarray, np.ndarray]  # CSR indptr, indices, values
    factor: tuple[np.ndarray, np.ndarray, np.ndarray] | None


@dataclass
class EventRows:
    """Each event's training rows while the batch is walked (rows of event e are
    contiguous, the positive first); ``signals`` is filled event by event."""

    origin: np.ndarray
    item_rows: np.ndarray
    labels: np.ndarray
    signals: np.ndarray | None
    blocked: np.ndarray | None = None  # known rows never sampled nor ranked (lifecycle)


class UserWalk:
    """What :meth:`TrainerActor._follow_users` saw of each event's user before it."""

    def __init__(self, events: int) -> None:
        self.recent: list[tuple[int, ...]] = []  # recent distinct items (the h.item features)
        self.sequences: list[tuple[int, ...]] = []  # the last items, for the signals
        # (event, rows the user already saw, its next-item evaluation)
        self.ranked: list[tuple[int, np.ndarray, int]] = []
        self.rank_slot = np.full(events, -1, np.int64)  # its place among the ranked events
        self.per_chunk = 1  # ranked events per chunk, fixed for the batch


@dataclass
class BatchGradients:
    """A batch's gradients summed per coordinate: linear weights and factor vector rows."""

    index: np.ndarray
    grad: np.ndarray
    factor_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    factor_grad: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    # not empty: ``grad`` and this are increments of FTRL's z and n (an exact walk), and
    # ``factor_grad`` and the next those of the vectors and their AdaGrad sums
    n_step: np.ndarray = field(default_factory=lambda: np.zeros(0))
    factor_n_step: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @classmethod
    def empty(cls) -> BatchGradients:
        return cls(np.zeros(0, np.int64), np.zeros(0))


def evaluation_rows(
    prescore: np.ndarray, origin: np.ndarray, probs: np.ndarray, explicit: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities the metrics score and the rows they evaluate: a row's prescore
    (its prediction when first scored, e.g. at impression time) where it has one, else the
    prediction now (NOT_SCORED); a NOT_EVALUATED prescore is learned but not evaluated."""
    if prescore.size == 0:
        return probs, explicit
    row_prescore = prescore[origin]
    known = np.isfinite(row_prescore)  # NOT_SCORED is NaN
    return np.where(known, row_prescore, probs), explicit & ~(row_prescore == NOT_EVALUATED)


def uniform_draws(seed: int, keys: np.ndarray, size: int) -> np.ndarray:
    """One draw in [0, size) per key, a fixed function of (seed, key): the SplitMix64
    output function (Steele, Lea & Flood 2014) of the key's place in a Weyl sequence."""
    x = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed & (2**64 - 1))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x % np.uint64(max(size, 1))).astype(np.int64)


def rows_with_negatives(
    label: np.ndarray,
    item_rows: np.ndarray,
    known: int,
    negatives: int,
    draw: tuple[int, int],
    blocked: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rows a batch is learned as: each implicit positive (``label == IMPLICIT``) is
    followed by ``negatives`` items drawn uniformly from the ``known`` catalog rows that
    ``blocked`` (None: none) does not mark (hidden, unavailable, deleted, expired); a draw
    equal to the positive moves to the next such row.  Returns each row's event, item,
    label and whether its label was given (explicit) rather than implied.

    ``draw``: (seed, the stream position of the batch's first event).  The k-th negative
    of the event at stream position p is :func:`uniform_draws` of ``p * negatives + k``,
    so what an event draws does not depend on the batch it came in."""
    implicit = label == IMPLICIT
    # the rows drawn from (None: every known row) and each positive's place among them
    # (``size`` when it is not one of them)
    pool: np.ndarray | None = None
    if blocked is None:
        size, at = known, np.where((item_rows >= 0) & (item_rows < known), item_rows, known)
    else:
        pool = np.flatnonzero(~blocked[:known])
        size, at = pool.size, np.full(item_rows.shape, pool.size)
        if pool.size:
            place = np.minimum(np.searchsorted(pool, item_rows), pool.size - 1)
            at = np.where((item_rows >= 0) & (pool[place] == item_rows), place, pool.size)
    others = size - (at < size)
    per_row = np.where(implicit & (item_rows >= 0) & (others >= 1), 1 + negatives, 1)
    origin = np.repeat(np.arange(len(label)), per_row)
    rows = item_rows[origin].copy()
    labels = np.where(implicit, 1.0, label.astype(np.float64))[origin]
    explicit = ~implicit[origin]
    first = np.zeros(len(label) + 1, np.int64)
    np.cumsum(per_row, out=first[1:])
    is_negative = np.ones(origin.size, bool)
    is_negative[first[:-1]] = False
    count = int(is_negative.sum())
    if count:
        event = origin[is_negative]
        place = np.flatnonzero(is_negative) - first[event] - 1  # which of its negatives
        seed, first_event = draw
        drawn = uniform_draws(seed, (first_event + event) * negatives + place, size)
        drawn = np.where(drawn == at[origin[is_negative]], (drawn + 1) % size, drawn)
        rows[is_negative] = drawn if pool is None else pool[drawn]
        labels[is_negative] = 0.0
    return origin, rows, labels, explicit


class Watermark:
    """The highest batch sequence number learned by every shard; awaitable."""

    def __init__(self, value: int = -1) -> None:
        self.value = value
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._counter = 0
        self._failure: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        """No sequence number will be reached any more: every waiter, now or later, gets
        ``error``."""
        self._failure = error
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
        self._waiters.clear()

    def advance(self, seq: int) -> None:
        self.value = max(self.value, seq)
        while self._waiters and self._waiters[0][0] <= self.value:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    async def wait_for(self, seq: int) -> None:
        if seq <= self.value:
            return
        if self._failure is not None:
            raise self._failure
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._counter += 1
        heapq.heappush(self._waiters, (seq, self._counter, future))
        await future


class TrainerActor(Actor):
    """Wraps prediction, metrics, negative sampling and gradient routing for one stream."""

    def __init__(
        self,
        model: Model,
        *,
        inbox: Channel | None,
        grads: Sequence[Channel],
        weights: Channel,
        name: str = "trainer-0",
        shared_replica: bool = True,
    ) -> None:
        super().__init__(name, inbox)
        t = model.config.training
        self.model = model
        self.space = model.space
        self.store = model.store
        self.catalog = model.catalog
        self.users = model.users
        self.metrics: ProgressiveMetrics = model.metrics
        self.factors = model.factors
        self.negatives = t.negatives
        self.hard_negatives = min(model.config.sequence.hard_negatives, t.negatives)
        self.sync = t.sync
        self.max_staleness = 0 if t.sync else t.max_staleness
        self.exclude_seen = t.exclude_seen
        self.seed = model.config.model.seed
        self.dense_factors = model.config.model.factors_dense
        self.grads = grads
        self.weights = weights
        self.shared_replica = shared_replica
        # FTRL's z and n are here (the shards' own arrays in one process, a replica the
        # weight deltas keep in a cluster): each batch is walked event by event
        self.exact = isinstance(model.params, FTRLParams)
        self.exact_factors = self.exact and t.exact_factors
        self._acked = asyncio.Event()
        self.freshness = LatencyWindow()
        self.staleness_sum = 0
        self.staleness_max = 0
        self.learned = Watermark()
        self.aggregate = GradientAggregator(self.space.size)
        size = self.factors.params.size if self.factors else 0
        self.factor_step = FactorAggregator(self.space.size, size) if self.factors else None
        self.scorer = FactorScorer(self.factors) if self.factors else None
        # scratch slots of the exact walk (linear coordinates, vector rows)
        self.slots = (self.aggregate.scratch, np.full(size or 1, -1, np.int32))
        self._pending: dict[int, tuple[int, float]] = {}
        # the last batch's labelled events and the scores they were evaluated with
        self.scored = (np.zeros(0, np.int64), np.zeros(0))
        self.batches = 0
        self.busy_seconds = 0.0

    @property
    def events(self) -> int:
        return self.model.stream.events

    @property
    def rows(self) -> int:
        return self.model.stream.rows

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
        steps = self.train_steps(message)
        while True:  # the batch's work, letting the loop run at each pause
            try:
                work = next(steps)
            except StopIteration as done:
                step: BatchGradients = done.value
                break
            await (asyncio.sleep(0) if work is None else asyncio.to_thread(work))
        self._pending[message.seq] = (len(self.grads), message.created_at)
        shards = len(self.grads)
        linear = split_columns_by_shard(step.index, (step.grad, step.n_step), shards)
        factor = split_columns_by_shard(
            step.factor_index, (step.factor_grad, step.factor_n_step), shards
        )
        for shard, ((idx, (g, dn)), (fidx, (fg, fdn))) in enumerate(
            zip(linear, factor, strict=True)
        ):
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
                n_step=dn,
                factor_n_step=fdn,
            )
            await self.grads[shard].send(grad)
        self.busy_seconds += time.perf_counter() - started
        if self.sync:
            await self.learned.wait_for(message.seq)

    def train_batch(self, batch: FeatureBatch) -> BatchGradients:
        """Score, evaluate and differentiate one batch; returns its summed gradients."""
        steps = self.train_steps(batch)
        while True:
            try:
                work = next(steps)
            except StopIteration as done:
                result: BatchGradients = done.value
                return result
            if work is not None:
                work()

    def train_steps(self, batch: FeatureBatch) -> Generator[Pause, None, BatchGradients]:
        """:meth:`train_batch` in steps: it pauses (yields) between parts of the batch's
        work where the caller may let other tasks run; what they see meanwhile is the
        model with the batch's users followed up to some event, never a torn array."""
        n = len(batch)
        self.model.stream.events += n
        self.batches += 1
        self.scored = (np.zeros(0, np.int64), np.zeros(0))
        if n == 0:
            return BatchGradients.empty()
        if batch.dense.size:
            indptr, indices, values = expand_dense(self.space, batch.dense)
            factor_rows = None
            if self.factors is not None and self.dense_factors:
                factor_rows = expand_dense_factors(batch.dense, self.factors.params.mask)
            labels = batch.label.astype(np.float64)
            weights = batch.weight
            explicit = np.ones(n, bool)
            origin = np.arange(n)
        else:
            rows = yield from self._interaction_rows(batch)
            origin, labels, explicit = rows.origin, rows.labels, rows.explicit
            (indptr, indices, values), factor_rows = rows.linear, rows.factor
            weights = batch.weight[origin]
        probs, step = self._learning_step((indptr, indices, values), factor_rows, labels, weights)
        scores, evaluated = evaluation_rows(batch.prescore, origin, probs, explicit)
        self.scored = (origin[evaluated], scores[evaluated])
        if evaluated.any():
            self.metrics.update_labelled(scores[evaluated], labels[evaluated], weights[evaluated])
        self.model.stream.rows += int(labels.size)
        return step

    def _learning_step(
        self,
        linear: tuple[np.ndarray, np.ndarray, np.ndarray],
        factor_rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        labels: np.ndarray,
        weights: np.ndarray,
    ) -> tuple[np.ndarray, BatchGradients]:
        """The rows' predictions and what the shards learn from them: increments of an
        exact walk (FTRL; with factor terms when ``training.exact_factors``), or summed
        gradients (SGD, or factor terms summed per batch)."""
        if self.exact_factors and factor_rows is not None and self.factors is not None:
            assert isinstance(self.model.params, FTRLParams)
            probs, touched, dz, dn, frows, dv, dvn = fm_sequential_increments(
                (self.store.z, self.store.n, self.factors), linear, factor_rows, labels,
                weights, self.model.params, self.slots,
            )  # fmt: skip
            step = BatchGradients(touched, dz, frows, dv, n_step=dn, factor_n_step=dvn)
        elif self.exact and factor_rows is None:
            assert isinstance(self.model.params, FTRLParams)
            probs, touched, dz, dn = self.aggregate.sequential_increments(
                self.store.z, self.store.n, *linear, labels, weights, self.model.params
            )
            step = BatchGradients(touched, dz, n_step=dn)
        elif factor_rows is None or self.factor_step is None or self.factors is None:
            probs, touched, grads = self.aggregate.logistic_step(
                self.store.w, *linear, labels, weights
            )
            step = BatchGradients(touched, grads)
        else:
            probs, touched, grads, ftouched, fgrads = self.factor_step.logistic_step(
                self.store.w, self.factors.v, linear, factor_rows, labels, weights
            )
            step = BatchGradients(touched, grads, ftouched, fgrads)
        return probs, step

    def _interaction_rows(self, batch: FeatureBatch) -> Generator[Pause, None, InteractionRows]:
        """An interaction batch's training rows: each event with the user's history and
        signals as of that event, then its sampled negatives; linear and factor entries."""
        user = BaseFeatures(batch.user_ptr, batch.user_ns, batch.user_raw, batch.user_x)
        blocked = self._blocked(batch)
        origin, item_rows, labels, explicit = self._rows_with_negatives(batch, blocked)
        sequence = self.model.sequence
        signals = np.zeros((origin.size, len(sequence.names))) if sequence else None
        if batch.item_rows.size and (batch.item_rows >= 0).any():
            rows = EventRows(origin, item_rows, labels, signals, blocked)
            user = yield from self._walk_events(batch, user, rows)
        self.model.observe(batch.users, batch.item_rows)
        rows_user = take_rows(user, origin)
        tail = (
            (sequence.index, signals) if sequence is not None and signals is not None else NO_TAIL
        )
        linear = expand(self.space, rows_user, item_rows, self.catalog, tail)
        factor = None
        if self.factors is not None:
            factor = expand_factors(rows_user, item_rows, self.catalog, self.factors.params.mask)
        return InteractionRows(origin, labels, explicit, linear, factor)

    def _blocked(self, batch: FeatureBatch) -> np.ndarray | None:
        """The catalog rows known at the batch that are hidden, unavailable, deleted or
        expired at its stream time (its latest event time): never sampled as negatives
        nor ranked by the progressive evaluation (None: no such row)."""
        times = batch.ts[np.isfinite(batch.ts)]
        now = float(times.max()) if times.size else -math.inf
        return self.catalog.blocked(now, self.catalog.known_at(batch.seq))

    def _rows_with_negatives(
        self, batch: FeatureBatch, blocked: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        known = self.catalog.known_at(batch.seq)
        first_event = self.model.stream.events - len(batch)  # train_steps counted the batch
        return rows_with_negatives(
            batch.label, batch.item_rows, known, self.negatives, (self.seed, first_event), blocked
        )

    def _walk_events(
        self, batch: FeatureBatch, user: BaseFeatures, rows: EventRows
    ) -> Generator[Pause, None, BaseFeatures]:
        """Event by event, in stream order: the event's signals (and hard negatives) from
        what came before it, its ranking if flagged, then it joins the user's history and
        the signals' statistics, so the next event sees it.  The users' histories are
        followed here; the signals walk compiled (:meth:`SequenceSignals.walk`), in
        chunks small enough that their whole-catalog values of ranked events fit
        ``RANKED_BYTES``.

        Returns the user rows with each user's recent items as of that event (when
        ``users.recent_len``), so an event is learned with the history it was ranked with.
        """
        known = self.catalog.known_at(batch.seq)
        walk = yield from self._follow_users(batch, known, rows.blocked)
        if self.users.recent_len > 0:
            user = with_histories(self.space, self.catalog, user, walk.recent)
        events = self._signal_events(batch, rows, walk)
        sequence = self.model.sequence
        # the rows as of this batch, not len(catalog): the featurizer adds the next batches'
        # items while this pauses, and the shares' n must not depend on how far it got
        n_catalog = known
        if sequence is not None:  # a doubling of the statistics copies them: off the loop
            yield sequence.stats.growth(n_catalog)
        for lo, hi in self._chunks(walk.rank_slot, walk.per_chunk):
            ranked = None
            if sequence is not None and rows.signals is not None:
                part = events.between(lo, hi)
                seed = int(np.random.default_rng([self.seed, batch.seq, lo]).integers(2**31))
                hard = (self.hard_negatives, known, seed)
                values, ranked = sequence.walk(part, n_catalog, hard, rows.blocked)
                rows.signals[events.row_first[lo] : events.row_first[hi]] = values
                yield None
            in_chunk = [entry for entry in walk.ranked if lo <= entry[0] < hi]
            first_slot = walk.rank_slot[in_chunk[0][0]] if in_chunk else 0
            for done, (r, exclude, evaluation) in enumerate(in_chunk, 1):
                signals = ranked[walk.rank_slot[r] - first_slot] if ranked is not None else None
                self._evaluate_ranking(
                    user.row(r), signals, int(batch.item_rows[r]), exclude, known, evaluation
                )
                if done % RANKINGS_PER_PAUSE == 0:
                    yield None
        return user

    def _follow_users(
        self, batch: FeatureBatch, known: int, blocked: np.ndarray | None = None
    ) -> Generator[Pause, None, UserWalk]:
        """Each event's user as of that event (recent items, sequence, what they saw
        when it is ranked, with the ``blocked`` rows), the popularity baseline's
        test-then-train; then the event joins the user's history and the relevant sets of
        the user's earlier next-item evaluations."""
        users, popularity, next_item = self.users, self.metrics.popularity, self.metrics.next_item
        never = np.flatnonzero(blocked) if blocked is not None else np.zeros(0, np.int64)
        names = batch.users or [""] * len(batch)
        marks_seen, positive = seen_flags(batch), (batch.label != NEGATIVE).tolist()
        times = batch.ts.tolist()
        walk = UserWalk(len(batch))
        walk.per_chunk = self._ranked_per_chunk(known)
        for r, item in enumerate(batch.item_rows.tolist()):
            name = names[r]
            if users.recent_len:
                walk.recent.append(tuple(users.recent.get(name, ())) if name else ())
            if item < 0:
                walk.sequences.append(())
                continue
            walk.sequences.append(tuple(users.sequences.get(name, ())) if name else ())
            if name:
                next_item.observe(name, item)
            if batch.rank_eval[r]:
                seen = users.seen(name) if self.exclude_seen else set()
                exclude = np.fromiter(seen, np.int64, len(seen))
                if never.size:  # the held-out item always competes
                    exclude = np.concatenate([exclude, never[never != item]])
                walk.rank_slot[r] = len(walk.ranked)
                walk.ranked.append((r, exclude, next_item.begin(name, item)))
                if popularity is not None:
                    self.metrics.popularity_ranking.update(
                        popularity.evaluate(exclude, item, known)
                    )
            if name:
                users.add(name, item, marks_seen[r], positive[r], times[r])
            if popularity is not None:
                popularity.learn(item)
            if r % EVENTS_PER_PAUSE == EVENTS_PER_PAUSE - 1:
                yield None
        return walk

    def _signal_events(self, batch: FeatureBatch, rows: EventRows, walk: UserWalk) -> SignalEvents:
        n = len(batch)
        lengths = np.fromiter(map(len, walk.sequences), np.int64, n)
        seq_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=seq_ptr[1:])
        seq_rows = np.fromiter(
            itertools.chain.from_iterable(walk.sequences), np.int64, int(seq_ptr[-1])
        )
        row_first = np.searchsorted(rows.origin, np.arange(n + 1))
        draw = rows.labels[np.minimum(row_first[:-1], rows.labels.size - 1)] == 1.0
        named = np.array([bool(u) for u in batch.users], bool) if batch.users else np.zeros(n, bool)
        return SignalEvents(
            seq_ptr, seq_rows, named, batch.item_rows, batch.label != NEGATIVE, batch.ts,
            row_first, rows.item_rows, walk.rank_slot, draw,
        )  # fmt: skip

    def _ranked_per_chunk(self, known: int) -> int:
        names = len(self.model.sequence.names) if self.model.sequence is not None else 1
        return max(1, RANKED_BYTES // (8 * names * max(known, 1)))

    @staticmethod
    def _chunks(rank_slot: np.ndarray, per_chunk: int) -> list[tuple[int, int]]:
        """Event ranges that each hold at most ``per_chunk`` ranked events and at most
        EVENTS_PER_PAUSE events: the loop runs between two (a whole batch walked at once
        held it 5-15 ms)."""
        ranked = np.flatnonzero(rank_slot >= 0)
        cuts = sorted(
            {
                0,
                rank_slot.size,
                *(int(r) + 1 for r in ranked[per_chunk - 1 :: per_chunk]),
                *range(EVENTS_PER_PAUSE, rank_slot.size, EVENTS_PER_PAUSE),
            }
        )
        return [(lo, hi) for lo, hi in itertools.pairwise(cuts) if hi > lo] or [(0, 0)]

    def _evaluate_ranking(
        self,
        row: BaseFeatures,
        signals: np.ndarray | None,
        item: int,
        exclude: np.ndarray,
        known: int,
        evaluation: int,
    ) -> None:
        """The rank of ``item`` among the ``known`` catalog rows, by the model and by each
        sequence signal alone (``signals``: their whole-catalog values for this event),
        and the model's top rows for the next-item ``evaluation``."""
        candidates = np.arange(known) if known < len(self.catalog) else None
        sequence = self.model.sequence
        terms = None
        if sequence is not None and signals is not None:
            signals = signals[:, : len(self.catalog) if candidates is None else known]
            terms = sequence.terms(self.store.w, signals)
        scores = score_items(
            self.space, row, self.catalog, self.store.w, candidates, self.scorer, terms
        )
        top = top_rows(scores, self.metrics.next_item.k, exclude, keep=item)
        self.metrics.next_item.ranked(evaluation, top)
        if sequence is None or signals is None:
            self.metrics.ranking.update(rank_of(scores, item, exclude))
            return
        ranks = ranks_of(np.vstack([scores[None, :], signals]), item, exclude).tolist()
        self.metrics.ranking.update(ranks[0])
        for name, rank in zip(sequence.names, ranks[1:], strict=True):
            self.metrics.signal(name).update(rank)

    async def _replica_loop(self) -> None:
        """Apply weight deltas to the replica; a delta of our own batch is also its ack."""
        while True:
            delta: WeightDelta = await self.weights.recv()
            if not self.shared_replica:
                self.model.apply_delta(delta)
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
