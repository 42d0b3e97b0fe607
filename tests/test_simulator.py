from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from actors.simulator import Simulator, SimulatorConfig, genre_click_stream, sigmoid

EVENT_KEYS = {"user", "item", "ts", "label", "user_features", "item_features", "context"}


def _events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "user" in r]


def _check_item_features(feats: Any) -> None:
    assert type(feats) is dict
    assert set(feats) == {"genre", "price"}
    assert type(feats["genre"]) is list
    assert 1 <= len(feats["genre"]) <= 3
    assert len(set(feats["genre"])) == len(feats["genre"])
    assert all(type(g) is str for g in feats["genre"])
    assert type(feats["price"]) is float
    assert feats["price"] > 0


def _check_event(e: dict[str, Any]) -> None:
    assert set(e) == EVENT_KEYS
    assert type(e["user"]) is str and e["user"].startswith("u")
    assert type(e["item"]) is str and e["item"].startswith("i")
    assert type(e["ts"]) is float
    assert type(e["label"]) is int and e["label"] in (0, 1)
    uf = e["user_features"]
    assert type(uf) is dict and set(uf) == {"age", "country"}
    assert all(type(v) is str for v in uf.values())
    _check_item_features(e["item_features"])
    assert type(e["context"]) is dict and set(e["context"]) == {"device"}
    assert e["context"]["device"] in ("mobile", "desktop", "tablet")


def _check_upsert(r: dict[str, Any]) -> None:
    assert set(r) == {"item", "item_features"}
    assert type(r["item"]) is str
    _check_item_features(r["item_features"])


SMALL = {"n_users": 200, "n_items": 100}


def test_determinism_same_seed_and_batch_split() -> None:
    a = Simulator(SimulatorConfig(seed=7, new_item_rate=0.01, **SMALL))
    b = Simulator(SimulatorConfig(seed=7, new_item_rate=0.01, **SMALL))
    ra = a.next_batch(1500)
    rb = b.next_batch(700) + b.next_batch(800)
    assert ra == rb
    assert a.items() == b.items()
    assert a.statistics() == b.statistics()
    np.testing.assert_array_equal(a.true_ctr_matrix(a.user_ids()), b.true_ctr_matrix(b.user_ids()))


def test_different_seed_differs() -> None:
    a = Simulator(SimulatorConfig(seed=1, **SMALL))
    b = Simulator(SimulatorConfig(seed=2, **SMALL))
    assert a.next_batch(300) != b.next_batch(300)
    assert a.items() != b.items()


def test_schema_labels_and_timestamps() -> None:
    cfg = SimulatorConfig(seed=3, new_item_rate=0.01, **SMALL)
    sim = Simulator(cfg)
    records = sim.next_batch(3000)
    events = _events(records)
    assert len(events) == 3000
    for r in records:
        if "user" in r:
            _check_event(r)
        else:
            _check_upsert(r)
    ts = [e["ts"] for e in events]
    assert ts[0] == cfg.start_ts
    assert all(t1 > t0 for t0, t1 in itertools.pairwise(ts))
    assert ts[-1] == pytest.approx(cfg.start_ts + 2999 / cfg.events_per_second)
    labels = {e["label"] for e in events}
    assert labels == {0, 1}  # a real mix of clicks and non-clicks
    # clock keeps going across batches
    assert sim.next_batch(1)[-1]["ts"] > ts[-1]
    for r in sim.items():
        _check_upsert(r)
    st = sim.statistics()
    assert st["events"] == 3001
    assert st["users"] == SMALL["n_users"]
    assert st["items"] == SMALL["n_items"] + st["upserts"]


def test_clicks_only_mode() -> None:
    sim = Simulator(SimulatorConfig(seed=4, impressions_per_event=False, **SMALL))
    events = _events(sim.next_batch(500))
    assert len(events) == 500
    assert all(e["label"] == 1 for e in events)
    for e in events:
        _check_event(e)


