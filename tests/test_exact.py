"""Exact per-event learning at any batch size (issue 11): each event is predicted with
weights that already include every earlier event, as in McMahan et al. 2013, Algorithm 1,
whatever the batch size and the number of shards."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np

from actors.factors import FactorParams, initial_vectors
from actors.features import expand_dense, expand_dense_factors
from actors.ftrl import MAX_LOGIT
from actors.model import factor_params
from actors.readers import read_ctr_tsv
from actors.simulator import Simulator, SimulatorConfig
from runtime.config import Config
from runtime.messages import EventBatch
from runtime.system import System


class PlainFTRL:
    """The paper's per-coordinate FTRL-Proximal (McMahan et al. 2013, Algorithm 1) in
    plain Python dicts."""

    def __init__(self, alpha: float, beta: float, l1: float, l2: float) -> None:
        self.alpha, self.beta, self.l1, self.l2 = alpha, beta, l1, l2
        self.z: dict[int, float] = {}
        self.n: dict[int, float] = {}

    def weight(self, i: int) -> float:
        zi, ni = self.z.get(i, 0.0), self.n.get(i, 0.0)
        if abs(zi) <= self.l1:
            return 0.0
        return -(zi - math.copysign(self.l1, zi)) / (
            (self.beta + math.sqrt(ni)) / self.alpha + self.l2
        )

    def logit(self, indices: list[int], values: list[float]) -> float:
        return sum(self.weight(i) * x for i, x in zip(indices, values, strict=True))

    def learn(self, indices: list[int], values: list[float], err: float) -> None:
        for i, x in zip(indices, values, strict=True):
            g, ni, wi = err * x, self.n.get(i, 0.0), self.weight(i)
            sigma = (math.sqrt(ni + g * g) - math.sqrt(ni)) / self.alpha
            self.z[i] = self.z.get(i, 0.0) + g - sigma * wi
            self.n[i] = ni + g * g


def sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(max(logit, -MAX_LOGIT), MAX_LOGIT)))


def algorithm_1(
    rows: list[tuple[list[int], list[float], float]], alpha: float, beta: float, l1: float,
    l2: float,
) -> tuple[list[float], dict[int, float]]:  # fmt: skip
    """Algorithm 1 one event at a time: each event's prediction before it is learned,
    and the final weights."""
    ftrl = PlainFTRL(alpha, beta, l1, l2)
    predictions = []
    for indices, values, label in rows:
        p = sigmoid(ftrl.logit(indices, values))
        predictions.append(p)
        ftrl.learn(indices, values, p - label)
    return predictions, {i: ftrl.weight(i) for i in ftrl.z}


Row = tuple[list[int], list[float], float]


async def learn(
    config: Config, batches: list[EventBatch], factor_rows: list[list[int]] | None = None
) -> tuple[System, np.ndarray, list[Row]]:
    """Each batch learned in turn: the predictions the trainer evaluated it with, and the
    batch's rows as the trainer expanded them (global index, value, label); with
    ``factor_rows``, each row's vector rows are appended to it."""
    predictions: list[np.ndarray] = []
    rows: list[Row] = []
    async with System(config) as system:
        featurizer = system.model.featurizer()
        for batch in batches:
            await system.submit(batch)
            await system.drain()
            predictions.append(system.trainer.scored[1])
            features = featurizer.featurize(batch)
            indptr, indices, values = expand_dense(system.model.space, features.dense)
            if factor_rows is not None and system.model.factors is not None:
                mask = system.model.factors.params.mask
                fptr, fidx, _ = expand_dense_factors(features.dense, mask)
                factor_rows += [fidx[fptr[r] : fptr[r + 1]].tolist() for r in range(len(features))]
            for r in range(len(features)):
                lo, hi = indptr[r], indptr[r + 1]
                rows.append(
                    (indices[lo:hi].tolist(), values[lo:hi].tolist(), float(features.label[r]))
                )
    return system, np.concatenate(predictions), rows


def ctr_config(shards: int, batch_size: int) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 20},
            "training": {"shards": shards, "batch_size": batch_size},
            "state": {"restore": False},
            "ingest": {"dead_letter_path": ""},
        }
    )


def batches_of(path: Path, criteo: bool, batch_size: int) -> list[EventBatch]:
    chunks = read_ctr_tsv(path, criteo=criteo, batch_size=batch_size)
    return [chunk.batch for chunk in chunks if chunk.batch is not None and len(chunk.batch)]


