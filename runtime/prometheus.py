"""Prometheus metrics for one HTTP app: a per-app registry (several Systems may share a process).

Two kinds of series:

* read from ``statistics()`` at scrape time by :class:`StatisticsCollector` (pipeline
  counters, queue depths, per-shard state, progressive metrics, dead letters by reason);
* observed in the request path by :class:`HTTPMetrics` (request latency by route and
  status, recommend latency, events per ingest request).

Names follow Prometheus conventions: ``freshrank_`` prefix, base units in the name
(``_seconds``), ``_total`` on counters.  Label values come from small fixed sets: dead-letter
reasons are free text, so they are counted by class (:func:`reason_class`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

Statistics = Callable[[], Mapping[str, Any]]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
EVENTS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000, 100000)
OTHER = "other"
_RANK_METRIC = re.compile(r"^(baseline_popularity_)?(hr|ndcg)@(\d+)$")
_NEXT_ITEM_METRIC = re.compile(r"^(precision|recall|f1)@(\d+)$")


class HTTPMetrics:
    """Histograms and counters the HTTP layer observes, in their own registry."""

    def __init__(self, statistics: Statistics) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StatisticsCollector(statistics))
        self.request_seconds = Histogram(
            "freshrank_http_request_duration_seconds",
            "HTTP request latency, from headers received to response returned",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "freshrank_http_requests_in_flight",
            "HTTP requests being handled",
            registry=self.registry,
        )
        self.recommend_seconds = Histogram(
            "freshrank_recommend_duration_seconds",
            "Latency of successful GET /v1/recommend requests",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ingest_request_events = Histogram(
            "freshrank_ingest_request_events",
            "Events per POST /v1/events request (parsed, good and bad)",
            buckets=EVENTS_BUCKETS,
            registry=self.registry,
        )
        self.client_disconnects = Counter(
            "freshrank_http_client_disconnects",
            "Requests whose client closed the connection before sending the whole body",
            registry=self.registry,
        )
        self.header_timeouts = Counter(
            "freshrank_http_header_timeouts",
            "Connections closed because a request's headers took over http.header_timeout_s",
            registry=self.registry,
        )
        self.ingest_events = Counter(
            "freshrank_ingest_events",
            "Events received over HTTP, by outcome (accepted, rejected)",
            ["outcome"],
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(route, method, str(status)).observe(seconds)
        if route == "/v1/recommend" and status == 200:
            self.recommend_seconds.observe(seconds)

    def observe_ingest(self, accepted: int, rejected: int) -> None:
        self.ingest_request_events.observe(accepted + rejected)
        self.ingest_events.labels("accepted").inc(accepted)
        self.ingest_events.labels("rejected").inc(rejected)


EVENT_FIELDS = frozenset(
    {"user", "item", "ts", "label", "weight", "type", "event", "impression_id",
     "user_features", "item_features", "context"}
)  # fmt: skip
# (words in a reason, its class); the first match wins
REASON_RULES: list[tuple[tuple[str, ...], str]] = [
    (("not valid json", "not valid utf-8", "not valid msgpack", "body must be",
      "must be an object", "json array", "msgpack array"), "malformed"),
    (("characters long", "more than", "the limit", "values,"), "too_large"),
    (("finite", "floating-point"), "not_finite"),
    (("unknown field",), "unknown_field"),
    (("feedback type",), "invalid_type"),
    (("required", "needs"), "missing_field"),
    (("must", "not allowed", "carries no"), "invalid_value"),
]  # fmt: skip


def reason_class(reason: str) -> str:
    """A fixed, short class for a free-text reason (or its shortened kind).

    Reasons quote client input (feature names, values): as label values they would let a
    client mint series.  A reason cut down to a quoted field ("'label") names that field.
    """
    text = reason.lower()
    field = text.strip(" '\"")
    if field in EVENT_FIELDS:
        return f"invalid_{field}"
    for words, name in REASON_RULES:
        if any(word in text for word in words):
            return name
    return OTHER


class ReasonClasses:
    """Counts per reason class from the dead-letter sink's counts per reason.

    The sink lists only its most common reasons, so a reason may drop out of the listing:
    its last count is kept, and every class stays a monotonic counter.  Whatever the
    listing does not account for is ``other``; the classes add up to the sink's total.
    """

    def __init__(self) -> None:
        self.last: dict[str, float] = {}  # bounded: the sink keeps at most a few hundred reasons

    def counts(self, by_reason: Mapping[str, Any], total: float) -> dict[str, float]:
        for reason, count in by_reason.items():
            if reason != OTHER:
                self.last[reason] = max(self.last.get(reason, 0.0), _number(count))
        out: dict[str, float] = {}
        for reason, count in self.last.items():
            name = reason_class(reason)
            out[name] = out.get(name, 0.0) + count
        out[OTHER] = out.get(OTHER, 0.0) + max(total - sum(out.values()), 0.0)
        return out


class StatisticsCollector:
    """Reads ``statistics()`` (of a System or a cluster ranker) at each scrape."""

    def __init__(self, statistics: Statistics) -> None:
        self.statistics = statistics
        self.reasons = ReasonClasses()

    def describe(self) -> list[Metric]:
        return []  # names vary with the statistics' shape; nothing to reserve up front

    def collect(self) -> Iterator[Metric]:
        stats = self.statistics()
        out = _Families()
        _process(out, stats)
        _progressive(out, stats.get("metrics") or {})
        _shards(out, stats.get("learners") or [])
        _queues(out, stats.get("queues") or {})
        _dead_letters(out, stats.get("dead_letters"), self.reasons)
        _admission(out, stats.get("admission"))
        _experiments(out, stats.get("experiments"))
        yield from out.families.values()


class _Families:
    """Metric families by name, created on first use; values that are not numbers are skipped."""

    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def add(self, kind: str, name: str, doc: str, value: Any, **labels: str) -> None:
        number = _finite(value)
        if number is None:
            return
        family = self.families.get(name)
        if family is None:
            if kind == GAUGE:
                family = GaugeMetricFamily(name, doc, labels=list(labels))
            else:
                family = CounterMetricFamily(name, doc, labels=list(labels))
            self.families[name] = family
        family.add_metric(list(labels.values()), number)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _number(value: Any) -> float:
    return _finite(value) or 0.0


def _get(stats: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(stats, Mapping):
            return None
        stats = stats.get(key)
    return stats


GAUGE, COUNTER = "gauge", "counter"
# (kind, name, help, path into statistics())
PROCESS: list[tuple[str, str, str, tuple[str, ...]]] = [
    (GAUGE, "freshrank_uptime_seconds", "Seconds since the process started", ("uptime_s",)),
    (GAUGE, "freshrank_shards", "Learner shards", ("shards",)),
    (GAUGE, "freshrank_catalog_items", "Items in the catalog", ("catalog_items",)),
    (GAUGE, "freshrank_users", "Users with an interaction history", ("users",)),
    (GAUGE, "freshrank_sequence", "Sequence number of the last batch queued", ("seq",)),
    (GAUGE, "freshrank_learned_sequence", "Highest batch sequence number learned",
     ("trainer", "learned_seq")),
    (COUNTER, "freshrank_hashed_events_total",
     "Events featurized (interactions and item upserts)", ("hasher", "events")),
    (COUNTER, "freshrank_item_upserts_total", "Item upserts applied to the catalog",
     ("hasher", "upserts")),
    (COUNTER, "freshrank_learned_events_total", "Interactions learned", ("trainer", "events")),
    (COUNTER, "freshrank_learned_rows_total",
     "Training rows learned (interactions and sampled negatives)", ("trainer", "rows")),
    (COUNTER, "freshrank_learned_batches_total", "Batches learned", ("trainer", "batches")),
    (GAUGE, "freshrank_trainer_in_flight_batches",
     "Batches sent to the shards and not yet applied", ("trainer", "in_flight")),
    (COUNTER, "freshrank_trainer_busy_seconds_total", "Seconds the trainer spent working",
     ("trainer", "busy_seconds")),
    (COUNTER, "freshrank_ranker_requests_total", "Rankings computed", ("ranker", "requests")),
    (COUNTER, "freshrank_ranker_seconds_total", "Seconds spent ranking", ("ranker", "seconds")),
    (COUNTER, "freshrank_simulator_events_total", "Events sent by the built-in simulator",
     ("simulator", "sent")),
    (COUNTER, "freshrank_weight_deltas_total", "Weight deltas applied to this replica",
     ("weight_deltas",)),
    (COUNTER, "freshrank_published_events_total",
     "Interactions published to the events topic", ("published",)),
    (COUNTER, "freshrank_kafka_recommend_answered_total",
     "Recommend requests over Kafka answered with a list", ("requests", "answered")),
    (COUNTER, "freshrank_kafka_recommend_expired_total",
     "Recommend requests over Kafka read after their deadline", ("requests", "expired")),
    (COUNTER, "freshrank_kafka_recommend_refused_total",
     "Recommend requests over Kafka answered with an error", ("requests", "refused")),
    (COUNTER, "freshrank_progressive_labelled_events_total",
     "Events scored (before learning) for log loss and AUC", ("metrics", "labelled")),
    (COUNTER, "freshrank_progressive_rank_evaluated_total",
     "Interactions ranked (before learning) for hit rate and NDCG", ("metrics", "rank_evaluated")),
    (GAUGE, "freshrank_progressive_auc", "Progressive AUC", ("metrics", "auc")),
    (GAUGE, "freshrank_admission_pending_events", "Events accepted and not yet learned",
     ("admission", "pending_events")),
    (GAUGE, "freshrank_admission_inflight_requests", "Ingest requests being handled",
     ("admission", "inflight_requests")),
    (COUNTER, "freshrank_admission_admitted_events_total", "Events admitted for ingest",
     ("admission", "admitted_events")),
    (COUNTER, "freshrank_admission_rejected_events_total", "Parsed events refused with 429",
     ("admission", "rejected_overload_events")),
]  # fmt: skip
SHARD: list[tuple[str, str, str, str]] = [
    (COUNTER, "freshrank_shard_updates_total", "Weight updates applied by the shard", "updates"),
    (COUNTER, "freshrank_shard_batches_total", "Gradient batches applied by the shard", "batches"),
    (GAUGE, "freshrank_shard_nonzero_weights", "Weights of the shard that are not zero",
     "nonzero_weights"),
    (GAUGE, "freshrank_shard_slots", "Weight slots the shard owns", "slots"),
    (COUNTER, "freshrank_shard_duplicates_skipped_total", "Re-sent batches the shard skipped",
     "duplicates_skipped"),
]  # fmt: skip
QUEUE: list[tuple[str, str, str, str]] = [
    (GAUGE, "freshrank_queue_depth", "Messages waiting in the channel", "depth"),
    (COUNTER, "freshrank_queue_sent_messages_total", "Messages sent on the channel", "sent"),
    (COUNTER, "freshrank_queue_received_messages_total", "Messages received from the channel",
     "received"),
    (COUNTER, "freshrank_queue_corrupt_messages_total", "Undecodable messages skipped", "corrupt"),
    (COUNTER, "freshrank_queue_sent_bytes_total", "Encoded bytes sent on the channel", "bytes"),
]  # fmt: skip


def _process(out: _Families, stats: Mapping[str, Any]) -> None:
    role = str(stats.get("role", "embedded"))
    out.add(GAUGE, "freshrank_info", "Constant 1; the role label names the process", 1, role=role)
    failed = bool(stats.get("failed"))
    out.add(GAUGE, "freshrank_failed", "1 once an actor crashed (the process then exits)", failed)
    for kind, name, doc, path in PROCESS:
        out.add(kind, name, doc, _get(stats, *path))
    freshness = _get(stats, "trainer", "freshness") or stats.get("freshness") or {}
    out.add(COUNTER, "freshrank_freshness_samples_total",
            "Batches whose event-to-model latency was measured", freshness.get("count"))  # fmt: skip
    for q in ("p50", "p99"):
        ms = _finite(freshness.get(f"{q}_ms"))
        seconds = None if ms is None else ms / 1000.0
        doc = f"Event-to-model latency, {q} over recent batches"
        out.add(GAUGE, f"freshrank_freshness_{q}_seconds", doc, seconds)


def _progressive(out: _Families, metrics: Mapping[str, Any]) -> None:
    """Progressive validation: each event is scored before it is learned."""
    doc = "Progressive log loss (model: freshrank, or the mean-CTR baseline)"
    out.add(GAUGE, "freshrank_progressive_logloss", doc, metrics.get("logloss"), model="freshrank")
    baseline = metrics.get("baseline_mean_ctr_logloss")
    out.add(GAUGE, "freshrank_progressive_logloss", doc, baseline, model="mean_ctr")
    for key, value in metrics.items():
        match = _RANK_METRIC.match(key)
        if match is None:
            continue
        is_baseline, kind, k = match.groups()
        model = "popularity" if is_baseline else "freshrank"
        name = "freshrank_progressive_hit_rate" if kind == "hr" else "freshrank_progressive_ndcg"
        doc = f"Progressive {'hit rate' if kind == 'hr' else 'NDCG'} at k (model or baseline)"
        out.add(GAUGE, name, doc, value, k=k, model=model)
    relevant = str(metrics.get("relevant_next", ""))
    for key, value in metrics.items():
        match = _NEXT_ITEM_METRIC.match(key)
        if match is not None:
            kind, k = match.groups()
            name = f"freshrank_progressive_next_item_{kind}"
            doc = f"Progressive {kind} at k of the next-item protocol (relevant: next N items)"
            out.add(GAUGE, name, doc, value, k=k, relevant_next=relevant)
    out.add(COUNTER, "freshrank_progressive_next_item_evaluated_total",
            "Next-item evaluations whose relevant set was complete",
            metrics.get("next_item_evaluated"))  # fmt: skip
    out.add(GAUGE, "freshrank_progressive_next_item_pending",
            "Next-item evaluations waiting for the user's next items",
            metrics.get("next_item_pending"))  # fmt: skip
    threshold = str(metrics.get("threshold", ""))
    for kind in ("precision", "recall", "f1"):
        out.add(GAUGE, f"freshrank_progressive_labelled_{kind}",
                f"Progressive {kind} of labelled events, positive at p >= threshold",
                metrics.get(kind), threshold=threshold)  # fmt: skip
    out.add(GAUGE, "freshrank_progressive_labelled_best_f1",
            "F1 of labelled events at the threshold maximising it over the AUC window",
            metrics.get("best_f1"))  # fmt: skip
    out.add(GAUGE, "freshrank_progressive_labelled_best_f1_threshold",
            "The threshold maximising F1 over the AUC window", metrics.get("best_f1_threshold"))  # fmt: skip


def _shards(out: _Families, learners: list[Any]) -> None:
    for learner in learners:
        if isinstance(learner, Mapping):
            for kind, name, doc, key in SHARD:
                out.add(kind, name, doc, learner.get(key), shard=str(learner.get("shard")))


def _queues(out: _Families, queues: Mapping[str, Any]) -> None:
    for queue, channel in queues.items():
        if isinstance(channel, Mapping):
            for kind, name, doc, key in QUEUE:
                out.add(kind, name, doc, channel.get(key), queue=str(queue))


def _dead_letters(out: _Families, letters: Any, reasons: ReasonClasses) -> None:
    if not isinstance(letters, Mapping) or _finite(letters.get("records")) is None:
        return
    total = _number(letters.get("records"))
    doc = "Rejected inputs kept as dead letters, by reason"
    for label, count in reasons.counts(letters.get("by_reason") or {}, total).items():
        out.add(COUNTER, "freshrank_dead_letters_total", doc, count, reason=label)


def _admission(out: _Families, admission: Any) -> None:
    by_reason = _get(admission, "rejected_overload_by_reason")
    if not isinstance(by_reason, Mapping):
        return
    doc = "Ingest requests refused with 429, by bound"
    for reason, count in by_reason.items():
        out.add(COUNTER, "freshrank_admission_rejected_requests_total", doc, count,
                reason=str(reason))  # fmt: skip


def _experiments(out: _Families, experiments: Any) -> None:
    """Per variant and metric: the value and its 95% interval, as three series labelled
    ``bound`` (value, low, high), and how many samples they rest on."""
    if not isinstance(experiments, Mapping):
        return
    doc = (
        "Experiment variant metric (progressive hr@k and ndcg@k, online ctr), bound: value|low|high"
    )
    samples = "Samples an experiment variant metric rests on"
    for variant, metrics in (experiments.get("variants") or {}).items():
        for metric, estimate in metrics.items():
            if not isinstance(estimate, Mapping):
                continue
            for bound in ("value", "low", "high"):
                out.add(GAUGE, "freshrank_experiment_metric", doc, estimate.get(bound),
                        variant=variant, metric=metric, bound=bound)  # fmt: skip
            out.add(GAUGE, "freshrank_experiment_samples", samples, estimate.get("n"),
                    variant=variant, metric=metric)  # fmt: skip
    win_rate = _get(experiments, "interleaving", "win_rate")
    if isinstance(win_rate, Mapping):
        for bound in ("value", "low", "high"):
            out.add(GAUGE, "freshrank_experiment_interleaving_win_rate",
                    "Share of clicked interleaved answers the first variant won (ties left out)",
                    win_rate.get(bound), variant=str(win_rate.get("variant")), bound=bound)  # fmt: skip
