"""The System: builds the actor graph from a config and runs it.

Embedding freshrank in another asyncio application::

    async with System.from_config() as s:
        await s.ingest([{"user": "u1", "item": "i1"}])
        print(await s.recommend("u1", k=10))

Data flow (see DESIGN.md): ingest validates (bad input goes to the dead-letter
sink with its reason) → hasher → trainer → learner shards; the ranker reads the
weights the learners write.  Every arrow is a bounded channel of the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actors.batching import batch_from_events
from actors.deadletters import DeadLetterSink
from actors.delayed import DelayedLabelJoiner, Resolved
from actors.events import (
    FEATURE_GROUPS,
    IMPRESSION,
    Event,
    EventLimits,
    Feature,
    InvalidEvent,
    Unparsable,
    validate_event,
)
from actors.exploration import ExplorationPolicy, WeightPosterior
from actors.factors import FactorParams, FactorStore
from actors.features import (
    USER_NS,
    BaseFeatures,
    Catalog,
    FeatureSpace,
    UserState,
    score_items,
    with_history,
)
from actors.ftrl import FTRLParams, sigmoid
from actors.hasher import Featurizer, HasherActor
from actors.learner import FactorShard, LearnerActor, ParameterStore
from actors.ranker import Ranker
from actors.simulator import SimulatorConfig
from actors.sources import SimulatorSource
from actors.trainer import ProgressiveMetrics, TrainerActor
from runtime.actor import Actor
from runtime.admission import Admission
from runtime.codec import Limits, decode, encode
from runtime.config import Config
from runtime.errors import SetupError, Unavailable
from runtime.messages import DeadLetters, EventBatch
from runtime.transport import MemoryTransport, Transport

SNAPSHOT_VERSION = 1
SNAPSHOT_LIMITS = Limits(
    max_bytes=1 << 40,
    max_str_len=1 << 30,
    max_bin_len=1 << 40,
    max_array_len=1 << 31,
    max_map_len=1 << 31,
    max_ext_len=1 << 40,
    max_array_elements=1 << 34,
)


ITEM_SIDE = FEATURE_GROUPS["item_features"]  # namespace prefix of item-side features


class SystemFailed(Unavailable, RuntimeError):
    """An actor crashed; the system stops accepting work and reports the cause."""


class SnapshotError(SetupError, RuntimeError):
    """A snapshot that cannot be restored into this configuration."""


@dataclass
class IngestResult:
    accepted: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    learned: bool = False
    seq: int = -1  # sequence number of the last batch queued (-1: none); not in the response

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "errors": self.errors,
            "learned": self.learned,
        }


def _payload_text(obj: Any) -> str:
    if isinstance(obj, Unparsable):
        return obj.payload
    try:
        return json.dumps(obj, ensure_ascii=False, default=repr)[:8192]
    except (TypeError, ValueError):
        return repr(obj)[:8192]


class System:
    """One process: in-memory (or any) transport, N learner shards, one trainer, a ranker."""

    def __init__(
        self,
        config: Config | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or Config()
        self.transport = transport or MemoryTransport(roundtrip=self.config.queues.codec_roundtrip)
        c = self.config
        self.space = FeatureSpace(c.model.bits, c.model.seed, [(a, b) for a, b in c.model.crosses])
        self.params = FTRLParams(c.ftrl.alpha, c.ftrl.beta, c.ftrl.l1, c.ftrl.l2)
        self.store = ParameterStore(self.space.size, self.params)
        fp = factor_params(c)
        self.factors = FactorStore(fp) if fp is not None else None
        self.catalog = Catalog()
        self.users = UserState(recent_len=c.model.history)
        self.limits = EventLimits(
            max_string_len=c.ingest.max_string_len,
            max_features=c.ingest.max_features_per_event,
            delayed_labels=True,
        )
        self.metrics = ProgressiveMetrics(
            c.training.rank_k, c.training.popularity_baseline, c.training.auc_window or None
        )
        self.ranker = Ranker(
            self.space,
            self.store.w,
            self.catalog,
            self.users,
            c.training.exclude_seen,
            factors=self.factors,
            posterior=WeightPosterior(self.store.n, self.params),
        )
        e = c.exploration
        self.exploration = ExplorationPolicy.from_settings(e.mode, e.scale, e.epsilon, e.seed)
        self._seq = -1
        self._interactions = 0
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()
        self._started = False
        self._submit_lock = asyncio.Lock()
        # delayed labels: `clock` times events without 'ts' and moves stream time on when idle
        self.labels = DelayedLabelJoiner(
            c.labels.window_s, c.labels.max_pending, c.labels.late, clock
        )
        self._label_timer: asyncio.Task[None] | None = None
        self._label_timer_stop = asyncio.Event()
        self.started_at = time.time()
        self.actors: list[Actor] = []
        self.simulator: SimulatorSource | None = None
        self._build()
        # the HTTP ingest bound: events stay pending until the trainer's watermark passes them
        self.admission = Admission(
            c.ingest.max_pending_events,
            c.ingest.max_inflight_requests,
            c.ingest.retry_after_s,
            learned_seq=lambda: self.trainer.learned.value,
        )

    @classmethod
    def from_config(
        cls, config: Config | str | Path | dict[str, Any] | None = None, **kwargs: Any
    ) -> System:
        """A System from a Config, a TOML path, a dict of sections, or the embedded default."""
        if config is None:
            config = Config()
        elif isinstance(config, str | Path):
            config = Config.load(config)
        elif isinstance(config, dict):
            config = Config.from_dict(config)
        return cls(config, **kwargs)

    def _build(self) -> None:
        c = self.config
        t = self.transport
        size = c.queues.maxsize
        shards = c.training.shards
        events = t.channel("events", size)
        features = t.channel("features", size)
        grads = [t.channel(f"grads.{k}", size) for k in range(shards)]
        weights = t.channel("weights", 0)
        self.dead_letter_channel = t.channel("dead_letters", size)
        self.events_channel = events
        self.hasher = HasherActor(
            Featurizer(self.space, self.catalog, self.users), events, features
        )
        self.trainer = TrainerActor(
            self.space,
            self.store,
            self.catalog,
            self.users,
            negatives=c.training.negatives,
            sync=c.training.sync,
            max_staleness=c.training.max_staleness,
            exclude_seen=c.training.exclude_seen,
            seed=c.model.seed,
            metrics=self.metrics,
            inbox=features,
            grads=grads,
            weights=weights,
            factors=self.factors,
            dense_factors=c.model.factors_dense,
        )
        self.learners = []
        for k in range(shards):
            z, n, w = self.store.shard_view(k, shards)
            factors = FactorShard(self.factors, k, shards) if self.factors else None
            self.learners.append(
                LearnerActor(k, shards, z, n, w, self.params, grads[k], weights, factors)
            )
        self.dead_letters = DeadLetterSink(
            c.ingest.dead_letter_path or None, self.dead_letter_channel
        )
        self.actors = [self.dead_letters, *self.learners, self.trainer, self.hasher]
        if c.simulator.enabled:
            sim = SimulatorConfig(
                seed=c.simulator.seed, n_users=c.simulator.n_users, n_items=c.simulator.n_items
            )
            self.simulator = SimulatorSource(
                sim, self._simulated, c.simulator.rate, c.simulator.batch
            )

    async def _simulated(self, events: list[Any]) -> None:
        await self.ingest(events, source="simulator", wait=False)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Restore the snapshot (if configured and present) and start every actor (idempotent)."""
        if self._started:
            return
        if self.config.state.restore and self.config.state.snapshot_path:
            self.restore_if_present(Path(self.config.state.snapshot_path))
        self._started = True
        await self.transport.start()
        for actor in self.actors:
            actor.on_crash = self._on_crash
            await actor.start()
        if self.simulator is not None:
            self.simulator.on_crash = self._on_crash
            await self.simulator.start()
        self._label_timer_stop.clear()
        self._label_timer = asyncio.create_task(self._close_label_windows(), name="labels:expiry")
        self._label_timer.add_done_callback(self._label_timer_done)

    async def stop(self, drain: bool = True) -> None:
        """Drain the queues (everything accepted gets learned), then stop every actor."""
        if not self._started:
            return
        if self.simulator is not None:
            await self.simulator.stop()
        await self._stop_label_timer()
        if drain and self._failure is None:
            await self.drain()  # open impressions stay open (in the snapshot), not negatives
        for actor in reversed(self.actors):
            await actor.stop()
        await self.transport.stop()
        self._started = False

    async def __aenter__(self) -> System:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(drain=exc[0] is None)

    def _on_crash(self, actor: Actor, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self._failed.set()

    def _check(self) -> None:
        if self._failure is not None:
            raise SystemFailed(f"an actor crashed: {self._failure!r}") from self._failure
        if not self._started:
            raise SystemFailed(
                "the system is not running (use 'async with System(...)' or start())"
            )

    async def _until(self, awaitable: Any) -> None:
        """Await something, but fail fast if an actor crashes meanwhile."""
        task = asyncio.ensure_future(awaitable)
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({task, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._check()
        await task

    async def wait_failed(self) -> BaseException:
        """Return the first actor crash (for a daemon's supervisor loop)."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    # -- ingest ------------------------------------------------------------

    async def ingest(
        self, events: Iterable[Any], *, wait: bool = True, source: str = "api"
    ) -> IngestResult:
        """Validate and queue events; with ``wait`` return once they are learned.

        Bad events never raise: each is reported with its reason in the result and
        written to the dead-letter sink, and the good events of the same call are learned.
        """
        self._check()
        result = IngestResult()
        good: list[Event] = []
        delayed: list[tuple[int, Event, Any]] = []  # impressions and clicks, with their input
        rejected: list[tuple[str, str]] = []
        count = 0
        for index, obj in enumerate(events):
            count += 1
            try:
                event = validate_event(obj, self.limits)
            except InvalidEvent as error:
                reason = str(error)
                result.errors.append({"index": index, "reason": reason})
                rejected.append((reason, _payload_text(obj)))
                continue
            if event.event is None:
                good.append(event)
            else:
                delayed.append((index, event, obj))
        prescores = [math.nan] * len(good)
        for record in await self._join_labels(delayed, result, rejected):
            good.append(record.event)
            prescores.append(record.prescore)
        result.rejected = len(rejected)
        result.accepted = count - result.rejected
        if rejected:
            result.errors.sort(key=lambda error: int(error["index"]))
            await self.reject(rejected, source)
        last = await self._submit_events(good, prescores if delayed else None)
        result.seq = -1 if last is None else last
        if wait and last is not None:
            await self.wait_learned(last)
            result.learned = True
        return result

    async def _submit_events(
        self, events: Sequence[Event], prescores: Sequence[float] | None
    ) -> int | None:
        """Queue events in batches; returns the last batch's sequence number (None: no events)."""
        last = None
        size = self.config.training.batch_size
        for lo in range(0, len(events), size):
            chunk = events[lo : lo + size]
            scores = prescores[lo : lo + size] if prescores is not None else None
            last = await self.submit(batch_from_events(chunk, self._rank_flags(chunk), -1, scores))
        return last

    # -- delayed labels ----------------------------------------------------

    async def _join_labels(
        self,
        delayed: Sequence[tuple[int, Event, Any]],
        result: IngestResult,
        rejected: list[tuple[str, str]],
    ) -> list[Resolved]:
        """Impressions wait for their clicks; returns the impressions whose label is known now
        (clicked, window closed, evicted), and reports the clicks the joiner refuses."""
        impressions = [e for _, e, _ in delayed if e.event == IMPRESSION]
        await self._catalog_new_items(impressions)
        prescores = iter(self._prescores(impressions))  # no await from here: weights stay put
        resolved: list[Resolved] = []
        for index, event, obj in delayed:
            if event.event == IMPRESSION:
                step = self.labels.add_impression(event, next(prescores))
            else:
                step = self.labels.add_outcome(event)
            resolved += step.resolved
            if step.rejected is not None:
                result.errors.append({"index": index, "reason": step.rejected})
                rejected.append((step.rejected, _payload_text(obj)))
        return resolved

    async def _catalog_new_items(self, impressions: Sequence[Event]) -> None:
        """Put the items first seen in impressions into the catalog, so they can be scored."""
        new: dict[str, Event] = {}
        for event in impressions:
            if event.item not in self.catalog.rows and event.item not in new:
                item_side = [f for f in event.features if f[0].startswith(ITEM_SIDE)]
                new[event.item] = Event(None, event.item, event.ts, features=item_side)
        if new:
            await self.wait_learned(await self.submit(batch_from_events(list(new.values()))))

    def _prescores(self, impressions: Sequence[Event]) -> list[float]:
        """The model's probability for each impression now (NaN: its item is unknown), from
        the row the trainer would learn it with: user id, the event's user/context features,
        the recent items.  One scoring pass per user context (a page of impressions)."""
        contexts: dict[tuple[str, tuple[Feature, ...]], list[int]] = {}
        for i, event in enumerate(impressions):
            user_side = tuple(f for f in event.features if not f[0].startswith(ITEM_SIDE))
            contexts.setdefault((event.user or "", user_side), []).append(i)
        prescores = [math.nan] * len(impressions)
        for (user, user_side), members in contexts.items():
            known = [(i, self.catalog.rows.get(impressions[i].item, -1)) for i in members]
            known = [(i, row) for i, row in known if row >= 0]
            if not known:
                continue
            logits = score_items(
                self.space,
                self._user_row(user, user_side),
                self.catalog,
                self.ranker.weights,
                np.array([row for _, row in known], np.int64),
                self.ranker.scorer,
            )
            for (i, _), p in zip(known, sigmoid(logits), strict=True):
                prescores[i] = float(p)
        return prescores

    def _user_row(self, user: str, user_side: Sequence[Feature]) -> BaseFeatures:
        """User id + user/context features (hashed as the hasher does) + recent items."""
        space = self.space
        entries = [(USER_NS, user, 1.0), *user_side]
        row = BaseFeatures(
            np.array([0, len(entries)], np.int64),
            np.array([space.ns_hash(ns) for ns, _, _ in entries], np.uint32),
            np.array([space.value_hash(ns, value) for ns, value, _ in entries], np.uint32),
            np.array([x for _, _, x in entries], np.float64),
        )
        return with_history(space, self.catalog, self.users, user, row)[0]

    async def flush_labels(self, now: float | None = None) -> int | None:
        """Learn as negatives the impressions whose window closed before ``now`` (default: the
        stream time); returns the last queued batch's sequence number (None: nothing closed)."""
        self._check()
        resolved = self.labels.expire(self.labels.stream_time() if now is None else now)
        return await self._submit_events(
            [r.event for r in resolved], [r.prescore for r in resolved]
        )

    async def _close_label_windows(self) -> None:
        """Without new events, windows still close: once no event has moved the stream time
        for a tick (a second at most), it moves on with the clock.  While events flow, only
        their times close windows, so a replay learns the same whatever its speed.

        Stopped by an event rather than cancelled, so a flush is never cut off between
        taking impressions out of the joiner and queueing them."""
        tick = min(1.0, max(0.05, self.config.labels.window_s / 10))
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._label_timer_stop.wait(), tick)
            if self._label_timer_stop.is_set():
                return
            if self.labels.pending and self.labels.idle_s() >= tick:
                try:
                    await self.flush_labels()
                except SystemFailed:
                    return  # the crash is reported by the actor that failed

    def _label_timer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            self._failed.set()

    async def _stop_label_timer(self) -> None:
        if self._label_timer is None:
            return
        self._label_timer_stop.set()
        await asyncio.gather(self._label_timer, return_exceptions=True)
        self._label_timer = None

    def _rank_flags(self, events: Sequence[Any]) -> np.ndarray:
        every = self.config.training.rank_eval_every
        flags = np.zeros(len(events), bool)
        if not every:
            return flags
        for i, event in enumerate(events):
            if event.user is not None:
                self._interactions += 1
                flags[i] = self._interactions % every == 0
        return flags

    async def reject(self, rejected: Sequence[tuple[str, str]], source: str) -> None:
        """Send (reason, payload) pairs to the dead-letter sink."""
        await self.dead_letter_channel.send(
            DeadLetters(
                source=source,
                reasons=[r for r, _ in rejected],
                payloads=[p for _, p in rejected],
                ts=time.time(),
            )
        )

    async def submit(self, batch: EventBatch) -> int:
        """Queue an already-built batch (file replay fast path); returns its sequence number."""
        self._check()
        async with self._submit_lock:
            self._seq += 1
            batch.seq = self._seq
            batch.created_at = batch.created_at or time.time()
            await self._until(self.events_channel.send(batch))
        return batch.seq

    async def wait_learned(self, seq: int) -> None:
        await self._until(self.trainer.learned.wait_for(seq))

    async def drain(self) -> None:
        """Wait until everything submitted so far is learned and every dead letter is written.

        Impressions whose label window is still open stay open (see :meth:`flush_labels`)."""
        await self.wait_learned(self._seq)
        while not self.dead_letters.idle:
            await self._until(asyncio.sleep(0))

    # -- serving -----------------------------------------------------------

    async def recommend(
        self,
        user: str,
        k: int = 10,
        candidates: Sequence[str] | None = None,
        context: dict[str, Any] | None = None,
        explain: bool = False,
        explore: str | None = None,
        scale: float | None = None,
        epsilon: float | None = None,
    ) -> list[dict[str, Any]]:
        """Top-k items for ``user`` with the weights as they are now (every learned event counts).

        ``explore`` (off | thompson | epsilon), ``scale`` and ``epsilon`` override the
        configured exploration for this request; a bad value raises ExplorationError.
        """
        self._check()
        policy = self.exploration.override(explore, scale, epsilon)
        features = []
        if context:
            event = validate_event({"item": "-", "user": user, "context": context}, self.limits)
            features = event.features
        return self.ranker.recommend(
            user, k, candidates, features, explain, policy if policy.active else None
        )

    def statistics(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started_at, 3),
            "seq": self._seq,
            "shards": len(self.learners),
            "sync": self.config.training.sync,
            "catalog_items": len(self.catalog),
            "users": len(self.users.history),
            "metrics": self.metrics.summary(),
            "hasher": self.hasher.statistics(),
            "trainer": self.trainer.statistics(),
            "learners": [learner.statistics() for learner in self.learners],
            "dead_letters": self.dead_letters.statistics(),
            "ranker": self.ranker.statistics(),
            "queues": self.transport.statistics(),
            "simulator": self.simulator.statistics() if self.simulator else None,
            "admission": self.admission.statistics(),
            "labels": self.labels.statistics(),
            "failed": repr(self._failure) if self._failure else None,
        }

    # -- snapshots ---------------------------------------------------------

    def _model_settings(self) -> dict[str, Any]:
        """What a snapshot's state means: restoring into other settings would be garbage."""
        fp = self.factors.params if self.factors else None
        return {
            "bits": self.space.bits,
            "seed": self.space.seed,
            "crosses": self.config.model.crosses,
            "factors": fp.k if fp else 0,
            "factor_bits": fp.bits if fp else 0,
        }

    def _factor_state(self) -> dict[str, Any] | None:
        if self.factors is None:
            return None
        rows = self.factors.touched_rows()
        return {"index": rows, "v": self.factors.v[rows], "n": self.factors.n[rows]}

    def snapshot_state(self) -> dict[str, Any]:
        touched = np.flatnonzero(self.store.n)
        n_items = len(self.catalog)
        return {
            "version": SNAPSHOT_VERSION,
            "model": self._model_settings(),
            "seq": self._seq,
            "interactions": self._interactions,
            "weights": {"index": touched, "z": self.store.z[touched], "n": self.store.n[touched]},
            "factors": self._factor_state(),
            "catalog": {
                "ids": self.catalog.ids,
                "ns": self.catalog.ns[:n_items],
                "raw": self.catalog.raw[:n_items],
                "x": self.catalog.x[:n_items],
                "first_seq": self.catalog.first_seq[:n_items],
                "names": self.catalog.names,
            },
            "users": {
                "history": {u: sorted(rows) for u, rows in self.users.history.items()},
                "recent": self.users.recent,
                "profiles": {
                    u: [p.ns, p.raw, p.x, self.users.profile_names.get(u, [])]
                    for u, p in self.users.profiles.items()
                },
            },
            "metrics": self.metrics.to_state(),
            "trainer": {"events": self.trainer.events, "rows": self.trainer.rows},
            "labels": self.labels.to_state(),
        }

    def write_snapshot(self, path: str | Path | None = None) -> Path:
        """Write the learned state atomically: never half-written."""
        target = Path(path or self.config.state.snapshot_path)
        write_atomically(target, encode(self.snapshot_state()))
        return target

    def restore_if_present(self, path: Path) -> bool:
        """Restore from ``path`` when a snapshot is there (a first start has none)."""
        if not path.exists():
            return False
        self.restore(path)
        return True

    def restore(self, path: str | Path) -> None:
        """Load a snapshot written by :meth:`write_snapshot` (same model settings required)."""
        state = decode(Path(path).read_bytes(), SNAPSHOT_LIMITS)
        if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION:
            raise SnapshotError(f"{path}: not a freshrank snapshot of version {SNAPSHOT_VERSION}")
        model = {"factors": 0, "factor_bits": 0, **state["model"]}
        mine = self._model_settings()
        if model != mine:
            raise SnapshotError(
                f"{path}: snapshot model settings {model} differ from config {mine}"
            )
        if self.factors is not None and state.get("factors"):
            rows = np.asarray(state["factors"]["index"], np.int64)
            self.factors.v[rows] = state["factors"]["v"]
            self.factors.n[rows] = state["factors"]["n"]
            self.factors.active[rows] = True
            self.factors.version += 1
        w = state["weights"]
        self.store.z[w["index"]] = w["z"]
        self.store.n[w["index"]] = w["n"]
        self.store.refresh(np.asarray(w["index"], np.int64))
        cat = state["catalog"]
        for row, item in enumerate(cat["ids"]):
            self.catalog.upsert(
                item,
                int(cat["first_seq"][row]),
                np.array(cat["ns"][row]),
                np.array(cat["raw"][row]),
                np.array(cat["x"][row]),
                list(cat["names"][row]),
            )
        for user, rows in state["users"]["history"].items():
            self.users.history[user] = set(rows)
        for user, rows in state["users"].get("recent", {}).items():
            self.users.recent[user] = (
                list(rows)[-self.users.recent_len :] if self.users.recent_len else []
            )
        for user, (ns, raw, x, names) in state["users"]["profiles"].items():
            self.users.profiles[user] = BaseFeatures(
                np.array([0, len(ns)], np.int64), np.array(ns), np.array(raw), np.array(x)
            )
            self.users.profile_names[user] = list(names)
        self.metrics.load_state(state["metrics"])
        self._seq = int(state["seq"])
        self._interactions = int(state["interactions"])
        self.trainer.learned.advance(self._seq)
        self.trainer.events = int(state["trainer"]["events"])
        self.trainer.rows = int(state["trainer"]["rows"])
        if "labels" in state:  # older snapshots have no open impressions
            self.labels.load_state(state["labels"])


def factor_params(config: Config) -> FactorParams | None:
    """The factorization settings of a config (None: linear model only)."""
    m, f = config.model, config.ftrl
    if m.factors == 0:
        return None
    return FactorParams(
        k=m.factors,
        bits=min(m.factor_bits, m.bits),
        alpha=f.factor_alpha,
        beta=f.beta,
        l2=f.factor_l2,
        init_std=m.factor_init,
        seed=m.seed,
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: report a metric that is not defined yet as null."""
    return value if math.isfinite(value) else None
