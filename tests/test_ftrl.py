"""FTRL-Proximal kernels against an independent, plainly written reference.

The reference below is McMahan et al., "Ad Click Prediction: a View from the
Trenches" (KDD 2013), Algorithm 1, transcribed per coordinate with Python dicts
and floats: no numpy, no numba, nothing shared with ``actors.ftrl``.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from actors.ftrl import (
    FTRLParams,
    GradientAggregator,
    apply_gradients,
    dot_rows,
    fit_sequential,
    predict_logits,
    row_gradients,
    sigmoid,
    weights_at,
)
from actors.learner import ParameterStore, split_by_shard

SPACE = 1 << 10
TOL = 1e-9

PARAMS = [
    FTRLParams(alpha=0.1, beta=1.0, l1=0.0, l2=0.0),
    FTRLParams(alpha=0.5, beta=1.0, l1=1.0, l2=0.0),
    FTRLParams(alpha=0.05, beta=0.5, l1=0.0, l2=2.0),
    FTRLParams(alpha=0.3, beta=1.0, l1=0.4, l2=1.5),
    FTRLParams(alpha=1.0, beta=0.0, l1=0.2, l2=0.1),
]
PARAM_IDS = [f"a{p.alpha}-b{p.beta}-l1_{p.l1}-l2_{p.l2}" for p in PARAMS]


# --------------------------------------------------------------------------- reference


class ReferenceFTRL:
    """Algorithm 1 of McMahan et al. 2013 (logistic loss, per-coordinate rates, L1 + L2)."""

    def __init__(self, alpha: float, beta: float, l1: float, l2: float) -> None:
        self.alpha, self.beta, self.l1, self.l2 = alpha, beta, l1, l2
        self.z: dict[int, float] = {}
        self.n: dict[int, float] = {}

    def weight(self, i: int) -> float:
        z = self.z.get(i, 0.0)
        n = self.n.get(i, 0.0)
        if abs(z) <= self.l1:
            return 0.0
        sgn = 1.0 if z > 0 else -1.0
        return -(z - sgn * self.l1) / ((self.beta + math.sqrt(n)) / self.alpha + self.l2)

    def learn(self, entries: list[tuple[int, float]], y: float) -> float:
        """One example given as (coordinate, value) pairs; returns p before the update."""
        x: dict[int, float] = {}
        for i, v in entries:  # x is a vector: a repeated coordinate is one x_i
            x[i] = x.get(i, 0.0) + v
        w = {i: self.weight(i) for i in x}
        logit = sum(w[i] * x[i] for i in x)
        p = 1.0 / (1.0 + math.exp(-logit))
        for i, xi in x.items():
            g = (p - y) * xi
            n = self.n.get(i, 0.0)
            sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / self.alpha
            self.z[i] = self.z.get(i, 0.0) + g - sigma * w[i]
            self.n[i] = n + g * g
        return p

    def arrays(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        z = np.zeros(size)
        n = np.zeros(size)
        for i, v in self.z.items():
            z[i] = v
        for i, v in self.n.items():
            n[i] = v
        return z, n


def make_examples(
    count: int, seed: int, duplicates: bool
) -> list[tuple[list[tuple[int, float]], float]]:
    """Random sparse examples over a small space (coordinates repeat across examples)."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        k = rng.randint(1, 12)
        idx = rng.sample(range(SPACE), k)
        if duplicates and rng.random() < 0.5:
            idx.append(rng.choice(idx))  # the same coordinate twice in one example
            rng.shuffle(idx)
        entries = [(i, rng.uniform(-2.0, 2.0)) for i in idx]
        examples.append((entries, float(rng.random() < 0.3)))
    return examples