def test_new_items_appear_and_upsert_precedes_first_event() -> None:
    cfg = SimulatorConfig(seed=5, new_item_rate=0.01, drift=0.0, **SMALL)
    sim = Simulator(cfg)
    initial = set(sim.item_ids())
    assert {r["item"] for r in sim.items()} == initial
    records = sim.next_batch(8000)
    upserted: set[str] = set()
    new_seen_in_events: set[str] = set()
    for r in records:
        if "user" not in r:
            assert r["item"] not in initial
            assert r["item"] not in upserted  # each new item announced once
            upserted.add(r["item"])
        elif r["item"] not in initial:
            assert r["item"] in upserted, "event on an item before its upsert"
            new_seen_in_events.add(r["item"])
    assert len(upserted) >= 40  # expectation 80
    assert len(new_seen_in_events) >= len(upserted) // 2  # new items do get traffic
    assert sim.statistics()["upserts"] == len(upserted)
    assert set(sim.item_ids()) == initial | upserted
    # the upsert carries the same features the events use
    feats = {r["item"]: r["item_features"] for r in records if "user" not in r}
    for r in records:
        if "user" in r and r["item"] in feats:
            assert r["item_features"] == feats[r["item"]]
    # the catalog snapshot and the ground-truth matrix include the new items
    assert sim.true_ctr_matrix(["u0"]).shape == (1, len(initial) + len(upserted))


def test_true_ctr_formula() -> None:
    cfg = SimulatorConfig(seed=6, **SMALL)
    sim = Simulator(cfg)
    item = sim.items()[17]
    genres = item["item_features"]["genre"]
    taste = sim.user_taste("u3")
    aff = sum(taste[sim.genres.index(g)] for g in genres) / math.sqrt(len(genres))
    expected = sigmoid(cfg.ctr_scale * aff + sim.item_quality(item["item"]) - 2.0)
    assert sim.true_ctr("u3", item["item"]) == pytest.approx(expected)
    assert sim.true_ctr(3, 17) == pytest.approx(expected)
    assert sim.affinity("u3", item["item"]) == pytest.approx(aff)
    assert sim.true_ctr_matrix(["u3"])[0, 17] == pytest.approx(expected)


def test_empirical_click_rate_tracks_true_ctr() -> None:
    # drift=0 so the true CTR at the end equals the one used when each label was drawn
    sim = Simulator(SimulatorConfig(seed=11, drift=0.0, new_item_rate=0.0, **SMALL))
    events = _events(sim.next_batch(20000))
    users = sim.user_ids()
    mat = sim.true_ctr_matrix(users)
    urow = {u: j for j, u in enumerate(users)}
    irow = {i: j for j, i in enumerate(sim.item_ids())}
    aff = np.array([sim.affinity(e["user"], e["item"]) for e in events])
    p = np.array([mat[urow[e["user"]], irow[e["item"]]] for e in events])
    y = np.array([e["label"] for e in events], dtype=np.float64)
    # overall calibration
    assert abs(y.mean() - p.mean()) < 0.02
    # per user-genre affinity bucket (quintiles)
    edges = np.quantile(aff, [0.2, 0.4, 0.6, 0.8])
    bucket = np.searchsorted(edges, aff)
    rates = []
    for b in range(5):
        m = bucket == b
        assert m.sum() > 1000
        assert abs(y[m].mean() - p[m].mean()) < 0.04
        rates.append(y[m].mean())
    # higher affinity -> clearly more clicks
    assert all(r1 > r0 for r0, r1 in itertools.pairwise(rates))
    assert rates[-1] - rates[0] > 0.3


def test_preference_driven_choice_beats_random() -> None:
    sim = Simulator(SimulatorConfig(seed=12, drift=0.0, new_item_rate=0.0, **SMALL))
    events = _events(sim.next_batch(5000))
    ctr = np.mean([e["label"] for e in events])
    assert ctr > sim.true_ctr_matrix(sim.user_ids()).mean() + 0.1


