"""TOML configuration: typed sections with defaults and clear errors for bad values."""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.delayed import LATE_POLICIES
from actors.events import DEFAULT_FEEDBACK_TYPES, FeedbackType
from actors.exploration import MAX_SCALE
from runtime.errors import SetupError


class ConfigError(SetupError, ValueError):
    """A config file or value that cannot be used; the message names the key."""

    cli_label = "config error"


@dataclass
class ModelConfig:
    bits: int = 22
    seed: int = 0
    crosses: list[list[str]] = field(
        default_factory=lambda: [
            ["user", "i.genre"],
            ["u.age", "item"],
            ["u.gender", "item"],
            ["u.occupation", "item"],
        ]
    )
    # factorization-machine terms: k factors per hashed base feature (0: linear model only)
    factors: int = 8
    factor_bits: int = 18
    factor_init: float = 0.02  # std of the seeded start of the vectors
    # a user's most recent items as user-side features "h.item=<id>" (0: none)
    history: int = 10
    # factor terms also between the columns of CTR files (the replay fast path); off by
    # default: on the 7,200-row Criteo sample they made logloss worse (bench/README.md)
    factors_dense: bool = False
    # extra stateful parts, "module:factory" (factory(config) -> component): see
    # docs/architecture.md, "Adding a model component"
    components: list[str] = field(default_factory=list)

    def check(self) -> None:
        for path in self.components:
            _require(
                isinstance(path, str) and path.count(":") == 1 and all(path.split(":")),
                "model.components",
                "must be a list of 'module:factory' import paths",
                path,
            )
        _require(1 <= self.bits <= 30, "model.bits", "must be in 1..30", self.bits)
        _require(0 <= self.factors <= 256, "model.factors", "must be in 0..256", self.factors)
        _require(
            1 <= self.factor_bits <= 28,
            "model.factor_bits",
            "must be in 1..28 (above model.bits it is model.bits)",
            self.factor_bits,
        )
        _require(self.factor_init >= 0, "model.factor_init", "must be >= 0", self.factor_init)
        _require(0 <= self.history <= 100, "model.history", "must be in 0..100", self.history)
        for pair in self.crosses:
            _require(
                len(pair) == 2 and all(isinstance(p, str) and p for p in pair),
                "model.crosses",
                "must be a list of [user_side_namespace, item_side_namespace] pairs",
                pair,
            )
            _check_cross(pair[0], pair[1])


ITEM_SIDE = "'item' or 'i.<name>' (an event's item_features)"
USER_SIDE = "'user', 'u.<name>', 'c.<name>', 'h.item' or a CTR file's column"


def _is_item_side(namespace: str) -> bool:
    return namespace == "item" or (namespace.startswith("i.") and len(namespace) > 2)


def _check_cross(user_side: str, item_side: str) -> None:
    """A cross whose item side is not an item namespace never yields a feature (the
    model silently lacks it), so it is refused with the namespaces that would work;
    a user side that is no event namespace may be a CTR file's column (those are named
    freely): see :func:`column_crosses`."""
    pair = [user_side, item_side]
    if _is_item_side(user_side) and not _is_item_side(item_side):
        raise ConfigError(f"model.crosses {pair}: a pair is [user side, item side]: swap them")
    _require(
        _is_item_side(item_side),
        "model.crosses",
        f"pairs must name an item-side namespace second, {ITEM_SIDE}: {item_side!r} "
        "is none, so the cross would never yield a feature",
        pair,
    )
    _require(
        not _is_item_side(user_side) and user_side not in ("u.", "c.", "h.")
        and not (user_side.startswith("h.") and user_side != "h.item"),
        "model.crosses",
        f"pairs must name a user/context-side namespace first, {USER_SIDE}",
        pair,
    )  # fmt: skip


def column_crosses(crosses: list[list[str]]) -> list[list[str]]:
    """The crosses whose user side is no event namespace: only a CTR file's column of
    that name can feed them (an event never does)."""
    events = ("user", "h.item")
    return [
        pair for pair in crosses if pair[0] not in events and not pair[0].startswith(("u.", "c."))
    ]


