"""Exact per-event learning at any batch size (issue 11): each event is predicted with
weights that already include every earlier event, as in McMahan et al. 2013, Algorithm 1,
whatever the batch size and the number of shards."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from actors.features import expand_dense
from actors.ftrl import MAX_LOGIT
from actors.readers import read_ctr_tsv
from runtime.config import Config
from runtime.messages import EventBatch
from runtime.system import System


def algorithm_1(
    rows: list[tuple[list[int], list[float], float]], alpha: float, beta: float, l1: float,
    l2: float,
) -> tuple[list[float], dict[int, float]]:  # fmt: skip
    """The paper's per-coordinate FTRL-Proximal, one event at a time, in plain Python:
    each event's prediction before it is learned, and the final weights."""
    z: dict[int, float] = {}
    n: dict[int, float] = {}

    def weight(i: int) -> float:
        zi, ni = z.get(i, 0.0), n.get(i, 0.0)
        if abs(zi) <= l1:
            return 0.0
        return -(zi - math.copysign(l1, zi)) / ((beta + math.sqrt(ni)) / alpha + l2)

    predictions = []
    for indices, values, label in rows:
        logit = sum(weight(i) * x for i, x in zip(indices, values, strict=True))
        p = 1.0 / (1.0 + math.exp(-min(max(logit, -MAX_LOGIT), MAX_LOGIT)))
        predictions.append(p)
        for i, x in zip(indices, values, strict=True):
            g, ni, wi = (p - label) * x, n.get(i, 0.0), weight(i)
            z[i] = z.get(i, 0.0) + g - (math.sqrt(ni + g * g) - math.sqrt(ni)) / alpha * wi
            n[i] = ni + g * g
    return predictions, {i: weight(i) for i in z}


async def learn(config: Config, batches: list[EventBatch]) -> tuple[System, np.ndarray, list]:
    """Each batch learned in turn: the predictions the trainer evaluated it with, and the
    batch's rows as the trainer expanded them (global index, value, label)."""
    predictions: list[np.ndarray] = []
    rows: list[tuple[list[int], list[float], float]] = []
    async with System(config) as system:
        featurizer = system.model.featurizer()
        for batch in batches:
            await system.submit(batch)
            await system.drain()
            predictions.append(system.trainer.scored[1])
            features = featurizer.featurize(batch)
            indptr, indices, values = expand_dense(system.model.space, features.dense)
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