def test_drift_changes_taste() -> None:
    sim = Simulator(SimulatorConfig(seed=8, drift=0.05, **SMALL))
    before = {u: sim.user_taste(u) for u in sim.user_ids()}
    ctr_before = sim.true_ctr_matrix(sim.user_ids())
    events = _events(sim.next_batch(2000))
    acted = {e["user"] for e in events}
    for u in sim.user_ids():
        delta = np.linalg.norm(sim.user_taste(u) - before[u])
        if u in acted:
            assert delta > 0
        else:
            assert delta == 0
    busiest = max(acted, key=lambda u: sum(e["user"] == u for e in events))
    n = sum(e["user"] == busiest for e in events)
    # random walk: displacement ~ drift * sqrt(n * n_genres)
    expected = 0.05 * math.sqrt(n * len(sim.genres))
    assert np.linalg.norm(sim.user_taste(busiest) - before[busiest]) > 0.3 * expected
    assert not np.allclose(sim.true_ctr_matrix(sim.user_ids())[:, :100], ctr_before)

    still = Simulator(SimulatorConfig(seed=8, drift=0.0, **SMALL))
    t0 = still.user_taste("u0").copy()
    still.next_batch(500)
    np.testing.assert_array_equal(still.user_taste("u0"), t0)


def test_best_items_consistent_with_matrix() -> None:
    sim = Simulator(SimulatorConfig(seed=9, new_item_rate=0.05, **SMALL))
    sim.next_batch(300)
    ids = sim.item_ids()
    users = ["u0", "u5", "u42"]
    mat = sim.true_ctr_matrix(users)
    assert mat.shape == (3, len(ids))
    assert np.all((mat > 0) & (mat < 1))
    for r, u in enumerate(users):
        best = sim.best_items(u, 10)
        assert len(best) == 10 == len(set(best))
        vals = [mat[r, ids.index(i)] for i in best]
        assert vals == sorted(vals, reverse=True)
        assert vals[0] == pytest.approx(mat[r].max())
        assert min(vals) >= np.sort(mat[r])[-10] - 1e-12
        for i in best[:3]:
            assert sim.true_ctr(u, i) == pytest.approx(mat[r, ids.index(i)])
    assert sim.best_items("u0", 0) == []
    assert len(sim.best_items("u0", 10**6)) == len(ids)
    assert sim.true_ctr_matrix([]).shape == (0, len(ids))


def test_popular_users_are_more_active() -> None:
    sim = Simulator(SimulatorConfig(seed=10, **SMALL))
    events = _events(sim.next_batch(4000))
    counts = np.bincount([int(e["user"][1:]) for e in events], minlength=200)
    top = np.sort(counts)[::-1]
    assert top[:10].sum() > 0.2 * len(events)  # heavy head (Zipf-ish)


def test_genre_click_stream() -> None:
    ev = genre_click_stream("u1", "drama", ["i1", "i2", "i3"], 7, 1_700_000_000.0)
    assert len(ev) == 7
    for k, e in enumerate(ev):
        assert set(e) == EVENT_KEYS
        assert e["user"] == "u1" and e["label"] == 1 and type(e["label"]) is int
        assert e["item"] == ["i1", "i2", "i3"][k % 3]
        assert e["item_features"]["genre"] == ["drama"]
        assert type(e["item_features"]["price"]) is float
        assert type(e["ts"]) is float
    ts = [e["ts"] for e in ev]
    assert ts[0] == 1_700_000_000.0
    assert all(t1 > t0 for t0, t1 in itertools.pairwise(ts))
    assert genre_click_stream("u1", "war", ["i1"], 0, 0.0) == []
    with pytest.raises(ValueError):
        genre_click_stream("u1", "war", [], 3, 0.0)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(n_items=0)
    with pytest.raises(ValueError):
        SimulatorConfig(new_item_rate=1.5)
    with pytest.raises(ValueError):
        SimulatorConfig(events_per_second=0.0)
    with pytest.raises(ValueError):
        Simulator(SimulatorConfig(**SMALL)).next_batch(-1)