def warn_column_crosses(crosses: list[list[str]]) -> None:
    """One warning line at start for :func:`column_crosses` (a typo looks like one)."""
    if crosses:
        logging.getLogger("freshrank").warning(
            "model.crosses %s: no event has these user-side namespaces (user, u.<name>, "
            "c.<name>, h.item); only a CTR file's columns of those names feed them",
            crosses,
        )


@dataclass
class FTRLConfig:
    alpha: float = 0.1
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 0.0
    factor_alpha: float = 0.16  # AdaGrad rate of the factor vectors (model.factors > 0)
    factor_l2: float = 0.0

    def check(self) -> None:
        _require(self.alpha > 0, "ftrl.alpha", "must be > 0", self.alpha)
        _require(self.factor_alpha > 0, "ftrl.factor_alpha", "must be > 0", self.factor_alpha)
        for key in ("beta", "l1", "l2", "factor_l2"):
            _require(getattr(self, key) >= 0, f"ftrl.{key}", "must be >= 0", getattr(self, key))


OPTIMIZERS = ("ftrl", "sgd")
SGD_RATES = ("constant", "invsqrt", "adagrad")


@dataclass
class OptimizerConfig:
    """Which learner updates the linear weights: FTRL-Proximal (``[ftrl]``) or plain SGD
    (actors/sgd.py) with the rate, ``eta`` and ``l2`` here."""

    kind: str = "ftrl"
    rate: str = "adagrad"  # sgd: constant | invsqrt | adagrad
    eta: float = 0.05
    l2: float = 0.0

    def check(self) -> None:
        _require(self.kind in OPTIMIZERS, "optimizer.kind",
                 f"must be one of {', '.join(OPTIMIZERS)}", self.kind)  # fmt: skip
        _require(self.rate in SGD_RATES, "optimizer.rate",
                 f"must be one of {', '.join(SGD_RATES)}", self.rate)  # fmt: skip
        _require(0 < self.eta < float("inf"), "optimizer.eta", "must be finite and > 0",
                 self.eta)  # fmt: skip
        _require(0 <= self.l2 < float("inf"), "optimizer.l2", "must be finite and >= 0",
                 self.l2)  # fmt: skip


@dataclass
class TrainingConfig:
    shards: int = 1
    batch_size: int = 256
    negatives: int = 8
    sync: bool = True
    max_staleness: int = 1  # asynchronous mode: batches in flight before scoring waits
    rank_eval_every: int = 20
    # ingest ranks at most about this many catalog rows per learned interaction (0: no
    # bound): every rank_eval_every-th interaction, but no closer than catalog rows / this
    rank_eval_rows: float = 2.0
    rank_k: int = 10
    exclude_seen: bool = True
    popularity_baseline: bool = True
    auc_window: int = 1_000_000
    # precision@k / recall@k / F1@k: the relevant set is the user's next N items
    relevant_next: int = 1
    # precision / recall / F1 of labelled events: predicted positive at p >= threshold
    threshold: float = 0.5
    # the factor terms walked event by event like the linear part (with FTRL); off: a
    # batch's factor gradients are summed and applied once, with the weights from before it
    exact_factors: bool = True
    # a ranked event starts a new batch, so its ranking sees every earlier event and the
    # progressive HR@k / NDCG@k do not depend on the batch size (one batch per ranking)
    exact_rankings: bool = False

    def check(self) -> None:
        _require(1 <= self.relevant_next <= 1000, "training.relevant_next", "must be in 1..1000",
                 self.relevant_next)  # fmt: skip
        _require(0 <= self.threshold <= 1, "training.threshold", "must be in [0, 1]",
                 self.threshold)  # fmt: skip
        _require(1 <= self.shards <= 1024, "training.shards", "must be in 1..1024", self.shards)
        _require(self.batch_size >= 1, "training.batch_size", "must be >= 1", self.batch_size)
        _require(
            0 <= self.negatives <= 100, "training.negatives", "must be in 0..100", self.negatives
        )
        _require(
            self.rank_eval_every >= 0,
            "training.rank_eval_every",
            "must be >= 0",
            self.rank_eval_every,
        )
        _require(
            self.rank_eval_rows >= 0,
            "training.rank_eval_rows",
            "must be >= 0 (0: no bound)",
            self.rank_eval_rows,
        )
        _require(self.rank_k >= 1, "training.rank_k", "must be >= 1", self.rank_k)
        _require(
            self.max_staleness >= 0, "training.max_staleness", "must be >= 0", self.max_staleness
        )
        _require(
            self.auc_window >= 0,
            "training.auc_window",
            "must be >= 0 (0: unbounded)",
            self.auc_window,
        )


