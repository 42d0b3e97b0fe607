"""Factorization-machine terms: the pure kernels against plain references, ranking against
training rows, sharding exactness, and the system with factors and history features."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.factors import (
    FactorAggregator,
    FactorParams,
    FactorScorer,
    FactorStore,
    ItemFactorCache,
    _item_sums,
    apply_factor_gradients,
    pairwise_logits,
    partial_sums,
)
from actors.features import (
    BaseFeatures,
    Catalog,
    FeatureSpace,
    UserState,
    expand,
    expand_factors,
    explain,
    score_items,
    with_history,
)
from actors.ftrl import FTRLParams, dot_rows
from actors.learner import ParameterStore
from runtime.config import Config, ConfigError
from runtime.system import SnapshotError, System
from tests.test_features import CROSSES, featurize, item_event, user_event, user_features

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


def naive_pairwise(v: np.ndarray, fidx: np.ndarray, fx: np.ndarray) -> float:
    total = 0.0
    for a in range(fidx.size):
        for b in range(a + 1, fidx.size):
            total += float(v[fidx[a]] @ v[fidx[b]]) * fx[a] * fx[b]
    return total


def random_rows(seed: int, rows: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 7, rows)
    fptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    fidx = rng.integers(0, size, int(fptr[-1])).astype(np.int64)
    fx = rng.normal(size=int(fptr[-1]))
    return fptr, fidx, fx


@SETTINGS
@given(st.integers(0, 10_000))
def test_pairwise_term_equals_the_sum_over_pairs(seed: int) -> None:
    store = FactorStore(FactorParams(k=4, bits=5, init_std=0.5, seed=seed))
    store.v[:] = store.init
    fptr, fidx, fx = random_rows(seed, 6, store.params.size)  # repeated indices included
    got = pairwise_logits(store.v, fptr, fidx, fx)
    want = [
        naive_pairwise(store.v, fidx[fptr[r] : fptr[r + 1]], fx[fptr[r] : fptr[r + 1]])
        for r in range(6)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def logloss_of(w: np.ndarray, v: np.ndarray, row: tuple[np.ndarray, ...], label: float) -> float:
    indptr, indices, values, fptr, fidx, fx = row
    s = float(dot_rows(w, indptr, indices, values)[0] + pairwise_logits(v, fptr, fidx, fx)[0])
    p = 1.0 / (1.0 + math.exp(-s))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_step_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(7)
    params = FactorParams(k=3, bits=4, init_std=0.4)
    store = FactorStore(params)
    store.v[:] = store.init
    w = rng.normal(0, 0.3, 16)
    row = (
        np.array([0, 4], np.int64),
        np.array([1, 5, 5, 9], np.int64),  # a coordinate twice: gradients are summed
        np.array([1.0, 0.5, 2.0, -1.0]),
        np.array([0, 3], np.int64),
        np.array([2, 7, 2], np.int64),
        np.array([1.0, 0.7, 1.5]),
    )
    label = 1.0
    step = FactorAggregator(16, params.size)
    _, idx, g, fidx, fg = step.logistic_step(
        w, store.v, row[:3], row[3:], np.array([label]), np.array([1.0])
    )
    eps = 1e-6
    for i, gi in zip(idx, g, strict=True):
        bumped = w.copy()
        bumped[i] += eps
        numeric = (
            logloss_of(bumped, store.v, row, label) - logloss_of(w, store.v, row, label)
        ) / eps
        assert gi == pytest.approx(numeric, rel=1e-4, abs=1e-6)
    assert sorted(fidx.tolist()) == [2, 7]
    for j, grad in zip(fidx, fg, strict=True):
        for f in range(params.k):
            v2 = store.v.copy()
            v2[j, f] += eps
            numeric = (logloss_of(w, v2, row, label) - logloss_of(w, store.v, row, label)) / eps
            assert grad[f] == pytest.approx(numeric, rel=1e-4, abs=1e-6)


def test_adagrad_step_reduces_the_loss_and_keeps_untouched_rows() -> None:
    params = FactorParams(k=4, bits=6, alpha=0.1, l2=0.01, init_std=0.3)
    store = FactorStore(params)
    before = store.v.copy()
    row = (
        np.array([0, 0], np.int64),
        np.zeros(0, np.int64),
        np.zeros(0),
        np.array([0, 3], np.int64),
        np.array([3, 11, 40], np.int64),
        np.ones(3),
    )
    w = np.zeros(16)
    losses = []
    step = FactorAggregator(16, params.size)
    for _ in range(20):
        losses.append(logloss_of(w, store.v, row, 1.0))
        _, _, _, fidx, fg = step.logistic_step(
            w, store.v, row[:3], row[3:], np.array([1.0]), np.array([1.0])
        )
        apply_factor_gradients(store.v, store.n, store.active, store.init, fidx, fg, params)
        if len(losses) == 1:  # never-learned rows start from their seeded start, then step
            assert np.all(store.v[[3, 11, 40]] != 0)
            assert np.abs(store.v[[3, 11, 40]] - store.init[[3, 11, 40]]).max() <= params.alpha
    assert losses[0] == pytest.approx(math.log(2))  # zero vectors: no pairwise term yet
    assert losses[-1] < losses[0] - 0.05
    untouched = np.setdiff1d(np.arange(params.size), [3, 11, 40])
    np.testing.assert_array_equal(store.v[untouched], before[untouched])
    assert store.touched_rows().tolist() == [3, 11, 40]


@pytest.mark.parametrize("shards", [1, 3, 4])
def test_shard_partial_sums_add_up_to_the_unsharded_sums(shards: int) -> None:
    params = FactorParams(k=5, bits=7, init_std=0.2, seed=3)
    full = FactorStore(params)
    fptr, fidx, fx = random_rows(11, 1, params.size)
    full.v[:] = full.init
    parts = []
    for k in range(shards):
        own = FactorStore(params, k, shards)
        own.v[:] = own.init
        parts.append(partial_sums(own.v, fidx, fx, k, shards))
    a = sum(p[0] for p in parts)
    q = sum(p[1] for p in parts)
    assert 0.5 * (float(a @ a) - q) == pytest.approx(
        float(pairwise_logits(full.v, fptr, fidx, fx)[0]), abs=1e-12
    )
    # each shard starts from exactly its rows of the unsharded start
    for k in range(shards):
        np.testing.assert_array_equal(FactorStore(params, k, shards).init, full.init[k::shards])


@pytest.fixture
def scored_world() -> tuple[FeatureSpace, Catalog, UserState, Any, ParameterStore, FactorStore]:
    from actors.featurizer import Featurizer

    space = FeatureSpace(bits=14, seed=3, crosses=CROSSES)
    catalog, users = Catalog(), UserState(recent_len=3)
    featurizer = Featurizer(space, catalog, users)
    featurize(featurizer, [item_event(k) for k in range(12)], seq=0)
    store = ParameterStore(space.size, FTRLParams(alpha=0.1, beta=1.0, l1=0.3, l2=0.2))
    rng = np.random.default_rng(42)
    store.z[:] = rng.normal(0.0, 2.0, space.size)
    store.n[:] = rng.uniform(0.0, 5.0, space.size)
    store.refresh()
    factors = FactorStore(FactorParams(k=6, bits=12, init_std=0.3, seed=1))
    factors.v[:] = factors.init  # as if every row had been learned
    return space, catalog, users, featurizer, store, factors


def test_score_items_with_factors_equals_the_training_rows(scored_world: Any) -> None:
    space, catalog, users, featurizer, store, factors = scored_world
    scorer = FactorScorer(factors)
    for u in range(5):
        fb = featurize(featurizer, [user_event(u, 3)], seq=1)
        users.add(f"u{u}", 2)
        row, _ = with_history(space, catalog, users, f"u{u}", user_features(fb))
        items = np.arange(len(catalog))
        rows = BaseFeatures(
            np.arange(0, row.ns.size * items.size + 1, row.ns.size, dtype=np.int64),
            np.tile(row.ns, items.size),
            np.tile(row.raw, items.size),
            np.tile(row.x, items.size),
        )
        linear = dot_rows(store.w, *expand(space, rows, items, catalog))
        pairs = pairwise_logits(
            factors.v, *expand_factors(rows, items, catalog, factors.params.mask)
        )
        got = score_items(space, row, catalog, store.w, None, scorer)
        np.testing.assert_allclose(got, linear + pairs, rtol=1e-10, atol=1e-10)
        subset = np.array([7, 1, 4])
        np.testing.assert_allclose(
            score_items(space, row, catalog, store.w, subset, scorer), got[subset], atol=1e-12
        )


def test_item_cache_follows_vector_and_catalog_changes(scored_world: Any) -> None:
    space, catalog, _, featurizer, store, factors = scored_world
    scorer = FactorScorer(factors)
    fb = featurize(featurizer, [user_event(1, 3)], seq=1)
    row = user_features(fb)
    before = score_items(space, row, catalog, store.w, None, scorer)
    factors.v[:] *= 2.0
    factors.changed(None)  # what a learner does after applying gradients (its rows, there)
    after = score_items(space, row, catalog, store.w, None, scorer)
    assert not np.allclose(after, before)
    np.testing.assert_allclose(
        after, score_items(space, row, catalog, store.w, None, FactorScorer(factors)), atol=1e-12
    )
    featurize(featurizer, [{"item": "m2", "item_features": {"genre": ["noir"]}}], seq=2)
    changed = score_items(space, row, catalog, store.w, None, scorer)
    assert changed[2] != after[2]
    np.testing.assert_allclose(
        changed, score_items(space, row, catalog, store.w, None, FactorScorer(factors)), atol=1e-12
    )


def test_item_cache_equals_the_sums_from_the_whole_table_after_every_update() -> None:
    """The cache's copy of the catalog's vectors, refreshed from the updates' rows, gives
    exactly the sums taken from the whole table: after logged updates, an update of
    any row, more updates than the log keeps, an unlogged version bump and a new catalog."""
    rng = np.random.default_rng(11)
    store = FactorStore(FactorParams(k=4, bits=10))
    store.v[:] = rng.normal(size=store.v.shape)
    iraw = rng.integers(0, 2**32, size=(300, 5), dtype=np.uint64).astype(np.uint32)
    ix = np.where(rng.random((300, 5)) < 0.7, rng.normal(size=(300, 5)), 0.0)
    cache, catalog_version = ItemFactorCache(), 0

    def check() -> None:
        a, t = cache.get(store, iraw, ix, catalog_version)
        want_a, want_t = np.empty_like(a), np.empty_like(t)
        _item_sums(store.v, store.params.mask, iraw, ix, want_a, want_t)
        np.testing.assert_array_equal(a, want_a)
        np.testing.assert_array_equal(t, want_t)

    def update(rows: np.ndarray, log: bool = True) -> None:
        store.v[rows] += rng.normal(size=(rows.size, store.params.k))
        if log:
            store.changed(rows)
        else:
            store.version += 1

    for step in range(3 * FactorStore.CHANGE_LOG):
        kind = step % 7
        if kind == 3:  # an update of any row
            store.v[:] *= 1.01
            store.changed(None)
        elif kind == 5:  # a few updates between two reads
            for _ in range(3):
                update(rng.integers(0, store.v.shape[0], 20))
        elif kind == 6 and step % 2:
            update(rng.integers(0, store.v.shape[0], 5), log=False)
        else:
            update(rng.integers(0, store.v.shape[0], int(rng.integers(1, 50))))
        if step == 100:  # more updates than the log keeps
            for _ in range(FactorStore.CHANGE_LOG + 1):
                update(rng.integers(0, store.v.shape[0], 3))
        if step == 150:  # a new catalog
            iraw[:10] = rng.integers(0, 2**32, size=(10, 5), dtype=np.uint64).astype(np.uint32)
            catalog_version += 1
        check()


def test_explanations_cover_the_whole_logit(scored_world: Any) -> None:
    space, catalog, users, featurizer, store, factors = scored_world
    fb = featurize(featurizer, [user_event(2, 5)], seq=1)
    users.add("u2", 4)
    row, recent_names = with_history(space, catalog, users, "u2", user_features(fb))
    names = ["user=u2", "u.age=25-34", "u.score=2.25", "c.device=desktop", *recent_names][
        : row.ns.size
    ]
    terms = explain(space, row, names, catalog, 5, store.w, 10_000, factors)
    logit = score_items(space, row, catalog, store.w, np.array([5]), FactorScorer(factors))[0]
    assert sum(t["contribution"] for t in terms) == pytest.approx(logit, abs=1e-9)
    parts = {t["part"] for t in terms}
    assert parts == {"linear", "factor"}
    assert any("h.item=m4" in str(t["feature"]) for t in terms if t["part"] == "factor")
    top = explain(space, row, names, catalog, 5, store.w, 3, factors)
    assert [abs(t["contribution"]) for t in top] == sorted(
        (abs(t["contribution"]) for t in terms), reverse=True
    )[:3]


def test_history_keeps_the_most_recent_items_in_order() -> None:
    users = UserState(recent_len=3)
    for item in [5, 6, 7, 5, 8]:
        users.add("a", item)
    assert users.recent["a"] == [7, 5, 8]
    assert users.seen("a") == {5, 6, 7, 8}
    assert UserState().recent == {} and not UserState().recent_len


# --------------------------------------------------------------------------- system


def stream(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Users with a favourite genre; items belong to one genre each."""
    rng = np.random.default_rng(seed)
    events = []
    for _ in range(count):
        u = int(rng.integers(60))
        genre = u % 4 if rng.random() < 0.8 else int(rng.integers(4))
        item = genre * 25 + int(rng.integers(25))
        events.append(
            {
                "user": f"u{u}",
                "item": f"i{item}",
                "item_features": {"genre": f"g{genre}"},
                "user_features": {"age": f"a{u % 3}"},
            }
        )
    return events