def to_csr(
    examples: list[tuple[list[tuple[int, float]], float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    indptr = np.zeros(len(examples) + 1, np.int64)
    indices: list[int] = []
    values: list[float] = []
    labels = np.zeros(len(examples))
    for r, (entries, y) in enumerate(examples):
        for i, v in entries:
            indices.append(i)
            values.append(v)
        indptr[r + 1] = len(indices)
        labels[r] = y
    return indptr, np.asarray(indices, np.int64), np.asarray(values), labels


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL)


# --------------------------------------------------------------------------- sequential


@pytest.mark.parametrize("p", PARAMS, ids=PARAM_IDS)
def test_fit_sequential_matches_algorithm_1(p: FTRLParams) -> None:
    examples = make_examples(2500, seed=7, duplicates=False)
    ref = ReferenceFTRL(p.alpha, p.beta, p.l1, p.l2)
    expected = np.array([ref.learn(entries, y) for entries, y in examples])

    indptr, indices, values, labels = to_csr(examples)
    z = np.zeros(SPACE)
    n = np.zeros(SPACE)
    probs = fit_sequential(z, n, indptr, indices, values, labels, np.ones(len(examples)), p)

    ref_z, ref_n = ref.arrays(SPACE)
    assert_close(probs, expected)
    assert_close(z, ref_z)
    assert_close(n, ref_n)
    # the run really learned something (not a vacuous all-zero comparison)
    assert np.count_nonzero(n) > SPACE // 2
    assert np.std(probs) > 1e-3


# --------------------------------------------------------------------------- batch path


@pytest.mark.parametrize("p", PARAMS, ids=PARAM_IDS)
def test_batch_path_of_size_one_matches_algorithm_1(p: FTRLParams) -> None:
    examples = make_examples(2000, seed=11, duplicates=True)
    assert sum(len({i for i, _ in e}) < len(e) for e, _ in examples) > 500
    ref = ReferenceFTRL(p.alpha, p.beta, p.l1, p.l2)
    z = np.zeros(SPACE)
    n = np.zeros(SPACE)
    aggregate = GradientAggregator(SPACE)
    got = []
    expected = []
    for entries, y in examples:
        expected.append(ref.learn(entries, y))
        indptr, indices, values, labels = to_csr([(entries, y)])
        probs = sigmoid(predict_logits(z, n, indptr, indices, values, p))
        grads = row_gradients(probs, labels, np.ones(1), indptr, values)
        idx, g = aggregate(indices, grads)
        assert idx.size == len({i for i, _ in entries})
        apply_gradients(z, n, idx, g, p)
        got.append(float(probs[0]))
    ref_z, ref_n = ref.arrays(SPACE)
    assert_close(np.array(got), np.array(expected))
    assert_close(z, ref_z)
    assert_close(n, ref_n)
    assert np.count_nonzero(n) > SPACE // 2


def test_batch_path_without_aggregation_differs_on_duplicates() -> None:
    """Sanity check of the test above: applying a duplicated coordinate twice is not Algorithm 1."""
    p = PARAMS[0]
    entries, y = [(3, 1.0), (3, 0.5), (9, -1.0)], 1.0
    ref = ReferenceFTRL(p.alpha, p.beta, p.l1, p.l2)
    for _ in range(3):
        ref.learn(entries, y)
    z = np.zeros(SPACE)
    n = np.zeros(SPACE)
    for _ in range(3):
        indptr, indices, values, labels = to_csr([(entries, y)])
        probs = sigmoid(predict_logits(z, n, indptr, indices, values, p))
        apply_gradients(z, n, indices, row_gradients(probs, labels, np.ones(1), indptr, values), p)
    assert abs(z[3] - ref.z[3]) > 1e-6


def test_row_gradients_are_per_entry_logistic_gradients() -> None:
    indptr = np.array([0, 2, 2, 5], np.int64)
    values = np.array([1.0, -2.0, 0.5, 3.0, 1.0])
    probs = np.array([0.2, 0.9, 0.6])
    labels = np.array([1.0, 0.0, 0.0])
    weights = np.array([1.0, 5.0, 2.0])
    expected = [(0.2 - 1) * 1.0, (0.2 - 1) * -2.0, 1.2 * 0.5, 1.2 * 3.0, 1.2 * 1.0]
    assert_close(row_gradients(probs, labels, weights, indptr, values), np.array(expected))


# --------------------------------------------------------------------------- L1 sparsity


def closed_form_weight(z: float, n: float, p: FTRLParams) -> float:
    if abs(z) <= p.l1:
        return 0.0
    return -(z - math.copysign(p.l1, z)) / ((p.beta + math.sqrt(n)) / p.alpha + p.l2)


def test_l1_gives_exact_zeros_and_weights_at_matches_closed_form() -> None:
    examples = make_examples(3000, seed=5, duplicates=False)
    indptr, indices, values, labels = to_csr(examples)
    everything = np.arange(SPACE)
    results = {}
    for l1 in (0.0, 2.0):
        p = FTRLParams(alpha=0.2, beta=1.0, l1=l1, l2=0.5)
        store = ParameterStore(SPACE, p)
        fit_sequential(store.z, store.n, indptr, indices, values, labels, np.ones(len(labels)), p)
        store.refresh()
        w = weights_at(store.z, store.n, everything, p)
        expected = [closed_form_weight(store.z[i], store.n[i], p) for i in range(SPACE)]
        assert_close(w, np.array(expected))
        assert_close(store.weights(everything), w)
        assert store.nonzero_weights() == int(np.count_nonzero(w))
        touched = store.n > 0
        results[l1] = (w, touched, store.z, store.n)

    w0, touched0, _, _ = results[0.0]
    w1, touched1, z1, n1 = results[2.0]
    # without L1 virtually every touched coordinate has a non-zero weight
    assert np.count_nonzero(w0[touched0]) > 0.95 * touched0.sum()
    # with L1 many touched coordinates are exactly 0.0 (not merely tiny), exactly where |z| <= l1
    zeros = touched1 & (w1 == 0.0)
    assert zeros.sum() > 0.2 * touched1.sum()
    assert np.array_equal(w1 == 0.0, np.abs(z1) <= 2.0)
    nonzero = w1[w1 != 0.0]
    assert nonzero.size > 0
    assert np.min(np.abs(nonzero)) > 0.0
    # weights_at honours arbitrary index order and repeats
    idx = np.array([5, 5, 1023, 0, 17], np.int64)
    p1 = FTRLParams(alpha=0.2, beta=1.0, l1=2.0, l2=0.5)
    assert_close(weights_at(z1, n1, idx, p1), w1[idx])
    assert_close(
        weights_at(z1, np.zeros(SPACE), idx, p1),
        np.array([closed_form_weight(z1[i], 0.0, p1) for i in idx]),
    )


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7])
def test_sharded_application_is_bit_identical(shards: int) -> None:
    p = FTRLParams(alpha=0.3, beta=1.0, l1=0.2, l2=0.7)
    rng = np.random.default_rng(shards)
    whole = ParameterStore(SPACE, p)
    sharded = ParameterStore(SPACE, p)
    for _ in range(20):
        size = int(rng.integers(1, 3000))
        indices = rng.integers(0, SPACE, size)  # repeats within a batch on purpose
        grads = rng.normal(0.0, 1.0, size)
        apply_gradients(whole.z, whole.n, indices, grads, p, whole.w)

        parts = split_by_shard(indices, grads, shards)
        assert len(parts) == shards
        assert sum(local.size for local, _ in parts) == size
        for k, (local, g) in enumerate(parts):
            # each shard sees exactly its coordinates, in stream order
            mine = indices % shards == k
            assert np.array_equal(local * shards + k, indices[mine])
            assert np.array_equal(g, grads[mine])
            z, n, w = sharded.shard_view(k, shards)
            apply_gradients(z, n, local, g, p, w)

    assert np.array_equal(sharded.z, whole.z)
    assert np.array_equal(sharded.n, whole.n)
    assert np.array_equal(sharded.w, whole.w)
    # the replica the learners maintain equals the closed form everywhere
    assert np.array_equal(whole.w, weights_at(whole.z, whole.n, np.arange(SPACE), p))
    assert np.count_nonzero(whole.z) > SPACE // 2