@dataclass
class QueueConfig:
    maxsize: int = 64
    codec_roundtrip: bool = False

    def check(self) -> None:
        _require(self.maxsize >= 1, "queues.maxsize", "must be >= 1", self.maxsize)


@dataclass
class IngestConfig:
    dead_letter_path: str = "state/dead_letters.jsonl"
    max_body_bytes: int = 16 * 1024 * 1024
    max_events_per_request: int = 100_000
    max_features_per_event: int = 1000
    max_string_len: int = 1024
    # admission control for POST /v1/events (429 + Retry-After past either bound)
    max_pending_events: int = 100_000  # accepted over HTTP and not yet learned
    max_inflight_requests: int = 256  # ingest requests being read, queued or waited on
    retry_after_s: int = 1  # the Retry-After header of a 429
    # plausible event times: a ts further ahead of the server clock, or before min_ts,
    # is refused with its reason (it would move trends and the label watermark)
    max_ahead_s: float = 86_400.0
    min_ts: float = 0.0

    def check(self) -> None:
        for key in (
            "max_body_bytes",
            "max_events_per_request",
            "max_features_per_event",
            "max_string_len",
            "max_pending_events",
            "max_inflight_requests",
        ):
            _require(getattr(self, key) >= 1, f"ingest.{key}", "must be >= 1", getattr(self, key))
        _require(self.max_ahead_s >= 0, "ingest.max_ahead_s", "must be >= 0", self.max_ahead_s)
        _require(
            self.max_pending_events >= self.max_events_per_request,
            "ingest.max_pending_events",
            f"must be >= ingest.max_events_per_request ({self.max_events_per_request}), "
            "or a request of that size could never be admitted",
            self.max_pending_events,
        )
        _require(
            self.retry_after_s >= 0, "ingest.retry_after_s", "must be >= 0", self.retry_after_s
        )


@dataclass
class HTTPConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    # bearer token for every endpoint but /v1/healthz: "env:NAME" reads $NAME; empty reads
    # $FRESHRANK_TOKEN; none at all is only allowed on a loopback host.  repr=False: never logged
    token: str = field(default="", repr=False)
    metrics_public: bool = False  # GET /metrics without the token (a scraper on a private net)
    log_format: str = "text"  # "text" or "json" (one object per line)
    access_log: bool = True  # one log line per request
    max_connections: int = 1000  # requests handled at once; past it 503 + Retry-After
    # a request's headers not complete within this (from the connection's start or their
    # first byte): 408 and closed, so clients that trickle headers cannot hold connections
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0  # a request body not read within this: 408
    keepalive_timeout_s: float = 75.0  # an idle connection (or one that never sends) is closed
    max_k: int = 1000  # GET /v1/recommend limits
    max_candidates: int = 1000
    max_context_keys: int = 64
    # an unknown or repeated query parameter is a 400 (false: ignored, the first one wins)
    strict_params: bool = True
    # the dashboard's history: sampled every dashboard_sample_s from the start, the last
    # dashboard_history_s kept (a day at 5 s: 17,280 samples, a few megabytes)
    dashboard_sample_s: float = 5.0
    dashboard_history_s: float = 86400.0

    def check(self) -> None:
        _require(0 <= self.port <= 65535, "http.port", "must be in 0..65535", self.port)
        _require(
            0.1 <= self.dashboard_sample_s <= self.dashboard_history_s,
            "http.dashboard_sample_s",
            "must be >= 0.1 seconds and at most http.dashboard_history_s",
            self.dashboard_sample_s,
        )
        _require(
            self.dashboard_history_s / self.dashboard_sample_s <= 1_000_000,
            "http.dashboard_history_s",
            "keeps at most 1,000,000 samples (dashboard_history_s / dashboard_sample_s)",
            self.dashboard_history_s,
        )
        _require(
            self.log_format in ("text", "json"),
            "http.log_format",
            'must be "text" or "json"',
            self.log_format,
        )
        for key in ("max_connections", "max_k", "max_candidates", "max_context_keys"):
            _require(getattr(self, key) >= 1, f"http.{key}", "must be >= 1", getattr(self, key))
        for key in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            _require(
                getattr(self, key) > 0, f"http.{key}", "must be > 0 seconds", getattr(self, key)
            )
        if self.token.startswith("env:"):
            name = self.token[4:]
            _require(
                name.isidentifier(), "http.token", '"env:NAME" needs a variable name', self.token
            )
        elif self.token:
            _check_token(self.token, "http.token")

    def bearer_token(self, environ: Mapping[str, str]) -> str:
        """The token in force ("" for none); secrets stay out of config files and logs."""
        if self.token.startswith("env:"):
            name = self.token[4:]
            if name not in environ:
                raise ConfigError(f"http.token names ${name}, which is not set")
            _check_token(environ[name], f"http.token (${name})")
            return environ[name]
        if self.token:
            return self.token
        from_env = environ.get("FRESHRANK_TOKEN", "")
        if from_env:
            _check_token(from_env, "$FRESHRANK_TOKEN (http.token is empty)")
        return from_env


