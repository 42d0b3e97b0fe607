"""The model, assembled once: the learned state and the pure parts that read it.

:func:`build_model` is the one place that turns a config into the model's parts
(feature space, FTRL store, factor vectors, catalog, user state, progressive
metrics, delayed-label joiner, stream position).  The embedded System, the cluster
trainer and the cluster ranker are wirings of this one model; a cluster shard owns
a slice of its parameters (:func:`build_shard`).  Snapshots and shard checkpoints
are compositions of :meth:`Model.parts` (see ``actors/state.py``), so adding a
stateful part is adding it to ``parts()``.  Pure, synchronous code.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from actors.candidates import CandidateGenerator, CandidateParams
from actors.delayed import DelayedLabelJoiner
from actors.experiments import Experiments
from actors.exploration import WeightPosterior
from actors.factors import FactorParams, FactorStore
from actors.features import Catalog, FeatureSpace, UserState
from actors.featurizer import Featurizer
from actors.ftrl import FTRLParams
from actors.itemstats import ItemStatsParams
from actors.learner import OptimizerParams, ParameterStore
from actors.metrics import ProgressiveMetrics
from actors.ranker import Ranker
from actors.sgd import SGDParams
from actors.signals import SequenceSignals
from actors.state import Stateful
from runtime.config import Config, variant_config
from runtime.errors import SetupError
from runtime.messages import WeightDelta

RESERVED_PARTS = (
    "weights", "factors", "catalog", "users", "metrics", "labels", "stream", "sequence",
    "experiments",
)  # fmt: skip


def feature_space(config: Config) -> FeatureSpace:
    m = config.model
    return FeatureSpace(m.bits, m.seed, [(a, b) for a, b in m.crosses])


def optimizer_params(config: Config) -> OptimizerParams:
    """The linear weights' learner settings: FTRL's or SGD's (``optimizer.kind``)."""
    o = config.optimizer
    if o.kind == "sgd":
        return SGDParams(o.rate, o.eta, o.l2)
    f = config.ftrl
    return FTRLParams(f.alpha, f.beta, f.l1, f.l2)


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


def sequence_params(config: Config) -> ItemStatsParams | None:
    """The item-to-item statistics' settings (None: no sequence signals)."""
    s = config.sequence
    if not s.enabled:
        return None
    return ItemStatsParams(s.window, s.half_life, s.markov_order, s.markov_decay, s.neighbours)


def model_settings(config: Config) -> dict[str, Any]:
    """What saved state means: restoring it under other settings would load garbage."""
    fp = factor_params(config)
    sp = sequence_params(config)
    return {
        "bits": config.model.bits,
        "seed": config.model.seed,
        "crosses": [list(c) for c in config.model.crosses],
        "factors": fp.k if fp else 0,
        "factor_bits": fp.bits if fp else 0,
        "sequence": [sp.window, sp.neighbours, *config.sequence.trend_half_lives_s] if sp else None,
        "components": list(config.model.components),
        # the weights part holds z and n under FTRL, w and n under SGD
        **({"optimizer": "sgd"} if config.optimizer.kind == "sgd" else {}),
        # each variant's own model is saved under its own settings (actors/experiments.py)
        **({"experiments": own} if (own := own_variants(config)) else {}),
    }  # fmt: skip


class Component(Protocol):
    """An extra stateful part of the model (``model.components``): saved and restored with
    the rest, told about every learned interaction, and reported in the statistics."""

    name: str
    STATE_VERSION: ClassVar[int]

    def to_state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...

    def observe(self, users: Sequence[str], item_rows: np.ndarray) -> None:
        """Interactions learned, in stream order (``item_rows[i] == -1``: no item)."""
        ...

    def statistics(self) -> dict[str, Any]: ...


class ComponentError(SetupError, ValueError):
    """A ``model.components`` entry that cannot be imported or built."""