def test_logistic_step_equals_the_unfused_path() -> None:
    examples = make_examples(400, seed=11, duplicates=True)
    indptr, indices, values, labels = to_csr(examples)
    rng = np.random.default_rng(3)
    w = rng.normal(0.0, 0.5, SPACE)
    weights = rng.uniform(0.0, 2.0, len(labels))
    aggregate = GradientAggregator(SPACE)
    probs, idx, g = aggregate.logistic_step(w, indptr, indices, values, labels, weights)
    expected_probs = sigmoid(dot_rows(w, indptr, indices, values))
    expected_idx, expected_g = aggregate(
        indices, row_gradients(expected_probs, labels, weights, indptr, values)
    )
    assert_close(probs, expected_probs)
    assert np.array_equal(idx, expected_idx)
    assert_close(g, expected_g)


def test_repeated_coordinate_updates_are_order_sensitive() -> None:
    """Why stream order per shard matters: the sharding test would catch a reordering."""
    p = FTRLParams(alpha=0.3, beta=1.0, l1=0.2, l2=0.7)
    indices = np.array([4, 4, 4], np.int64)
    grads = np.array([0.9, -0.4, 2.0])
    z1, n1 = np.zeros(8), np.zeros(8)
    z2, n2 = np.zeros(8), np.zeros(8)
    apply_gradients(z1, n1, indices, grads, p)
    apply_gradients(z2, n2, indices, grads[::-1].copy(), p)
    assert n1[4] == pytest.approx(n2[4])
    assert abs(z1[4] - z2[4]) > 1e-6


