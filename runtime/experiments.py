"""Experiments in one process: every variant's model learns from the same events in its
own pipeline, and each request is ranked by the user's variant (or interleaved).

    ingest ─► ExperimentPipeline.submit ─► the base Pipeline (as without experiments)
                                        └► one Pipeline per variant with its own model

Batches reach every pipeline in one order, so a sequence number names the same events in
each; :class:`AllLearned` is learned once every pipeline has learned it, which is what
ingest, drains, snapshots and forgetting wait for.  The variants' models are a part of the
base model (``Model.experiments``, actors/experiments.py), so snapshots and the journal's
replay cover them like everything else.  Cluster roles refuse an ``[experiments]`` section.
"""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from actors.experiments import Experiments, estimate, mean_interval, wilson_interval
from actors.model import Model
from actors.ranker import Ranker
from actors.trainer import Watermark
from runtime.errors import BadRequest
from runtime.messages import NOT_EVALUATED, NOT_SCORED, EventBatch
from runtime.pipeline import Pipeline
from runtime.recommendations import INTERLEAVED, Recommendations
from runtime.supervisor import Service, Supervisor
from runtime.transport import MemoryTransport, Transport

Rank = Callable[..., list[dict[str, Any]]]


class AllLearned(Watermark):
    """The highest sequence number every pipeline has learned."""

    def __init__(self, parts: list[Watermark]) -> None:
        self.parts = parts  # it waits on its parts, so it keeps no waiters of its own

    @property
    def value(self) -> int:
        return min(part.value for part in self.parts)

    @value.setter
    def value(self, seq: int) -> None:
        self.advance(seq)

    def fail(self, error: BaseException) -> None:
        for part in self.parts:
            part.fail(error)

    def advance(self, seq: int) -> None:
        for part in self.parts:
            part.advance(seq)

    async def wait_for(self, seq: int) -> None:
        for part in self.parts:
            await part.wait_for(seq)


class ExperimentPipeline(Pipeline):
    """The base pipeline, and one per variant with a model of its own, fed the same batches."""

    def __init__(self, model: Model, transport: Transport, *wiring: Any) -> None:
        """``wiring``: the supervisor and clock, as :class:`Pipeline` takes them."""
        super().__init__(model, transport, *wiring)
        assert model.experiments is not None
        self.experiments: Experiments = model.experiments
        roundtrip = model.config.queues.codec_roundtrip
        self.variants = [
            Pipeline(own, MemoryTransport(roundtrip), self.supervisor, self.clock)
            for own in self.experiments.own_models()
        ]
        self.learned = AllLearned([self.learned, *(v.learned for v in self.variants)])
        self._fan_out = asyncio.Lock()  # every pipeline gets the batches in one order

    async def submit(self, batch: EventBatch) -> int:
        copies = [_variant_batch(batch) for _ in self.variants]
        async with self._fan_out:
            seq = await super().submit(batch)
            for variant, batch_copy in zip(self.variants, copies, strict=True):
                await variant.submit(batch_copy)
        return seq

    def recount(self) -> None:
        super().recount()
        for variant in self.variants:
            variant.recount()

    def statistics(self) -> dict[str, Any]:
        own = [name for name, m in self.experiments.models.items() if m is not None]
        trainers = {
            name: v.trainer.statistics() for name, v in zip(own, self.variants, strict=True)
        }
        report = experiment_statistics(self.model)
        return {**super().statistics(), "experiments": report, "variant_trainers": trainers}

    @property
    def services(self) -> list[Service]:
        variants = [service for v in self.variants for service in v.services]
        return [*variants, *super().services]


def _variant_batch(batch: EventBatch) -> EventBatch:
    """A copy for a variant's pipeline (which numbers and changes it), without the base
    model's prescores: a variant's metrics judge its own predictions."""
    clone = copy.deepcopy(batch)
    if clone.prescore.size:
        evaluated = clone.prescore != NOT_EVALUATED
        clone.prescore = np.where(evaluated, NOT_SCORED, NOT_EVALUATED)
    return clone


def build_pipeline(
    model: Model, transport: Transport, supervisor: Supervisor, clock: Callable[[], float]
) -> Pipeline:
    """The embedded pipeline: with experiments, one that also feeds every variant."""
    if model.experiments is None:
        return Pipeline(model, transport, supervisor, clock)
    return ExperimentPipeline(model, transport, supervisor, clock)


def variant_ranking(model: Model, base: Ranker, user: str, variant: str | None) -> Rank:
    """What ranks ``user``'s request: the base ranker without experiments; else the ranker
    of ``variant`` (a debugging override), of the user's variant, or both interleaved;
    the answer is :class:`Recommendations` naming the variant."""
    experiments = model.experiments
    if experiments is None:
        if variant is not None:
            raise BadRequest("'variant' needs an [experiments] section, and none is configured")
        return base.recommend
    if variant is not None and variant not in experiments.names:
        raise BadRequest(f"unknown variant {variant[:64]!r}; the variants: {experiments.names}")
    if variant is None and experiments.interleaving:
        return lambda *args: _interleaved(experiments, base, *args)
    name = variant or experiments.assign(user)
    ranker = experiments.ranker(name, base)
    return lambda *args: Recommendations(ranker.recommend(*args), variant=name)


def _interleaved(
    experiments: Experiments, base: Ranker, user: str, k: int, *rest: Any
) -> Recommendations:
    """Both variants' top k merged by team draft; each item names the team it came from."""
    answers = [
        experiments.ranker(name, base).recommend(user, k, *rest) for name in experiments.names
    ]
    first, second = ([entry["item"] for entry in answer] for answer in answers)
    entries = [{entry["item"]: entry for entry in answer} for answer in answers]
    picked = experiments.interleave(user, (first, second), k)
    items = [{**entries[team][item], "team": experiments.names[team]} for item, team in picked]
    return Recommendations(items, variant=INTERLEAVED)


def experiment_statistics(model: Model) -> dict[str, Any] | None:
    """Per variant: progressive HR@k and NDCG@k (each variant's model evaluated on every
    event, since every variant learns from every event), the click-through of the
    impressions it served, each with a 95% interval; the interleaving win rate."""
    experiments = model.experiments
    if experiments is None:
        return None
    variants = {}
    for name, share in zip(experiments.names, experiments.shares, strict=True):
        own = experiments.models[name]
        ranking = (own or model).metrics.ranking
        total, total_sq, n = ranking.ndcg_moments()
        shown, clicks = experiments.online[name]
        variants[name] = {
            "share": share,
            "model": "base" if own is None else "own",
            f"hr@{ranking.k}": estimate(ranking.hit_rate(), wilson_interval(ranking.hits, n), n),
            f"ndcg@{ranking.k}": estimate(ranking.ndcg(), mean_interval(total, total_sq, n), n),
            "ctr": estimate(_rate(clicks, shown), wilson_interval(clicks, shown), shown),
        }
    out: dict[str, Any] = {"seed": experiments.seed, "variants": variants}
    if experiments.interleaving:
        out["interleaving"] = _interleaving_statistics(experiments)
    return out


def _interleaving_statistics(experiments: Experiments) -> dict[str, Any]:
    first, second = experiments.names
    won_first, won_second, ties = experiments.win_counts()
    decided = won_first + won_second
    win_rate = estimate(_rate(won_first, decided), wilson_interval(won_first, decided), decided)
    return {
        "lists_served": experiments.served,
        "wins": {first: won_first, second: won_second},
        "ties": ties,
        "win_rate": {"variant": first, **win_rate},
    }


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else math.nan