def _check_token(token: str, where: str) -> None:
    # the value itself is never part of the message: it is a secret
    if len(token) < 16 or not all(33 <= ord(c) <= 126 for c in token):
        raise ConfigError(
            f"{where} must be at least 16 printable ASCII characters without spaces "
            f"(got {len(token)} characters)"
        )


@dataclass
class StateConfig:
    snapshot_path: str = "state/snapshot.msgpack"
    restore: bool = True
    # durable state (journal + snapshots) lives here; "" keeps only snapshot_path
    dir: str = ""
    keep_snapshots: int = 3
    snapshot_every_events: int = 100_000
    snapshot_every_s: float = 300.0

    def check(self) -> None:
        _require(self.keep_snapshots >= 1, "state.keep_snapshots", "must be >= 1",
                 self.keep_snapshots)  # fmt: skip
        _require(self.snapshot_every_events >= 1, "state.snapshot_every_events",
                 "must be >= 1", self.snapshot_every_events)  # fmt: skip
        _require(self.snapshot_every_s > 0, "state.snapshot_every_s", "must be > 0",
                 self.snapshot_every_s)  # fmt: skip


FSYNC_POLICIES = ("always", "interval")


@dataclass
class JournalConfig:
    fsync: str = "always"
    fsync_interval_ms: float = 100.0
    segment_bytes: int = 64 << 20

    def check(self) -> None:
        _require(self.fsync in FSYNC_POLICIES, "journal.fsync",
                 f"must be one of {', '.join(FSYNC_POLICIES)}", self.fsync)  # fmt: skip
        _require(self.fsync_interval_ms > 0, "journal.fsync_interval_ms", "must be > 0",
                 self.fsync_interval_ms)  # fmt: skip
        _require(self.segment_bytes >= 4096, "journal.segment_bytes", "must be >= 4096",
                 self.segment_bytes)  # fmt: skip


@dataclass
class SimulatorSection:
    enabled: bool = False
    rate: float = 200.0
    batch: int = 50
    seed: int = 0
    n_users: int = 1000
    n_items: int = 500

    def check(self) -> None:
        _require(self.rate > 0, "simulator.rate", "must be > 0 events/s", self.rate)
        _require(self.batch >= 1, "simulator.batch", "must be >= 1", self.batch)


EXPLORATION_MODES = ("off", "thompson", "epsilon")


@dataclass
class ExplorationConfig:
    """The default exploration of GET /v1/recommend (a request's ``explore=`` overrides it)."""

    mode: str = "off"  # off | thompson | epsilon
    # thompson: posterior standard deviations are multiplied by it (0.25 won in the simulator)
    scale: float = 0.25
    epsilon: float = 0.05  # epsilon: share of the k slots given to a random candidate
    seed: int = 0

    def check(self) -> None:
        _require(
            self.mode in EXPLORATION_MODES,
            "exploration.mode",
            f"must be one of {', '.join(EXPLORATION_MODES)}",
            self.mode,
        )
        _require(
            0 < self.scale <= MAX_SCALE,
            "exploration.scale",
            f"must be > 0 and at most {MAX_SCALE:g}",
            self.scale,
        )
        _require(0 <= self.epsilon <= 1, "exploration.epsilon", "must be in [0, 1]", self.epsilon)


