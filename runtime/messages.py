"""Typed, versioned messages between actors.

Every message is a batch (columnar numpy arrays), never one event: per-message
overhead in Python is microseconds, so throughput comes from amortising it.
Each class is registered with the codec, so it can cross a process boundary
(Kafka) or be forced through msgpack in tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Final

import numpy as np

from runtime.codec import register_message

# The codes of the batch columns.  Plain ints and floats rather than enums: numba
# kernels and numpy comparisons take them as they are.

# ``kind``: what an event is
INTERACTION: Final = 0
ITEM_UPSERT: Final = 1  # an item's features for the catalog; no example is learned from it

# ``label`` (and :attr:`actors.events.Event.label`): given, or implied by the event
NEGATIVE: Final = 0
POSITIVE: Final = 1
IMPLICIT: Final = -1  # no label given: a positive, learned with sampled negatives

# ``lifecycle``: what an item upsert changes of its item's lifecycle (bits; 0: nothing)
LIFECYCLE_HIDE: Final = 1
LIFECYCLE_UNHIDE: Final = 2
LIFECYCLE_UNAVAILABLE: Final = 4
LIFECYCLE_AVAILABLE: Final = 8
LIFECYCLE_EXPIRES: Final = 16  # the ``expires_at`` column holds the time (inf: never)
LIFECYCLE_DELETE: Final = 32
LIFECYCLE_KEEP_FEATURES: Final = 64  # no item_features given: the item keeps its features

# ``prescore``: the probability when an impression was shown, or one of these
NOT_SCORED: Final = math.nan  # none: the metrics use the prediction at learning time
NOT_EVALUATED: Final = -1.0  # learned but not evaluated by the progressive metrics


def _i64(values: object = ()) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def take_optional(column: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The entries of ``rows`` in a column that may be empty (``prescore``, ``seen``): an
    empty column stays empty, meaning its default for every event."""
    return column[rows] if column.size else column[:0]


def seen_flags(batch: EventBatch | FeatureBatch) -> list[bool]:
    """Per event, whether its item joins the user's seen items."""
    return batch.seen.tolist() if batch.seen.size else [True] * len(batch)


@register_message
@dataclass
class EventBatch:
    """Validated events (and item upserts) in ingest order.

    Strings travel as one UTF-8 buffer plus offsets so hashing runs over whole
    columns.  ``kind`` is :data:`INTERACTION` or :data:`ITEM_UPSERT`.  Sparse
    features are CSR (``feat_ptr`` per event) with a namespace index per entry;
    dense columns (one value per event, from TSV logs) are separate.
    """

    KIND: ClassVar[str] = "event_batch"
    VERSION: ClassVar[int] = 2  # 2: ``seen``; a version 1 message has none (all seen)

    seq: int
    users: list[str]
    items: list[str]
    kind: np.ndarray  # uint8
    ts: np.ndarray  # float64, nan = unknown
    label: np.ndarray  # int8: NEGATIVE, POSITIVE or IMPLICIT
    weight: np.ndarray  # float64
    rank_eval: np.ndarray  # bool: rank this event against the catalog before learning it
    created_at: float = 0.0  # wall-clock time the batch was ingested (freshness)
    # where the batch came from in the events topic (-1: not from Kafka); shards use it
    # to apply each events record at most once
    source_partition: int = -1
    source_offset: int = -1
    # per items-topic partition, the last offset this batch may depend on (causal catalog)
    items_upto: list[int] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    feat_ptr: np.ndarray = field(default_factory=lambda: _i64([0]))
    feat_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    feat_data: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    feat_off: np.ndarray = field(default_factory=lambda: _i64([0]))
    feat_x: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    col_names: list[str] = field(default_factory=list)
    col_data: list[np.ndarray] = field(default_factory=list)
    col_off: list[np.ndarray] = field(default_factory=list)
    # per event, the probability the model gave it when first scored (an impression's, at
    # impression time); the metrics use it instead of the one at learning time.
    # NOT_SCORED: none; NOT_EVALUATED: learned but not evaluated; empty (older
    # messages): none for every event
    prescore: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    # per event, whether its item joins the user's seen items (a feedback type's ``seen``);
    # empty: every event's does (no event had a type that is not seen)
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # per event, the LIFECYCLE_* bits of an item upsert and its expiry time (Unix seconds;
    # inf: none); both empty when no event of the batch changes a lifecycle
    lifecycle: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    expires_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))

    def __len__(self) -> int:
        return int(self.label.shape[0])


@register_message
@dataclass
class FeatureBatch:
    """Interactions with their user/context-side base features hashed.

    Item-side features are looked up in the catalog by ``item_rows`` (-1: no item).
    ``dense`` holds the value hashes of dense columns when the batch came from a
    columnar log with no items (the fast CTR path); then ``user_*`` is empty.
    """

    KIND: ClassVar[str] = "feature_batch"
    VERSION: ClassVar[int] = 2  # 2: ``seen``; a version 1 message has none (all seen)

    seq: int
    users: list[str]
    item_rows: np.ndarray  # int64
    ts: np.ndarray
    label: np.ndarray  # int8
    weight: np.ndarray
    rank_eval: np.ndarray
    user_ptr: np.ndarray
    user_ns: np.ndarray  # uint32
    user_raw: np.ndarray  # uint32
    user_x: np.ndarray  # float64
    created_at: float = 0.0
    source_partition: int = -1
    source_offset: int = -1
    dense: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint32))
    prescore: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # as EventBatch's
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # as EventBatch's

    def __len__(self) -> int:
        return int(self.label.shape[0])