def load_components(config: Config) -> dict[str, Component]:
    """Build every ``model.components`` entry, by name."""
    built: dict[str, Component] = {}
    for path in config.model.components:
        module_name, factory_name = path.split(":")
        try:
            factory = getattr(importlib.import_module(module_name), factory_name)
        except (ImportError, AttributeError) as error:
            raise ComponentError(f"model.components: cannot import {path!r}: {error}") from None
        component = factory(config)
        if component.name in built or component.name in RESERVED_PARTS:
            raise ComponentError(f"model.components: the name {component.name!r} is taken")
        built[component.name] = component
    return built


@dataclass
class StreamPosition:
    """How far the stream has come: the last batch sequence number queued, the
    interactions counted for evaluation sampling, and the events and rows learned."""

    seq: int = -1
    interactions: int = 0
    events: int = 0
    rows: int = 0
    last_ranked: int = 0  # the interaction last flagged for evaluation

    STATE_VERSION: ClassVar[int] = 1

    def to_state(self) -> dict[str, Any]:
        return {"seq": self.seq, "interactions": self.interactions, "events": self.events,
                "rows": self.rows, "last_ranked": self.last_ranked}  # fmt: skip

    def rank_flags(self, events: Sequence[Any], every: int, min_gap: int = 0) -> np.ndarray:
        """Which of ``events`` the progressive ranking evaluates: every ``every``-th
        interaction of the stream (0: none) that comes at least ``min_gap`` interactions
        after the last one flagged."""
        flags = np.zeros(len(events), bool)
        for i, event in enumerate(events if every else ()):
            if event.user is not None:
                self.interactions += 1
                due = self.interactions % every == 0
                if due and self.interactions - self.last_ranked >= min_gap:
                    flags[i] = True
                    self.last_ranked = self.interactions
        return flags

    def load_state(self, state: dict[str, Any]) -> None:
        self.seq = int(state["seq"])
        self.interactions = int(state["interactions"])
        self.last_ranked = int(state.get("last_ranked", 0))  # absent before Dec 2026
        self.events = int(state["events"])
        self.rows = int(state["rows"])


@dataclass
class Model:
    """Every part of the model one process holds, built by :func:`build_model`."""

    config: Config
    space: FeatureSpace
    params: OptimizerParams
    store: ParameterStore
    factors: FactorStore | None
    catalog: Catalog
    users: UserState
    metrics: ProgressiveMetrics
    labels: DelayedLabelJoiner
    sequence: SequenceSignals | None = None
    stream: StreamPosition = field(default_factory=StreamPosition)
    components: dict[str, Component] = field(default_factory=dict)
    clock: Callable[[], float] = time.time  # wall clock: serving judges item expiry by it
    experiments: Experiments | None = None  # the variants of [experiments]

    def parts(self) -> dict[str, Stateful]:
        """The stateful parts by name: what a snapshot saves and restores."""
        parts: dict[str, Stateful] = {
            "weights": self.store,
            "catalog": self.catalog,
            "users": self.users,
            "metrics": self.metrics,
            "labels": self.labels,
            "stream": self.stream,
        }
        if self.factors is not None:
            parts["factors"] = self.factors
        if self.sequence is not None:
            parts["sequence"] = self.sequence
        if self.experiments is not None:
            parts["experiments"] = self.experiments
        return {**parts, **self.components}

    def observe(self, users: Sequence[str], item_rows: np.ndarray) -> None:
        """Tell every component about interactions just learned."""
        for component in self.components.values():
            component.observe(users, item_rows)

    def component_statistics(self) -> dict[str, Any]:
        return {name: c.statistics() for name, c in self.components.items()}

    def settings(self) -> dict[str, Any]:
        return model_settings(self.config)

    def featurizer(self) -> Featurizer:
        return Featurizer(self.space, self.catalog, self.users)

    def ranker(self, exploration: bool = True) -> Ranker:
        """A ranker over this model's weights (``exploration``: Thompson sampling needs the
        FTRL precisions, which a replica of the weights alone, or SGD, does not have)."""
        ftrl = self.params if isinstance(self.params, FTRLParams) else None
        return Ranker(
            self.space,
            self.store.w,
            self.catalog,
            self.users,
            self.config.training.exclude_seen,
            factors=self.factors,
            posterior=WeightPosterior(self.store.n, ftrl) if exploration and ftrl else None,
            sequence=self.sequence,
            candidates=CandidateGenerator(
                self.catalog, self.sequence, CandidateParams(**asdict(self.config.candidates))
            ),
            clock=self.clock,
        )

    def apply_delta(self, delta: WeightDelta) -> None:
        """Bring a replica's weights up to a learner's published values."""
        self.store.w[delta.index] = delta.w
        if delta.z.size and self.store.z.size:
            self.store.z[delta.index] = delta.z
            self.store.n[delta.index] = delta.n
        if self.factors is not None and delta.factor_index.size:
            self.factors.v[delta.factor_index] = delta.factor_v
            if delta.factor_n.size:
                self.factors.n[delta.factor_index] = delta.factor_n
                self.factors.active[delta.factor_index] = True
            self.factors.changed(delta.factor_index)