async def test_criteo_sample_at_batch_256_with_4_shards_equals_algorithm_1(
    criteo_train: Path,
) -> None:
    config = ctr_config(shards=4, batch_size=256)
    system, predictions, rows = await learn(config, batches_of(criteo_train, True, 256))
    p = config.ftrl
    expected, weights = algorithm_1(rows, p.alpha, p.beta, p.l1, p.l2)
    assert len(rows) == 7200 and predictions.size == len(expected)
    np.testing.assert_allclose(predictions, expected, rtol=0, atol=1e-9)
    index = np.fromiter(weights, np.int64)
    learned = system.model.store.w[index]
    np.testing.assert_allclose(learned, list(weights.values()), rtol=0, atol=1e-9)
    assert np.count_nonzero(learned) > 1000  # the weights are not all zero


def synthetic_ctr(path: Path, events: int) -> Path:
    rng = np.random.default_rng(7)
    lines = ["label\tf0\tf1\tf2"]
    for _ in range(events):
        f = rng.integers(0, [5, 40, 300])
        label = int(rng.random() < (0.7 if f[0] == 1 else 0.2))
        lines.append(f"{label}\ta{f[0]}\tb{f[1]}\tc{f[2]}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_the_batch_size_and_the_shards_change_nothing_but_the_speed(
    tmp_path: Path,
) -> None:
    log = synthetic_ctr(tmp_path / "ctr.tsv", 3000)
    runs = []
    for shards, batch_size in ((1, 1), (1, 256), (3, 1000)):
        config = ctr_config(shards, batch_size)
        system, predictions, _ = await learn(config, batches_of(log, False, batch_size))
        runs.append((predictions, system.model.store.w.copy()))
    for predictions, weights in runs[1:]:
        np.testing.assert_allclose(predictions, runs[0][0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(weights, runs[0][1], rtol=0, atol=1e-9)
    assert runs[0][0].std() > 0.05  # it learned something: predictions vary


def fm_reference(
    rows: list[Row], factor_rows: list[list[int]], ftrl: tuple[float, ...], fp: FactorParams
) -> list[float]:
    """Per event, in plain Python: FTRL-Proximal on the linear part and AdaGrad on the
    vectors (x = 1 each, as a CTR file's columns), each row's vector gradients taken before
    its steps; a vector learned for the first time starts at its seeded start."""
    linear = PlainFTRL(*ftrl)
    init = initial_vectors(fp)
    v: dict[int, np.ndarray] = {}
    vn: dict[int, np.ndarray] = {}
    predictions = []
    zero = np.zeros(fp.k)
    for (indices, values, label), vector_rows in zip(rows, factor_rows, strict=True):
        vectors = [v.get(j, zero) for j in vector_rows]
        a = np.sum(vectors, axis=0)
        pairwise = 0.5 * (a @ a - sum(u @ u for u in vectors))
        p = sigmoid(linear.logit(indices, values) + pairwise)
        predictions.append(p)
        grads = [(p - label) * (a - u) for u in vectors]
        linear.learn(indices, values, p - label)
        for j, g in zip(vector_rows, grads, strict=True):
            if j not in v:
                v[j], vn[j] = init[j].copy(), np.zeros(fp.k)
            gf = g + fp.l2 * v[j]
            vn[j] = vn[j] + gf * gf
            v[j] = v[j] - fp.alpha * gf / (fp.beta + np.sqrt(vn[j]))
    return predictions


async def test_with_factor_terms_each_event_equals_a_plain_per_event_fm(
    criteo_train: Path,
) -> None:
    config = ctr_config(shards=4, batch_size=256)
    config.model.factors_dense, config.training.exact_factors = True, True
    batches = batches_of(criteo_train, True, 256)[:8]  # 2,048 events: the reference is slow
    vector_rows: list[list[int]] = []
    _, predictions, rows = await learn(config, batches, vector_rows)
    fp = factor_params(config)
    assert fp is not None and len(rows) == 2048
    p = config.ftrl
    expected = fm_reference(rows, vector_rows, (p.alpha, p.beta, p.l1, p.l2), fp)
    np.testing.assert_allclose(predictions, expected, rtol=0, atol=1e-9)
    linear_only, _ = algorithm_1(rows, p.alpha, p.beta, p.l1, p.l2)
    assert np.abs(np.asarray(expected) - linear_only).max() > 1e-3  # the vectors count


def simulated_stream() -> list[dict[str, Any]]:
    """Items new mid-stream, one item's price changed (interactions name their items'
    features only when they first appear, so the change stays)."""
    sim = Simulator(SimulatorConfig(seed=11, n_users=40, n_items=60))
    events = sim.items() + sim.next_batch(900)
    known: set[str] = set()
    for event in events:
        if event["item"] in known:
            event.pop("item_features", None)
        known.add(event["item"])
    changed = {"item": "i3", "item_features": {"genre": ["drama"], "price": 99.0}}
    return [{"ts": 1_700_000_000.0, **e} for e in [*events[:500], changed, *events[500:]]]


async def learned_state(requests: list[list[dict[str, Any]]], ahead: bool) -> dict[str, Any]:
    """The weights and vectors after learning ``requests`` one at a time, or (``ahead``)
    with the trainer held until every request is featurized."""
    config = Config.from_dict({"model": {"bits": 16}, "state": {"restore": False},
                               "ingest": {"dead_letter_path": ""}})  # fmt: skip
    async with System(config) as system:
        if ahead:
            trainer = system.pipeline.trainer
            gate = asyncio.Event()
            handle = trainer.handle

            async def gated(message: Any) -> None:
                await gate.wait()
                await handle(message)

            trainer.handle = gated  # type: ignore[method-assign]
            for request in requests:
                await system.ingest(request, wait=False)
            gate.set()
        else:
            for request in requests:
                await system.ingest(request)
        await system.drain()
        assert system.model.factors is not None
        return {
            "weights": system.model.store.to_state(),
            "factors": system.model.factors.to_state(),
        }


async def test_how_far_the_featurizer_runs_ahead_never_changes_what_is_learned() -> None:
    """The featurizer adds items and changes their features while the trainer still learns
    earlier batches: what it learns must be what it learns when nothing runs ahead (a
    journal replay queues every record at once, a live daemon learns each request before
    the next comes)."""
    events = simulated_stream()
    requests = [events[lo : lo + 40] for lo in range(0, len(events), 40)]
    alone, ahead = await learned_state(requests, False), await learned_state(requests, True)
    for part, state in alone.items():
        assert state.keys() == ahead[part].keys()
        for key in state:
            np.testing.assert_array_equal(ahead[part][key], state[key], err_msg=f"{part} {key}")


def simulated_clicks(seed: int, events: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The simulator's items, and its clicks on them one second apart."""
    sim = Simulator(SimulatorConfig(seed=seed, n_users=30, n_items=40))
    items = sim.items()
    known = {e["item"] for e in items}
    clicks = [
        {"ts": 1_700_000_000.0 + k, "user": e["user"], "item": e["item"]}
        for k, e in enumerate(sim.next_batch(events))
        if "user" in e and e["item"] in known
    ]
    return items, clicks


async def test_sampled_negatives_do_not_depend_on_the_batch_size() -> None:
    """Implicit feedback (sampled negatives, sequence signals, factor terms): what is
    learned is the same at any batch size, since an event's negatives are drawn from
    its place in the stream, not from its batch (every item known from the start)."""
    items, clicks = simulated_clicks(seed=5, events=700)
    states = []
    for batch_size in (1, 37, 256):
        config = Config.from_dict({"model": {"bits": 16}, "state": {"restore": False},
                                   "training": {"batch_size": batch_size},
                                   "ingest": {"dead_letter_path": ""}})  # fmt: skip
        async with System(config) as system:
            await system.ingest(items)
            await system.ingest(clicks)
            assert system.model.factors is not None
            states.append((system.model.store.to_state(), system.model.factors.to_state()))
    for weights, factors in states[1:]:  # the same sums, added up in another order
        for got, want in zip((weights, factors), states[0], strict=True):
            for key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-9, err_msg=key)


async def test_every_ranking_sees_every_earlier_event_at_any_batch_size() -> None:
    """With ``training.exact_rankings`` the progressive ranking of an event scores the
    catalog with weights that include every event before it, so each evaluated event gets
    the same rank at any batch size (without it, a batch's rankings see only the batches
    before it)."""
    items, clicks = simulated_clicks(seed=7, events=600)
    ranks: dict[int, list[int | None]] = {}
    for batch_size in (1, 37, 256):
        config = Config.from_dict({"model": {"bits": 16}, "state": {"restore": False},
                                   "training": {"batch_size": batch_size, "rank_eval_every": 3,
                                                "rank_eval_rows": 0, "exact_rankings": True},
                                   "ingest": {"dead_letter_path": ""}})  # fmt: skip
        async with System(config) as system:
            ranking = system.pipeline.trainer.metrics.ranking
            seen: list[int | None] = []
            update = ranking.update

            def record(rank: int | None, update: Any = update, seen: list[Any] = seen) -> None:
                seen.append(rank)
                update(rank)

            ranking.update = record  # type: ignore[method-assign]
            await system.ingest(items)
            await system.ingest(clicks)
            ranks[batch_size] = seen
    assert len(ranks[1]) == len(clicks) // 3
    assert ranks[37] == ranks[1]
    assert ranks[256] == ranks[1]