def test_shard_view_is_a_live_strided_view() -> None:
    store = ParameterStore(10, FTRLParams())
    z, n, w = store.shard_view(1, 3)
    assert z.shape == (3,)  # indices 1, 4, 7
    z[2] = 5.0
    n[0] = 2.0
    w[1] = 3.0
    assert store.z[7] == 5.0
    assert store.n[1] == 2.0
    assert store.w[4] == 3.0


# --------------------------------------------------------------------------- aggregator


def dict_aggregate(idx: np.ndarray, grads: np.ndarray) -> tuple[list[int], list[float]]:
    sums: dict[int, float] = {}
    for i, g in zip(idx.tolist(), grads.tolist(), strict=True):
        sums[i] = sums.get(i, 0.0) + g
    return list(sums), list(sums.values())


def test_gradient_aggregator_sums_in_first_seen_order_and_resets() -> None:
    rng = np.random.default_rng(3)
    aggregate = GradientAggregator(SPACE)
    batches = []
    for size in (5000, 300, 1, 0, 2000):
        idx = rng.integers(0, SPACE, size)
        batches.append((idx, rng.normal(size=size)))
    batches.append(batches[0])  # the same input again gives the same output
    for idx, grads in batches:
        out_idx, out_g = aggregate(idx, grads)
        want_idx, want_g = dict_aggregate(idx, grads)
        assert out_idx.tolist() == want_idx
        assert np.array_equal(out_g, np.array(want_g))
        assert out_idx.dtype == np.int64 and out_g.dtype == np.float64


def test_gradient_aggregator_scratch_does_not_leak_between_calls() -> None:
    aggregate = GradientAggregator(16)
    first = aggregate(np.array([3, 7, 3]), np.array([1.0, 2.0, 4.0]))
    assert first[0].tolist() == [3, 7]
    assert first[1].tolist() == [5.0, 2.0]
    # 7 and 3 again, in the other order: no stale slots from the first call
    second = aggregate(np.array([7, 1, 3, 7]), np.array([0.5, 1.0, 0.25, 0.5]))
    assert second[0].tolist() == [7, 1, 3]
    assert second[1].tolist() == [1.0, 1.0, 0.25]
    # int32 input is accepted too
    third = aggregate(np.array([1, 1], np.int32), np.array([1.0, 1.0]))
    assert third[0].tolist() == [1]
    assert third[1].tolist() == [2.0]


@pytest.mark.parametrize("optimizer", ["ftrl", "sgd"])
def test_the_saved_coordinates_are_those_ever_learned(optimizer: str) -> None:
    """A snapshot saves the coordinates with n != 0 (found by a kernel that runs without
    the interpreter, so a worker thread's copy leaves the event loop free), with their z
    (FTRL) or w (SGD) and n, in index order; a restore gives the same store back."""
    from actors.sgd import SGDParams

    params = SGDParams() if optimizer == "sgd" else FTRLParams()
    store = ParameterStore(1 << 12, params)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 1 << 12, 600)
    store.learn(idx, rng.normal(size=600))
    state = store.to_state()
    touched = np.flatnonzero(store.n)
    kept = "w" if optimizer == "sgd" else "z"
    assert list(state) == ["index", kept, "n"]
    np.testing.assert_array_equal(state["index"], touched)
    np.testing.assert_array_equal(state[kept], getattr(store, kept)[touched])
    np.testing.assert_array_equal(state["n"], store.n[touched])
    restored = ParameterStore(1 << 12, params)
    restored.load_state(state)
    np.testing.assert_array_equal(restored.w, store.w)