def build_model(config: Config, clock: Callable[[], float] = time.time) -> Model:
    """The whole model of a config; ``clock`` times events without ``ts`` (delayed labels)."""
    space = feature_space(config)
    params = optimizer_params(config)
    fp = factor_params(config)
    sp = sequence_params(config)
    t, lab = config.training, config.labels
    catalog = Catalog()
    return Model(
        config=config,
        space=space,
        params=params,
        store=ParameterStore(space.size, params),
        factors=FactorStore(fp) if fp is not None else None,
        catalog=catalog,
        users=UserState(recent_len=config.model.history, sequence_len=sp.window if sp else 0),
        metrics=ProgressiveMetrics(
            t.rank_k, t.popularity_baseline, t.auc_window or None, t.relevant_next, t.threshold
        ),
        labels=DelayedLabelJoiner(lab.window_s, lab.max_pending, lab.late, clock),
        sequence=SequenceSignals(space, catalog, sp, config.sequence.trend_half_lives_s)
        if sp
        else None,
        components=load_components(config),
        clock=clock,
        experiments=build_experiments(config, clock),
    )


def own_variants(config: Config) -> list[str]:
    """The variants with a model of their own (those that change a key), by name."""
    return sorted(name for name, v in config.experiments.variants.items() if v.overrides)


def build_experiments(config: Config, clock: Callable[[], float]) -> Experiments | None:
    """The variants of ``[experiments]``, each changed variant a whole model of its own
    config, built like the base (None: no experiments)."""
    variants = config.experiments.variants
    if not variants:
        return None
    models = {
        name: build_model(variant_config(config, name), clock) if variant.overrides else None
        for name, variant in variants.items()
    }
    return Experiments(config.experiments, models)


def shard_slots(bits: int, shards: int, shard: int) -> int:
    """How many global indices ``i < 2^bits`` have ``i % shards == shard``."""
    return len(range(shard, 1 << bits, shards))


@dataclass
class ShardModel:
    """A cluster shard's slice of the parameters: global index ``i % shards == shard``
    at local slot ``i // shards``, and its own rows of the factor vectors."""

    config: Config
    shard: int
    store: ParameterStore
    factors: FactorStore | None

    def parts(self) -> dict[str, Stateful]:
        parts: dict[str, Stateful] = {"weights": self.store}
        if self.factors is not None:
            parts["factors"] = self.factors
        return parts

    def settings(self) -> dict[str, Any]:
        shards = self.config.training.shards
        return {**model_settings(self.config), "shard": self.shard, "shards": shards}


def build_shard(config: Config, shard: int) -> ShardModel:
    shards = config.training.shards
    if not 0 <= shard < shards:
        raise ValueError(f"shard id {shard} is outside 0..{shards - 1}")
    fp = factor_params(config)
    store = ParameterStore(shard_slots(config.model.bits, shards, shard), optimizer_params(config))
    factors = FactorStore(fp, shard, shards) if fp is not None else None
    return ShardModel(config, shard, store, factors)