@dataclass
class KafkaConfig:
    """Cluster mode transport: Kafka topics ``<topic_prefix>.events|grads|weights|items|dlq``."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "freshrank"
    events_partitions: int = 4
    items_partitions: int = 1
    connect_timeout: float = 60.0
    # how long a consumer fetch may wait for data: aiokafka's 500 ms default puts half a
    # second on every hop of the pipeline (measured: 3.6k vs 78k events/s, bench/cluster.py)
    fetch_max_wait_ms: int = 10
    # passed to every aiokafka client as keyword arguments (security_protocol,
    # sasl_mechanism, sasl_plain_username, ...); a value "env:NAME" is read from $NAME
    client: dict[str, str] = field(default_factory=dict)
    # rankers also answer recommend requests on <prefix>.requests, replying on .replies
    recommend_requests: bool = False
    requests_partitions: int = 1
    # how often a cluster process checks that the broker still holds what it read
    broker_check_s: float = 2.0

    def check(self) -> None:
        _require(self.requests_partitions >= 1, "kafka.requests_partitions", "must be >= 1",
                 self.requests_partitions)  # fmt: skip
        _require(self.broker_check_s > 0, "kafka.broker_check_s", "must be > 0",
                 self.broker_check_s)  # fmt: skip
        _require(
            bool(self.bootstrap_servers),
            "kafka.bootstrap_servers",
            "must not be empty",
            self.bootstrap_servers,
        )
        _require(
            self.events_partitions >= 1,
            "kafka.events_partitions",
            "must be >= 1",
            self.events_partitions,
        )
        _require(
            self.items_partitions >= 1,
            "kafka.items_partitions",
            "must be >= 1",
            self.items_partitions,
        )
        _require(
            self.connect_timeout > 0,
            "kafka.connect_timeout",
            "must be > 0 seconds",
            self.connect_timeout,
        )


@dataclass
class SinkConfig:
    """Cluster mode: what trainers publish besides the gradients (``<prefix>.recommendations``)."""

    # after each learned batch, the fresh top k of every user the batch touched, one
    # record per user keyed by the user id (a compacted topic keeps each user's latest)
    recommendations: bool = False
    k: int = 10
    min_interval_s: float = 0.0  # a user's list is published at most this often (0: always)
    # every labelled event of a learned batch with the score the model gave it before
    # learning it, to <prefix>.scores (calibration and auditing downstream)
    scores: bool = False
    partitions: int = 1  # of the recommendations and scores topics

    def check(self) -> None:
        _require(1 <= self.k <= 1000, "sink.k", "must be in 1..1000", self.k)
        _require(0 <= self.min_interval_s < float("inf"), "sink.min_interval_s",
                 "must be finite seconds >= 0", self.min_interval_s)  # fmt: skip
        _require(self.partitions >= 1, "sink.partitions", "must be >= 1", self.partitions)


@dataclass
class ClusterConfig:
    """How many processes of each role `freshrank launch` starts (shards: training.shards)."""

    trainers: int = 1
    rankers: int = 1
    checkpoint_dir: str = "state/shards"
    checkpoint_every: int = 200  # grad batches between shard checkpoints (and at shutdown)
    # weight snapshots the shards publish for replicas to start from (runtime/bootstrap.py):
    # every snapshot_every grad batches or snapshot_interval_s seconds (0: that trigger off),
    # and at a clean stop; in pieces of at most snapshot_piece_bytes (under the broker's
    # largest message)
    snapshot_every: int = 1000
    snapshot_interval_s: float = 60.0
    snapshot_piece_bytes: int = 900_000
    bootstrap: bool = True  # replicas start from the newest snapshot, not the topic's start

    def check(self) -> None:
        _require(self.trainers >= 1, "cluster.trainers", "must be >= 1", self.trainers)
        _require(self.rankers >= 0, "cluster.rankers", "must be >= 0", self.rankers)
        _require(self.snapshot_every >= 0, "cluster.snapshot_every", "must be >= 0",
                 self.snapshot_every)  # fmt: skip
        _require(0 <= self.snapshot_interval_s < float("inf"), "cluster.snapshot_interval_s",
                 "must be finite seconds >= 0", self.snapshot_interval_s)  # fmt: skip
        _require(self.snapshot_piece_bytes >= 4096, "cluster.snapshot_piece_bytes",
                 "must be >= 4096", self.snapshot_piece_bytes)  # fmt: skip
        _require(
            self.checkpoint_every >= 1,
            "cluster.checkpoint_every",
            "must be >= 1",
            self.checkpoint_every,
        )


@dataclass
class LabelsConfig:
    """Delayed labels: an impression waits ``window_s`` seconds for its click (actors/delayed.py)."""

    window_s: float = 600.0
    max_pending: int = 1_000_000  # open impressions; past it the oldest is learned early
    late: str = "ignore"  # a click after its window: ignore | positive | dead_letter

    def check(self) -> None:
        _require(
            0 <= self.window_s < float("inf"),
            "labels.window_s",
            "must be a finite number of seconds >= 0",
            self.window_s,
        )
        _require(self.max_pending >= 1, "labels.max_pending", "must be >= 1", self.max_pending)
        _require(
            self.late in LATE_POLICIES,
            "labels.late",
            f"must be one of {', '.join(LATE_POLICIES)}",
            self.late,
        )


@dataclass
class SequenceConfig:
    """Online item-to-item statistics of the users' recent items (actors/itemstats.py),
    fed to the model as one learned feature per signal (actors/signals.py)."""

    enabled: bool = True
    window: int = 10  # the user's last items that co-occur with a new one, and score
    half_life: float = 3.0  # kNN: weight 2^(-age/half_life) of a recent item at age (events)
    markov_order: int = 10  # transitions from the user's last markov_order items
    markov_decay: float = 0.8  # a transition over distance d counts decay^(d-1)
    neighbours: int = 300  # neighbours kept per item and signal (bounded memory)
    # time-decayed popularity ("trending") signals, one per half-life in seconds of stream time
    trend_half_lives_s: list[float] = field(default_factory=lambda: [86400.0, 604800.0, 2592000.0])
    # of each positive's training.negatives, this many are drawn among the items its
    # user's signals score above 0 (hard negatives), the rest uniformly from the catalog
    hard_negatives: int = 0

    def check(self) -> None:
        for half_life in self.trend_half_lives_s:
            _require(
                isinstance(half_life, float | int) and 0 < half_life < float("inf"),
                "sequence.trend_half_lives_s", "must be finite seconds > 0", half_life,
            )  # fmt: skip
        _require(
            0 <= self.hard_negatives <= 100, "sequence.hard_negatives", "must be in 0..100",
            self.hard_negatives,
        )  # fmt: skip
        for key in ("window", "markov_order", "neighbours"):
            value = getattr(self, key)
            _require(1 <= value <= 10_000, f"sequence.{key}", "must be in 1..10000", value)
        _require(self.half_life > 0, "sequence.half_life", "must be > 0", self.half_life)
        _require(
            0 < self.markov_decay <= 1, "sequence.markov_decay", "must be in (0, 1]",
            self.markov_decay,
        )  # fmt: skip
        _require(
            self.markov_order <= self.window, "sequence.markov_order",
            "must be <= sequence.window", self.markov_order,
        )  # fmt: skip


@dataclass
class CandidatesConfig:
    """Which rows a recommendation scores (actors/candidates.py): the whole catalog
    below ``whole_catalog_below`` items, else the neighbours and successors of the
    visitor's recent items, the top trending and the newest items."""

    whole_catalog_below: int = 5_000
    trending: int = 200  # rows each trend ranks highest
    newest: int = 100  # the newest catalog rows
    refresh_s: float = 1.0  # the top trending rows are recomputed at most this often

    def check(self) -> None:
        for key in ("whole_catalog_below", "trending", "newest"):
            value = getattr(self, key)
            _require(0 <= value <= 1 << 31, f"candidates.{key}", "must be in 0..2^31", value)
        _require(
            0 <= self.refresh_s < float("inf"), "candidates.refresh_s", "must be >= 0 seconds",
            self.refresh_s,
        )  # fmt: skip


