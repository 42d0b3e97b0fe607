"""Model rows: training (``expand``) and ranking (``score_items``) must build the same rows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from actors.batching import batch_from_events
from actors.events import validate_event
from actors.features import (
    BaseFeatures,
    Catalog,
    FeatureSpace,
    UserState,
    expand,
    expand_dense,
    score_items,
)
from actors.featurizer import Featurizer, take_rows
from actors.ftrl import FTRLParams
from actors.learner import ParameterStore
from actors.murmur import cross_hash, encode_strings
from actors.ranker import Ranker
from runtime.messages import EventBatch, FeatureBatch

TOL = 1e-9
CROSSES = [("user", "i.genre"), ("u.age", "item"), ("u.score", "i.price"), ("c.device", "i.genre")]
GENRES = ["drama", "war", "comedy", "noir", "sci-fi"]
AGES = ["<18", "18-24", "25-34", "35-44"]


def item_event(k: int) -> dict[str, Any]:
    genres = [GENRES[(k + j) % len(GENRES)] for j in range(1 + k % 3)]
    event: dict[str, Any] = {"item": f"m{k}", "item_features": {"genre": genres}}
    if k % 4 != 3:  # some items have no numeric feature
        event["item_features"]["price"] = 1.5 + k
    return event


def user_event(u: int, item: int) -> dict[str, Any]:
    event: dict[str, Any] = {
        "user": f"u{u}",
        "item": f"m{item}",
        "user_features": {"age": AGES[u % len(AGES)], "score": 0.25 + u},
    }
    if u % 2 == 0:
        event["context"] = {"device": "mobile" if u % 4 == 0 else "desktop"}
    return event


def featurize(featurizer: Featurizer, events: list[dict[str, Any]], seq: int) -> FeatureBatch:
    batch = batch_from_events([validate_event(e) for e in events], seq=seq)
    return featurizer.featurize(batch)


def user_features(fb: FeatureBatch) -> BaseFeatures:
    return BaseFeatures(fb.user_ptr, fb.user_ns, fb.user_raw, fb.user_x)


@pytest.fixture
def world() -> tuple[FeatureSpace, Catalog, UserState, Featurizer, ParameterStore]:
    space = FeatureSpace(bits=14, seed=3, crosses=CROSSES)
    catalog = Catalog()
    users = UserState()
    featurizer = Featurizer(space, catalog, users)
    featurize(featurizer, [item_event(k) for k in range(12)], seq=0)
    params = FTRLParams(alpha=0.1, beta=1.0, l1=0.3, l2=0.2)
    store = ParameterStore(space.size, params)
    rng = np.random.default_rng(42)
    store.z[:] = rng.normal(0.0, 2.0, space.size)
    store.n[:] = rng.uniform(0.0, 5.0, space.size)
    store.refresh()
    return space, catalog, users, featurizer, store


def test_catalog_is_built_by_the_featurizer(world: Any) -> None:
    space, catalog, _, _, _ = world
    assert len(catalog) == 12
    assert catalog.ids == [f"m{k}" for k in range(12)]
    ns, raw, x = catalog.view()
    row = catalog.rows["m4"]  # genres sci-fi, drama; price 5.5
    live = x[row] != 0
    assert live.sum() == 4
    assert ns[row][0] == space.ns_hash("item")
    assert raw[row][0] == space.value_hash("item", "m4")
    assert catalog.names[row][0] == "item=m4"
    assert sorted(catalog.names[row][1:]) == ["i.genre=drama", "i.genre=sci-fi", "i.price=5.5"]


def expected_row(
    space: FeatureSpace, event: dict[str, Any], item: dict[str, Any]
) -> tuple[list[tuple[int, float]], int]:
    """The model row of an (interaction, item) pair written out feature by feature."""
    user_side: list[tuple[str, int, float]] = [
        ("user", space.value_hash("user", event["user"]), 1.0)
    ]
    for name, value in event.get("user_features", {}).items():
        ns = "u." + name
        if isinstance(value, str):
            user_side.append((ns, space.value_hash(ns, value), 1.0))
        else:
            user_side.append((ns, space.value_hash(ns, ""), float(value)))
    for name, value in event.get("context", {}).items():
        user_side.append(("c." + name, space.value_hash("c." + name, value), 1.0))
    item_side: list[tuple[str, int, float]] = [
        ("item", space.value_hash("item", item["item"]), 1.0)
    ]
    for name, value in item["item_features"].items():
        ns = "i." + name
        if isinstance(value, list):
            item_side += [(ns, space.value_hash(ns, v), 1.0) for v in value]
        else:
            item_side.append((ns, space.value_hash(ns, ""), float(value)))
    entries = [(space.bias_index, 1.0)]
    entries += [(h & space.mask, x) for _, h, x in user_side + item_side]
    base = len(entries)
    for a, b in CROSSES:
        for ans, ah, ax in user_side:
            for bns, bh, bx in item_side:
                if ans == a and bns == b:
                    crossed = int(cross_hash(np.uint32(ah), np.uint32(bh)))
                    entries.append((crossed & space.mask, ax * bx))
    return sorted(entries), len(entries) - base


def test_expand_builds_the_declared_rows(world: Any) -> None:
    space, catalog, _, featurizer, _ = world
    events = [user_event(u, (3 * u) % 12) for u in range(8)]
    fb = featurize(featurizer, events, seq=1)
    indptr, indices, values = expand(space, user_features(fb), fb.item_rows, catalog)
    assert indptr.shape == (9,)
    crosses_seen = 0
    for r, event in enumerate(events):
        lo, hi = indptr[r], indptr[r + 1]
        got = sorted(zip(indices[lo:hi].tolist(), values[lo:hi].tolist(), strict=True))
        want, crosses = expected_row(space, event, item_event((3 * r) % 12))
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [x for _, x in got] == pytest.approx([x for _, x in want], rel=1e-12)
        assert indices[lo] == space.bias_index and values[lo] == 1.0  # bias first
        assert crosses >= 2
        crosses_seen += crosses
    assert crosses_seen > 3 * len(events)


def test_expand_and_score_items_agree(world: Any) -> None:
    space, catalog, users, featurizer, store = world
    # interactions, one introducing a new item with features, one for an item with none
    events = [user_event(u, (5 * u) % 12) for u in range(10)]
    events.append({**user_event(3, 0), "item": "fresh", "item_features": {"genre": "noir"}})
    events.append({"user": "bare", "item": "m7"})
    fb = featurize(featurizer, events, seq=1)
    assert len(catalog) == 13
    user = user_features(fb)
    n_items = len(catalog)
    # each event paired with its own item
    indptr, indices, values = expand(space, user, fb.item_rows, catalog)
    logits = store.logits(indptr, indices, values)
    for r in range(len(fb)):
        one = score_items(space, user.row(r), catalog, store.w, fb.item_rows[r : r + 1])
        assert one.shape == (1,)
        assert one[0] == pytest.approx(logits[r], rel=TOL, abs=TOL)
    # each event against the whole catalog
    everything = np.arange(n_items)
    all_logits = []
    for r in range(len(fb)):
        rows = np.full(n_items, r)
        ip, ix, vx = expand(space, take_rows(user, rows), everything, catalog)
        expected = store.logits(ip, ix, vx)
        scores = score_items(space, user.row(r), catalog, store.w)
        np.testing.assert_allclose(scores, expected, rtol=TOL, atol=TOL)
        subset = np.array([12, 0, 5, 5])
        np.testing.assert_allclose(
            score_items(space, user.row(r), catalog, store.w, subset),
            expected[subset],
            rtol=TOL,
            atol=TOL,
        )
        all_logits.append(expected)
    spread = np.ptp(np.array(all_logits), axis=1)
    assert (spread > 1e-3).all()  # items really score differently
    # the ranker's view of a user (id + stored profile) scores like training did
    # (odd users sent no context, so their training rows are id + profile only)
    ranker = Ranker(space, store.w, catalog, users, exclude_seen=False)
    for r in (1, 3, 5, 7, 9):
        features, names = ranker.user_features(f"u{r}")
        assert names[0] == f"user=u{r}" and len(names) == 3
        np.testing.assert_allclose(
            score_items(space, features, catalog, store.w), all_logits[r], rtol=TOL, atol=TOL
        )
        top = ranker.recommend(f"u{r}", k=3)
        best = np.argsort(-all_logits[r], kind="stable")[:3]
        assert [e["item"] for e in top] == [catalog.ids[i] for i in best]


def test_expand_rows_without_item_are_bias_and_user_side(world: Any) -> None:
    space, catalog, _, featurizer, store = world
    fb = featurize(featurizer, [user_event(u, u) for u in range(4)], seq=1)
    user = user_features(fb)
    item_rows = np.array([-1, 2, -1, 0])
    indptr, indices, values = expand(space, user, item_rows, catalog)
    for r in (0, 2):
        lo, hi = indptr[r], indptr[r + 1]
        ulo, uhi = user.ptr[r], user.ptr[r + 1]
        assert indices[lo:hi].tolist() == [space.bias_index, *space.index(user.raw[ulo:uhi])]
        assert values[lo:hi].tolist() == [1.0, *user.x[ulo:uhi]]
    logits = store.logits(indptr, indices, values)
    for r in (1, 3):
        score = score_items(space, user.row(r), catalog, store.w, item_rows[r : r + 1])
        assert score[0] == pytest.approx(logits[r], rel=TOL, abs=TOL)


def test_profiles_hold_each_users_latest_features(world: Any) -> None:
    _, _, users, featurizer, _ = world
    first = [user_event(u, u) for u in range(3)]
    featurize(featurizer, first, seq=1)
    kept = users.profiles["u1"]
    assert users.profile_names["u1"] == ["u.age=18-24", "u.score=1.25"]
    featurize(featurizer, [user_event(1, 5), user_event(2, 6)], seq=2)  # the same features
    assert users.profiles["u1"] is kept
    changed = {**user_event(1, 7), "user_features": {"age": "35-44"}}
    featurize(featurizer, [changed, user_event(2, 3), {**changed, "item": "m8"}], seq=3)
    assert users.profile_names["u1"] == ["u.age=35-44"]
    assert users.profiles["u1"].raw.tolist() == [featurizer.space.value_hash("u.age", "35-44")]
    assert users.profile_names["u2"] == ["u.age=25-34", "u.score=2.25"]


def test_expand_appends_the_nonzero_tail_after_each_rows_own_entries(world: Any) -> None:
    space, catalog, _, featurizer, _ = world
    fb = featurize(featurizer, [user_event(u, u) for u in range(3)], seq=1)
    user = user_features(fb)
    item_rows = np.array([1, -1, 4])
    own = expand(space, user, item_rows, catalog)
    tail_index = np.array([7, 8, 9])
    tail_values = np.array([[0.7, 0.0, 0.9], [0.0, 0.0, 0.0], [0.1, 0.2, 0.3]])
    indptr, indices, values = expand(space, user, item_rows, catalog, (tail_index, tail_values))
    tails = [([7, 9], [0.7, 0.9]), ([], []), ([7, 8, 9], [0.1, 0.2, 0.3])]
    for r, (tail_at, tail_x) in enumerate(tails):
        lo, hi = own[0][r], own[0][r + 1]
        got = slice(indptr[r], indptr[r + 1])
        assert indices[got].tolist() == [*own[1][lo:hi], *tail_at]
        assert values[got].tolist() == [*own[2][lo:hi], *tail_x]


def dense_batch(columns: list[list[str]], names: list[str], users: list[str]) -> EventBatch:
    n = len(columns[0])
    col_data, col_off = [], []
    for values in columns:
        data, off = encode_strings(values)
        col_data.append(data)
        col_off.append(off)
    return EventBatch(
        seq=4,
        feat_ptr=np.zeros(n + 1, np.int64),
        users=users,
        items=[],
        kind=np.zeros(n, np.uint8),
        ts=np.full(n, math.nan),
        label=np.array([k % 2 for k in range(n)], np.int8),
        weight=np.ones(n),
        rank_eval=np.zeros(n, bool),
        col_names=names,
        col_data=col_data,
        col_off=col_off,
    )


@pytest.mark.parametrize("with_catalog", [False, True])
def test_expand_dense_equals_expand(world: Any, with_catalog: bool) -> None:
    space, populated, _, _, _ = world
    catalog = populated if with_catalog else Catalog()
    rng = np.random.default_rng(9)
    names = ["C1", "C2", "C3", "I1"]
    n = 50
    columns = [[f"v{rng.integers(0, 30)}" for _ in range(n)] for _ in names]
    columns[1][3] = ""  # an empty value hashes like any other
    featurizer = Featurizer(space, catalog, UserState())
    # no users: the fast dense path
    fast = featurizer.featurize(dense_batch(columns, names, []))
    assert fast.dense.shape == (n, len(names))
    assert fast.user_ptr.tolist() == [0] * (n + 1)
    # anonymous users: the general path, dense columns become user-side entries
    general = featurizer.featurize(dense_batch(columns, names, [""] * n))
    assert general.dense.size == 0
    assert np.diff(general.user_ptr).tolist() == [len(names)] * n
    for k, name in enumerate(names):
        assert fast.dense[7, k] == space.value_hash(name, columns[k][7])

    got = expand_dense(space, fast.dense)
    want = expand(space, user_features(general), np.full(n, -1), catalog)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b)
    # and a hand-built BaseFeatures of the same columns
    col_ns = np.array([space.ns_hash(c) for c in names], np.uint32)
    hand = BaseFeatures(
        np.arange(0, n * len(names) + 1, len(names), dtype=np.int64),
        np.tile(col_ns, n),
        fast.dense.reshape(-1),
        np.ones(n * len(names)),
    )
    for a, b in zip(got, expand(space, hand, np.full(n, -1), catalog), strict=True):
        assert np.array_equal(a, b)


def test_take_rows() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 5, 30)
    lengths[[0, 7, 29]] = 0  # empty rows, including first and last
    ptr = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    total = int(ptr[-1])
    base = BaseFeatures(
        ptr,
        rng.integers(0, 2**32, total, dtype=np.uint32),
        rng.integers(0, 2**32, total, dtype=np.uint32),
        rng.normal(size=total),
    )
    for rows in (
        np.array([3, 3, 0, 29, 7, 12, 3], np.int64),
        np.arange(30)[::-1].copy(),
        np.zeros(0, np.int64),
        rng.integers(0, 30, 100),
    ):
        out = take_rows(base, rows)
        assert out.rows == rows.size
        assert out.ptr[0] == 0 and out.ptr.dtype == np.int64
        for k, r in enumerate(rows):
            got, want = out.row(k), base.row(int(r))
            assert np.array_equal(got.ns, want.ns)
            assert np.array_equal(got.raw, want.raw)
            assert np.array_equal(got.x, want.x)
        assert out.ns.size == int(lengths[rows].sum())


def test_catalog_upsert_replaces_features() -> None:
    catalog = Catalog()
    u32 = np.uint32
    row = catalog.upsert(
        "a", 0, np.array([1, 2, 3], u32), np.array([10, 20, 30], u32), np.ones(3), ["a", "b", "c"]
    )
    other = catalog.upsert("b", 0, np.array([1], u32), np.array([11], u32), np.ones(1), ["b"])
    assert (row, other) == (0, 1)
    again = catalog.upsert(
        "a", 5, np.array([1, 4], u32), np.array([10, 40], u32), np.array([1.0, 2.0]), ["a", "d"]
    )
    assert again == 0 and len(catalog) == 2
    ns, raw, x = catalog.view()
    assert ns[0, :3].tolist() == [1, 4, 0]
    assert raw[0, :3].tolist() == [10, 40, 0]
    assert x[0, :3].tolist() == [1.0, 2.0, 0.0]  # the dropped feature no longer counts
    assert catalog.names[0] == ["a", "d"]
    assert catalog.first_seq[0] == 0  # replacing does not move an item in the stream
    assert raw[1, :2].tolist() == [11, 0]
    # wider than the initial width: the matrices grow and keep every other row
    wide = catalog.upsert(
        "c", 6, np.arange(12, dtype=u32), np.arange(100, 112, dtype=u32), np.ones(12), ["c"]
    )
    assert wide == 2 and catalog.width >= 12
    ns, raw, x = catalog.view()
    assert raw[2].tolist()[:12] == list(range(100, 112))
    assert raw[0, :3].tolist() == [10, 40, 0]
    assert raw[1, :2].tolist() == [11, 0]
    # many rows: capacity grows past its first allocation
    for k in range(200):
        catalog.upsert(f"x{k}", 7 + k // 50, np.array([1], u32), np.array([k], u32), np.ones(1), [])
    assert len(catalog) == 203
    ns, raw, x = catalog.view()
    assert raw[3:, 0].tolist() == list(range(200))
    assert raw[2].tolist()[:12] == list(range(100, 112))


def test_catalog_known_at() -> None:
    catalog = Catalog()
    u32 = np.uint32
    for item, seq in [("a", 0), ("b", 0), ("c", 1), ("d", 3), ("e", 3), ("f", 5)]:
        catalog.upsert(item, seq, np.array([1], u32), np.array([2], u32), np.ones(1), [])
    catalog.upsert("a", 9, np.array([1], u32), np.array([3], u32), np.ones(1), [])  # re-upsert
    expected = {-1: 0, 0: 2, 1: 3, 2: 3, 3: 5, 4: 5, 5: 6, 100: 6}
    assert {seq: catalog.known_at(seq) for seq in expected} == expected
    assert Catalog().known_at(0) == 0


def test_featurizer_upsert_replaces_item_features_used_by_expand(world: Any) -> None:
    space, catalog, _, featurizer, store = world
    fb = featurize(featurizer, [user_event(1, 2)], seq=1)
    before = expand(space, user_features(fb), fb.item_rows, catalog)
    featurize(featurizer, [{"item": "m2", "item_features": {"genre": ["western"]}}], seq=2)
    assert len(catalog) == 12
    row = catalog.rows["m2"]
    assert sorted(catalog.names[row]) == ["i.genre=western", "item=m2"]
    after = expand(space, user_features(fb), fb.item_rows, catalog)
    event = user_event(1, 2)
    want, _ = expected_row(space, event, {"item": "m2", "item_features": {"genre": ["western"]}})
    got = sorted(zip(after[1].tolist(), after[2].tolist(), strict=True))
    assert [i for i, _ in got] == [i for i, _ in want]
    assert not np.array_equal(before[1], after[1])
    user = user_features(fb)
    logit = store.logits(*after)[0]
    assert score_items(space, user.row(0), catalog, store.w, np.array([row]))[0] == pytest.approx(
        logit, rel=TOL, abs=TOL
    )
