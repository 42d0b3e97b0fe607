"""Plain SGD (actors/sgd.py) equals a per-event reference written here, shards do not
change it, and its state survives a snapshot; ``[optimizer]`` picks it."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.exploration import ExplorationUnavailable
from actors.ftrl import GradientAggregator
from actors.learner import ParameterStore, learn_step, split_by_shard
from actors.model import build_shard
from actors.sgd import RATES, SGDParams, fit_sequential
from actors.state import StateError
from runtime import snapshots
from runtime.cluster import CHECKPOINT
from runtime.config import Config, ConfigError
from runtime.system import SnapshotError, System

SPACE = 512
TOL = 1e-9
PARAMS = [SGDParams(rate, eta, l2) for rate in RATES for eta, l2 in ((0.05, 0.0), (0.2, 0.3))]
PARAMS = [*PARAMS, SGDParams("constant", 0.01, 0.0)]
PARAM_IDS = [f"{p.rate}-eta{p.eta}-l2{p.l2}" for p in PARAMS]

Example = tuple[list[tuple[int, float]], float]


class ReferenceSGD:
    """w <- w - rate * (gradient + l2 w), one event at a time, with dicts."""

    def __init__(self, rate: str, eta: float, l2: float) -> None:
        self.rate, self.eta, self.l2 = rate, eta, l2
        self.w: dict[int, float] = {}
        self.n: dict[int, float] = {}

    def learn(self, entries: list[tuple[int, float]], y: float) -> float:
        """One example as (coordinate, value) pairs; returns p before the update."""
        x: dict[int, float] = {}
        for i, v in entries:  # x is a vector: a repeated coordinate is one x_i
            x[i] = x.get(i, 0.0) + v
        logit = sum(self.w.get(i, 0.0) * xi for i, xi in x.items())
        p = 1.0 / (1.0 + math.exp(-max(-35.0, min(35.0, logit))))
        for i, xi in x.items():
            w = self.w.get(i, 0.0)
            g = (p - y) * xi + self.l2 * w
            if self.rate == "adagrad":
                self.n[i] = self.n.get(i, 0.0) + g * g
                step = self.eta / math.sqrt(self.n[i]) if self.n[i] > 0 else 0.0
            elif self.rate == "invsqrt":
                self.n[i] = self.n.get(i, 0.0) + 1.0
                step = self.eta / math.sqrt(self.n[i])
            else:
                self.n[i] = self.n.get(i, 0.0) + 1.0
                step = self.eta
            self.w[i] = w - step * g
        return p

    def arrays(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        w, n = np.zeros(size), np.zeros(size)
        for i, v in self.w.items():
            w[i] = v
        for i, v in self.n.items():
            n[i] = v
        return w, n


def make_examples(count: int, seed: int, duplicates: bool) -> list[Example]:
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        idx = rng.sample(range(SPACE), rng.randint(1, 12))
        if duplicates and rng.random() < 0.5:
            idx.append(rng.choice(idx))
            rng.shuffle(idx)
        entries = [(i, rng.uniform(-2.0, 2.0)) for i in idx]
        examples.append((entries, float(rng.random() < 0.3)))
    return examples


def to_csr(examples: list[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    indptr = np.zeros(len(examples) + 1, np.int64)
    indices: list[int] = []
    values: list[float] = []
    for r, (entries, _) in enumerate(examples):
        indices += [i for i, _ in entries]
        values += [v for _, v in entries]
        indptr[r + 1] = len(indices)
    labels = np.array([y for _, y in examples])
    return indptr, np.asarray(indices, np.int64), np.asarray(values), labels


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("p", PARAMS, ids=PARAM_IDS)
def test_fit_sequential_matches_the_per_event_reference(p: SGDParams) -> None:
    examples = make_examples(2500, seed=7, duplicates=True)
    ref = ReferenceSGD(p.rate, p.eta, p.l2)
    expected = np.array([ref.learn(entries, y) for entries, y in examples])
    w, n = np.zeros(SPACE), np.zeros(SPACE)
    probs = fit_sequential(w, n, *to_csr(examples), np.ones(len(examples)), p)
    ref_w, ref_n = ref.arrays(SPACE)
    assert_close(probs, expected)
    assert_close(w, ref_w)
    assert_close(n, ref_n)
    assert np.count_nonzero(w) > SPACE // 2  # it learned: not a vacuous comparison
    assert np.std(probs) > 1e-3


@pytest.mark.parametrize("p", PARAMS, ids=PARAM_IDS)
def test_the_trainer_and_learner_path_of_batch_one_matches_the_reference(p: SGDParams) -> None:
    examples = make_examples(1500, seed=11, duplicates=True)
    ref = ReferenceSGD(p.rate, p.eta, p.l2)
    store = ParameterStore(SPACE, p)
    aggregate = GradientAggregator(SPACE)
    got, expected = [], []
    for entries, y in examples:
        expected.append(ref.learn(entries, y))
        indptr, indices, values, labels = to_csr([(entries, y)])
        probs, idx, g = aggregate.logistic_step(
            store.w, indptr, indices, values, labels, np.ones(1)
        )
        store.learn(idx, g)
        got.append(float(probs[0]))
    ref_w, ref_n = ref.arrays(SPACE)
    assert_close(np.array(got), np.array(expected))
    assert_close(store.w, ref_w)
    assert_close(store.n, ref_n)
    assert store.z.size == 0  # SGD keeps no FTRL sums


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_sharded_application_is_bit_identical(shards: int) -> None:
    p = SGDParams("adagrad", 0.1, 0.2)
    rng = np.random.default_rng(shards)
    whole, sharded = ParameterStore(SPACE, p), ParameterStore(SPACE, p)
    for _ in range(20):
        size = int(rng.integers(1, 3000))
        indices = rng.integers(0, SPACE, size)
        grads = rng.normal(0.0, 1.0, size)
        whole.learn(indices, grads)
        for k, (local, g) in enumerate(split_by_shard(indices, grads, shards)):
            _, n, w = sharded.shard_view(k, shards)
            learn_step(p, np.zeros(0), n, w, local, g)
    assert np.array_equal(sharded.w, whole.w)
    assert np.array_equal(sharded.n, whole.n)
    assert np.count_nonzero(whole.w) > SPACE // 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        SGDParams("cosine")
    with pytest.raises(ValueError, match="eta"):
        SGDParams(eta=0.0)
    with pytest.raises(ConfigError, match=r"optimizer\.kind"):
        Config.from_dict({"optimizer": {"kind": "adam"}})
    with pytest.raises(ConfigError, match=r"optimizer\.rate"):
        Config.from_dict({"optimizer": {"kind": "sgd", "rate": "cosine"}})
    with pytest.raises(ConfigError, match=r"optimizer\.l2"):
        Config.from_dict({"optimizer": {"l2": -1}})
    with pytest.raises(ConfigError, match="thompson"):
        Config.from_dict({"optimizer": {"kind": "sgd"}, "exploration": {"mode": "thompson"}})


# --------------------------------------------------------------------------- the System


def clicks(count: int, seed: int) -> list[dict[str, Any]]:
    """Implicit positives, and every third event labelled 0 or 1 (timed: the trends
    would otherwise count them at their arrival)."""
    rng = random.Random(seed)
    events = []
    for k in range(count):
        event = {"user": f"u{rng.randint(0, 30)}", "item": f"i{rng.randint(0, 40)}",
                 "user_features": {"age": str(rng.randint(1, 5))},
                 "ts": 1_700_000_000.0 + 1000 * seed + k}  # fmt: skip
        if k % 3 == 0:
            event["label"] = rng.randint(0, 1)
        events.append(event)
    return events


def sgd_config(tmp_path: Path, **training: Any) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 14, "factor_bits": 10},
            "optimizer": {"kind": "sgd", "rate": "adagrad", "eta": 0.1, "l2": 0.01},
            "training": {"batch_size": 16, "rank_eval_every": 5, "rank_eval_rows": 0, **training},
            "state": {"snapshot_path": str(tmp_path / "s.msgpack"), "restore": True},
            "ingest": {"dead_letter_path": ""},
            "http": {"enabled": False},
        }
    )


async def learned(config: Config, events: list[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    async with System(config) as system:
        result = await system.ingest(events)
        assert result.accepted == len(events), result.errors[:3]
        return system.store.w.copy(), system.store.n.copy()


async def test_the_system_learns_the_same_weights_on_any_number_of_shards(
    tmp_path: Path,
) -> None:
    events = clicks(400, seed=1)
    w1, n1 = await learned(sgd_config(tmp_path, shards=1), events)
    w3, n3 = await learned(sgd_config(tmp_path, shards=3), events)
    np.testing.assert_array_equal(w3, w1)
    np.testing.assert_array_equal(n3, n1)
    assert np.count_nonzero(w1) > 100


async def test_a_snapshot_restores_the_sgd_state_and_learning_continues_the_same(
    tmp_path: Path,
) -> None:
    first, second = clicks(300, seed=2), clicks(200, seed=3)
    config = sgd_config(tmp_path)
    async with System(config) as system:
        await system.ingest(first)
        system.write_snapshot()
        before = system.store.w.copy(), system.store.n.copy()
        metrics = system.statistics()["metrics"]
        await system.ingest(second)
        after = system.store.w.copy(), system.store.n.copy()
    async with System(config) as restored:
        np.testing.assert_array_equal(restored.store.w, before[0])
        np.testing.assert_array_equal(restored.store.n, before[1])
        assert restored.statistics()["metrics"] == metrics
        await restored.ingest(second)
        np.testing.assert_array_equal(restored.store.w, after[0])
        np.testing.assert_array_equal(restored.store.n, after[1])
        with pytest.raises(ExplorationUnavailable, match="sgd"):
            await restored.recommend("u1", k=3, explore="thompson")
    ftrl = Config.from_dict({**config.to_dict(), "optimizer": {"kind": "ftrl"}})
    with pytest.raises(SnapshotError, match="differ"):
        System(ftrl).restore(tmp_path / "s.msgpack")


def test_a_shard_checkpoint_round_trips_the_sgd_slice(tmp_path: Path) -> None:
    config = sgd_config(tmp_path, shards=2)
    shard = build_shard(config, 1)
    rng = np.random.default_rng(0)
    shard.store.learn(rng.integers(0, shard.store.w.size, 500), rng.normal(size=500))
    path = snapshots.save(tmp_path / "c", CHECKPOINT, shard.settings(), shard.parts())
    restored = build_shard(config, 1)
    snapshots.load(path, CHECKPOINT, restored.settings(), restored.parts())
    np.testing.assert_array_equal(restored.store.w, shard.store.w)
    np.testing.assert_array_equal(restored.store.n, shard.store.n)
    assert np.count_nonzero(restored.store.w) > 100
    with pytest.raises(StateError, match="differ"):
        ftrl = build_shard(Config.from_dict({**config.to_dict(), "optimizer": {}}), 1)
        snapshots.load(path, CHECKPOINT, ftrl.settings(), ftrl.parts())