@dataclass
class FeedbackConfig:
    """Event types (``"type": "like"``) and what each is learned as (actors/events.py).

    ``[feedback.types.<name>]`` adds a type or changes a default one; a key it leaves
    out keeps the default type's value (for a new type: label 1, weight 1, seen true)."""

    types: dict[str, FeedbackType] = field(default_factory=lambda: dict(DEFAULT_FEEDBACK_TYPES))

    @classmethod
    def from_table(cls, values: dict[str, Any], origin: str) -> FeedbackConfig:
        for key in values:
            if key != "types":
                raise ConfigError(f"{origin}: unknown key feedback.{key} (known: types)")
        tables = values.get("types", {})
        if not isinstance(tables, dict):
            raise ConfigError(
                f"{origin}: feedback.types must be a table of [feedback.types.<name>] tables, "
                f"got {tables!r}"
            )
        types = dict(DEFAULT_FEEDBACK_TYPES)
        for name, table in tables.items():
            where = f"feedback.types.{name}"
            if not isinstance(table, dict):
                raise ConfigError(f"{origin}: [{where}] must be a table, got {table!r}")
            given = _table_values(FeedbackType, where, table, origin)
            types[name] = dataclasses.replace(types.get(name, FeedbackType()), **given)
        return cls(types)

    def check(self) -> None:
        for name, kind in self.types.items():
            where = f"feedback.types.{name}"
            _require(0 < len(name) <= 64, "feedback.types", "names must be 1..64 characters", name)
            _require(kind.label in (0, 1), f"{where}.label", "must be 1 or 0", kind.label)
            _require(0 <= kind.weight <= 1e6, f"{where}.weight", "must be in 0..1e6", kind.weight)