@register_message
@dataclass
class GradBatch:
    """The gradients of one batch for one shard, in stream order, on shard-local indices."""

    KIND: ClassVar[str] = "grad_batch"
    VERSION: ClassVar[int] = 2

    seq: int
    shard: int
    index: np.ndarray  # int64, shard-local
    grad: np.ndarray  # float64
    trainer: str = "trainer-0"
    created_at: float = 0.0
    source_partition: int = -1
    source_offset: int = -1
    # factorization terms (model.factors > 0): shard-local vector rows and their summed
    # gradients, one row of k per index
    factor_index: np.ndarray = field(default_factory=lambda: _i64())
    factor_grad: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    # version 2: when not empty, ``grad`` holds increments of FTRL's z and this those of
    # n, one per index (the trainer walked the batch event by event: actors/ftrl.py);
    # likewise ``factor_grad`` increments of the vectors and this of their AdaGrad sums
    n_step: np.ndarray = field(default_factory=lambda: np.zeros(0))
    factor_n_step: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


@register_message
@dataclass
class WeightDelta:
    """A shard applied the gradients of ``trainer``'s batch ``seq``: the new weights of the
    coordinates it touched (global indices, absolute values, so re-applying is harmless).

    Every weight replica (trainers, rankers) applies these; a trainer also takes the
    delta of its own batch as the acknowledgement that the shard has learned it.
    """

    KIND: ClassVar[str] = "weight_delta"
    VERSION: ClassVar[int] = 2

    seq: int
    shard: int
    trainer: str
    index: np.ndarray  # int64, global feature indices
    w: np.ndarray  # float64
    created_at: float  # when the events of the batch were ingested (for freshness)
    factor_index: np.ndarray = field(default_factory=lambda: _i64())  # global vector rows
    factor_v: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # their new vectors
    # version 2, FTRL: the coordinates' z and n, so that a trainer's replica can walk its
    # next batch event by event as the one-process trainer does (actors/ftrl.py)
    z: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n: np.ndarray = field(default_factory=lambda: np.zeros(0))
    factor_n: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # AdaGrad sums


@register_message
@dataclass
class WeightSnapshot:
    """One piece of a shard's whole slice of the weights, as a replica holds it after reading
    the shard's weights partition through offset ``covers`` (runtime/bootstrap.py).

    The columns are a :class:`WeightDelta`'s (global indices, absolute values) over every
    coordinate and vector row that differs from a fresh model, so a replica applies a
    piece as it applies a delta.  A snapshot is ``pieces`` records of one ``generation``,
    written in one of two ``slot`` s by turns (the compacted topic's key is shard, slot and
    piece), so a write cut short leaves the other slot's snapshot whole.  ``settings``:
    the shard's model settings (JSON), to refuse a snapshot of another config.
    """

    KIND: ClassVar[str] = "weight_snapshot"
    VERSION: ClassVar[int] = 1

    shard: int
    shards: int
    settings: str
    generation: int
    slot: int
    piece: int
    pieces: int
    covers: int  # the weights offset of the shard's partition this state follows
    index: np.ndarray  # int64, global feature indices
    w: np.ndarray
    z: np.ndarray  # empty under SGD, as in a delta
    n: np.ndarray
    factor_index: np.ndarray
    factor_v: np.ndarray
    factor_n: np.ndarray
    created_at: float


@register_message
@dataclass
class UserRecommendations:
    """One user's fresh top k, published by a cluster trainer after a learned batch that
    touched the user (``sink.recommendations``).  One user per record, unlike the other
    messages: the topic is compacted by user, so it holds each user's latest list.

    The model version it reflects: the last record of each weights partition and of
    each items partition the trainer's replicas had applied, and the events record
    (``events_partition``, ``events_offset``) whose batch was just learned.
    """

    KIND: ClassVar[str] = "user_recommendations"
    VERSION: ClassVar[int] = 1

    user: str
    items: list[str]
    scores: list[float]
    seq: int
    trainer: str
    events_partition: int
    events_offset: int
    weights_offsets: list[int]
    items_offsets: list[int]
    created_at: float


@register_message
@dataclass
class EventScores:
    """The labelled events of one learned batch with the probability the model gave each
    before learning it (its prescore when it had one), published by a cluster trainer
    (``sink.scores``); the events record is (``events_partition``, ``events_offset``)."""

    KIND: ClassVar[str] = "event_scores"
    VERSION: ClassVar[int] = 1

    seq: int
    trainer: str
    events_partition: int
    events_offset: int
    users: list[str]
    items: list[str]  # "" for an event without an item (a row of a CTR log)
    labels: np.ndarray  # float64
    scores: np.ndarray  # float64
    ts: np.ndarray  # float64
    created_at: float


@register_message
@dataclass
class RecommendRequest:
    """``GET /v1/recommend?user=&k=`` over Kafka: answered by one ranker (of the rankers'
    consumer group) on the replies topic under the same ``correlation_id``, unless
    ``deadline`` (Unix seconds) has passed, which is answered as an error."""

    KIND: ClassVar[str] = "recommend_request"
    VERSION: ClassVar[int] = 1

    correlation_id: str
    user: str
    k: int
    deadline: float


@register_message
@dataclass
class RecommendReply:
    """The answer to a :class:`RecommendRequest`: the items, or ``error`` saying why not."""

    KIND: ClassVar[str] = "recommend_reply"
    VERSION: ClassVar[int] = 1

    correlation_id: str
    user: str
    items: list[str]
    scores: list[float]
    error: str
    ranker: str


@register_message
@dataclass
class DeadLetters:
    """Rejected input with the reason each was rejected."""

    KIND: ClassVar[str] = "dead_letters"
    VERSION: ClassVar[int] = 1

    source: str
    reasons: list[str]
    payloads: list[str]
    ts: float