def factor_config(shards: int = 1, roundtrip: bool = False, tmp: Path | None = None) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 16, "factors": 6, "factor_bits": 12, "history": 4},
            "ftrl": {"factor_alpha": 0.05},
            "training": {"shards": shards, "sync": True, "batch_size": 64},
            "queues": {"codec_roundtrip": roundtrip},
            "state": {
                "restore": False,
                "snapshot_path": str(tmp / "snap.msgpack") if tmp else "",
            },
            "ingest": {"dead_letter_path": ""},
            "http": {"enabled": False},
        }
    )


async def run_stream(cfg: Config, events: list[dict[str, Any]]) -> dict[str, Any]:
    async with System(cfg, clock=lambda: 1e9) as system:  # untimed events: the same times
        await system.ingest(events)
        assert system.factors is not None
        return {
            "v": system.factors.v.copy(),
            "vn": system.factors.n.copy(),
            "z": system.store.z.copy(),
            "recs": [await system.recommend(f"u{u}", k=5) for u in range(0, 60, 7)],
            "metrics": system.metrics.summary(),
            "stats": system.statistics(),
        }


async def test_factor_model_is_exact_across_shards_and_the_wire() -> None:
    events = stream(3000)
    one = await run_stream(factor_config(1), events)
    for shards, roundtrip in ((4, False), (3, True)):
        other = await run_stream(factor_config(shards, roundtrip), events)
        np.testing.assert_allclose(other["v"], one["v"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(other["vn"], one["vn"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(other["z"], one["z"], rtol=0, atol=1e-9)
        assert [[e["item"] for e in r] for r in other["recs"]] == [
            [e["item"] for e in r] for r in one["recs"]
        ]
        rows = [s["factor_rows_learned"] for s in other["stats"]["learners"]]
        assert len(rows) == shards and all(r > 0 for r in rows)
        assert sum(rows) == one["stats"]["learners"][0]["factor_rows_learned"]
    assert one["metrics"]["hr@10"] > one["metrics"]["baseline_popularity_hr@10"]


async def test_factors_learn_what_no_cross_declares() -> None:
    """Generalisation across users: without crosses, a linear model cannot tell what a user
    likes beyond popularity; the factor terms learn user x genre from the data."""
    events = stream(6000, seed=1)
    results = {}
    for k in (0, 6):
        cfg = factor_config()
        cfg.model.factors, cfg.model.crosses, cfg.model.history = k, [], 0
        cfg.sequence.enabled = False  # the item-to-item signals learn tastes too
        async with System(cfg) as system:
            await system.ingest(events)
            results[k] = system.metrics.summary()["hr@10"]
    assert results[6] > results[0] + 0.05


async def test_strangers_get_the_same_ranking_and_learned_users_their_own() -> None:
    cfg = factor_config()
    async with System(cfg) as system:
        await system.ingest(stream(1500))
        assert system.factors is not None
        strangers = [await system.recommend(name, k=10) for name in ("nobody", "new-user")]
        assert strangers[0] == strangers[1]
        known = [[e["item"] for e in await system.recommend(f"u{u}", k=10)] for u in range(4)]
        assert len({tuple(k) for k in known}) == 4
        user_row = system.space.value_hash("user", "nobody") & system.factors.params.mask
        assert not system.factors.active[user_row] and not system.factors.v[user_row].any()


async def test_snapshot_keeps_factors_and_history(tmp_path: Path) -> None:
    cfg = factor_config(tmp=tmp_path)
    events = stream(1500)
    async with System(cfg) as system:
        await system.ingest(events)
        want = [await system.recommend(f"u{u}", k=5, explain=True) for u in range(6)]
        system.write_snapshot()
        assert system.users.recent["u0"]
    async with System(cfg) as restored:
        restored.restore(tmp_path / "snap.msgpack")
        got = [await restored.recommend(f"u{u}", k=5, explain=True) for u in range(6)]
        assert restored.users.recent == system.users.recent
    assert got == want
    other = factor_config(tmp=tmp_path)
    other.model.factors = 4
    with pytest.raises(SnapshotError, match="factors"):
        System(other).restore(tmp_path / "snap.msgpack")


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("model", "factors", -1, "model.factors"),
        ("model", "factors", 1000, "model.factors"),
        ("model", "factor_bits", 0, "model.factor_bits"),
        ("model", "history", 101, "model.history"),
        ("ftrl", "factor_alpha", 0.0, "ftrl.factor_alpha"),
        ("ftrl", "factor_l2", -0.1, "ftrl.factor_l2"),
    ],
)
def test_factor_config_errors_name_the_key(section: str, key: str, value: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Config.from_dict({section: {key: value}})


async def test_factors_on_ctr_columns_are_exact_across_shards(criteo_train: Path) -> None:
    from actors.readers import read_ctr_tsv
    from runtime.replay import replay

    outcomes = []
    for shards in (1, 3):
        cfg = factor_config(shards)
        cfg.model.factors_dense = True
        cfg.ftrl.factor_alpha = 0.01
        async with System(cfg) as system:
            report = await replay(system, read_ctr_tsv(criteo_train, criteo=True, batch_size=256))
            assert system.factors is not None
            outcomes.append((report, system.factors.v.copy(), system.factors.active.copy()))
    (one, v1, active1), (three, v3, active3) = outcomes
    assert one["events"] == three["events"] == 7200
    assert active1.sum() > 1000 and np.array_equal(active1, active3)
    np.testing.assert_allclose(v3, v1, rtol=0, atol=1e-9)
    assert three["logloss"] == pytest.approx(one["logloss"], abs=1e-9)
    assert one["logloss"] < one["baseline_mean_ctr_logloss"]