VARIANT_SECTIONS = ("model", "ftrl", "optimizer", "training", "sequence", "candidates")
SHARED_BY_VARIANTS = {
    "training": ("batch_size", "rank_eval_every", "rank_eval_rows", "rank_k", "exact_rankings")
}
"""The sections a variant may change: what its model is and how it learns.  The rest
(ingest, HTTP, state, labels, feedback, ...) belongs to the process all variants share."""


@dataclass
class Variant:
    """One arm of an experiment: its share of the users and what it changes of the base
    config (``{"training": {"negatives": 16}}``); no change: the base model serves it."""

    share: float
    overrides: dict[str, dict[str, Any]]


@dataclass
class ExperimentsConfig:
    """``[experiments]``: named variants learning side by side (runtime/experiments.py).

    ``[experiments.variants.<name>]`` holds ``share`` and the keys the variant changes
    (``training.negatives = 16`` or a ``[experiments.variants.<name>.training]`` table)."""

    seed: int = 0
    interleaving: bool = False
    variants: dict[str, Variant] = field(default_factory=dict)

    @classmethod
    def from_table(cls, values: dict[str, Any], origin: str) -> ExperimentsConfig:
        unknown = sorted(set(values) - {"seed", "interleaving", "variants"})
        if unknown:
            raise ConfigError(
                f"{origin}: unknown key experiments.{unknown[0]} (known: seed, interleaving, "
                "variants)"
            )
        flat: dict[str, Any] = {k: values[k] for k in ("seed", "interleaving") if k in values}
        config = cls(**_table_values(cls, "experiments", flat, origin))
        tables = values.get("variants", {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{origin}: experiments.variants must be a table of tables")
        for name, table in tables.items():
            config.variants[name] = _variant(name, table, origin)
        return config

    def check(self) -> None:
        if not self.variants:
            return
        for name in self.variants:
            _require(
                VARIANT_NAME.fullmatch(name) is not None, "experiments.variants",
                "names must be 1..64 letters, digits, '_' or '-'", name,
            )  # fmt: skip
        total = sum(v.share for v in self.variants.values())
        _require(abs(total - 1.0) < 1e-9, "experiments.variants", "shares must sum to 1", total)
        _require(
            not self.interleaving or len(self.variants) == 2, "experiments.interleaving",
            "needs exactly two variants", sorted(self.variants),
        )  # fmt: skip


VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _variant(name: str, table: Any, origin: str) -> Variant:
    where = f"experiments.variants.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: [{where}] must be a table, got {table!r}")
    share = table.get("share")
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise ConfigError(f"{origin}: {where}.share must be a number in (0, 1], got {share!r}")
    overrides: dict[str, dict[str, Any]] = {}
    for section, keys in table.items():
        if section == "share":
            continue
        if section not in VARIANT_SECTIONS:
            raise ConfigError(
                f"{origin}: {where}.{section}: a variant changes only "
                f"{', '.join(VARIANT_SECTIONS)} (and has a share)"
            )
        if not isinstance(keys, dict):
            raise ConfigError(f"{origin}: {where}.{section} must be a table of keys")
        shared = sorted(set(keys) & set(SHARED_BY_VARIANTS.get(section, ())))
        if shared:
            raise ConfigError(
                f"{origin}: {where}.{section}.{shared[0]} is the base's in every variant: "
                "each batch and the events it evaluates are shared, so the metrics compare"
            )
        overrides[section] = dict(keys)
    return Variant(float(share), overrides)


def variant_config(base: Config, name: str, origin: str = "config") -> Config:
    """The whole config of one variant: the base with the variant's keys changed, checked
    like any config (errors name the variant); its model keeps no dead letters of its
    own (the base rejects input once for all variants)."""
    data = base.to_dict()
    del data["experiments"]
    for section, keys in base.experiments.variants[name].overrides.items():
        data[section] = {**data[section], **keys}
    data["ingest"]["dead_letter_path"] = ""
    where = f"experiments.variants.{name}"
    try:
        return Config.from_dict(data, origin=f"{origin}: {where}")
    except ConfigError as error:  # a value check names the key, not the variant
        if where in str(error):
            raise
        raise ConfigError(f"{origin}: {where}: {error}") from None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    ftrl: FTRLConfig = field(default_factory=FTRLConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    queues: QueueConfig = field(default_factory=QueueConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    state: StateConfig = field(default_factory=StateConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    simulator: SimulatorSection = field(default_factory=SimulatorSection)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> Config:
        """Build and check a config; unknown sections or keys are errors (typos must not pass)."""
        sections = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, values in data.items():
            if name not in sections:
                raise ConfigError(
                    f"{origin}: unknown section [{name}] (known: {', '.join(sections)})"
                )
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: [{name}] must be a table")
            section_type = _section_type(cls, name)
            kwargs[name] = _build_section(section_type, name, values, origin)
        config = cls(**kwargs)
        for f in dataclasses.fields(config):
            getattr(config, f.name).check()
        _require(
            not (config.optimizer.kind == "sgd" and config.exploration.mode == "thompson"),
            "exploration.mode",
            "cannot be thompson with optimizer.kind = sgd (the posterior is FTRL's)",
            config.exploration.mode,
        )
        for name in config.experiments.variants:  # each variant is a whole, valid config
            variant_config(config, name, origin)
        return config

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
        return cls.from_dict(data, origin=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _section_type(cls: type, name: str) -> type:
    hints = typing.get_type_hints(cls)
    section_type: type = hints[name]
    return section_type


def _build_section(section_type: type, section: str, values: dict[str, Any], origin: str) -> Any:
    from_table = getattr(section_type, "from_table", None)
    if from_table is not None:  # a section of named tables
        return from_table(values, origin)
    return section_type(**_table_values(section_type, section, values, origin))


def _table_values(
    table_type: type, section: str, values: dict[str, Any], origin: str
) -> dict[str, Any]:
    hints = typing.get_type_hints(table_type)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{origin}: unknown key {section}.{key} (known: {', '.join(hints)})")
        kwargs[key] = _coerce(hints[key], value, f"{origin}: {section}.{key}")
    return kwargs


def _coerce(expected: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(expected)
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, list):
            (inner,) = typing.get_args(expected)
            return [_coerce(inner, v, where) for v in value]
    elif origin is dict:
        if isinstance(value, dict):
            _, inner = typing.get_args(expected)
            return {str(k): _coerce(inner, v, f"{where}.{k}") for k, v in value.items()}
    name = getattr(expected, "__name__", str(expected))
    raise ConfigError(f"{where} must be {name}, got {value!r}")


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {rule}, got {value!r}")
