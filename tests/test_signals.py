"""The signals as model features (actors/signals.py, actors/trending.py): trends against a
plain reference, the mixture's EM, training rows equal to serving values, and the
freshness a user sees: one click raises its neighbours in the very next ranking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.features import BaseFeatures, Catalog, FeatureSpace, expand
from actors.itemstats import ItemStatsParams
from actors.signals import SequenceSignals, SignalMixture
from actors.trending import TrendingCounts
from runtime.codec import decode, encode
from runtime.config import Config
from runtime.system import System

DAY = 86400.0


def test_trends_equal_the_decayed_counts_divided_by_their_maximum() -> None:
    rng = np.random.default_rng(3)
    items = rng.integers(0, 30, 400)
    ts = np.sort(rng.uniform(0, 900 * DAY, 400))  # 900 half-lives: the counts are rescaled
    trends = TrendingCounts([DAY, 30 * DAY])
    for lo in range(0, 400, 37):
        trends.learn(items[lo : lo + 37], ts[lo : lo + 37])
    now = ts[-1]
    for row, half_life in enumerate((DAY, 30 * DAY)):
        plain = np.zeros(30)
        np.add.at(plain, items, np.exp2(-(now - ts) / half_life))
        np.testing.assert_allclose(trends.scores(30)[row], plain / plain.max(), atol=1e-9)
    assert trends.names == ("trend_1d", "trend_30d")


def test_trends_survive_a_msgpack_round_trip() -> None:
    trends = TrendingCounts([DAY])
    trends.learn(np.array([0, 1, 1]), np.array([0.0, DAY, 2 * DAY]))
    again = TrendingCounts([DAY])
    again.load_state(decode(encode(trends.to_state())))  # type: ignore[arg-type]
    np.testing.assert_array_equal(again.scores(2), trends.scores(2))
    with pytest.raises(ValueError, match="half-lives"):
        TrendingCounts([2 * DAY]).load_state(trends.to_state())


def test_the_mixture_learns_to_trust_the_signal_that_predicts() -> None:
    mixture = SignalMixture(2, memory=1e9)
    for _ in range(200):  # signal 0 puts all its mass on the item picked; signal 1 none
        mixture.learn(np.array([50.0, 0.5]), bucket=3, evidence=np.array([True, True]))
    weights = mixture.totals[3] / mixture.totals[3].sum()
    assert weights[1] > 0.9 > 0.05 > weights[2]  # index 0 is the uniform part
    shares = np.array([[50.0, 0.0], [0.5, 0.5]])  # (signals, items)
    favoured, other = mixture.log_probability(shares, 3, np.array([True, True]))
    assert favoured > np.log(40) and other < 0


def signals_after(events: list[tuple[list[int], int]]) -> SequenceSignals:
    signals = SequenceSignals(FeatureSpace(16), Catalog(), ItemStatsParams(window=5), [DAY])
    for recent, item in events:
        signals.learn_event(np.array(recent, np.int64), item, 0.0)
    return signals


def test_training_rows_carry_exactly_the_values_ranking_reads() -> None:
    rng = np.random.default_rng(1)
    history = [(rng.integers(0, 20, 4).tolist(), int(rng.integers(0, 20))) for _ in range(300)]
    signals = signals_after(history)
    recents = [np.array([3, 5], np.int64), np.array([], np.int64)]
    origin = np.array([0, 0, 0, 1, 1])
    items = np.array([4, 9, 11, 2, 7])
    values = np.stack(
        [signals.values(recents[o], items[r : r + 1])[:, 0] for r, o in enumerate(origin)]
    )
    empty = np.zeros(0, np.uint32)
    no_user = BaseFeatures(np.zeros(6, np.int64), empty, empty, np.zeros(0))
    space = FeatureSpace(16)
    ptr, idx, val = expand(space, no_user, np.full(5, -1), Catalog(), (signals.index, values))
    dense = np.zeros((5, len(signals.names)))
    for r in range(5):
        assert idx[ptr[r]] == space.bias_index  # then the signals' nonzero values
        for k in range(ptr[r] + 1, ptr[r + 1]):
            dense[r, list(signals.index).index(idx[k])] = val[k]
    for r in range(5):
        served = signals.catalog_values(recents[origin[r]], 20)[:, items[r]]
        np.testing.assert_allclose(dense[r], served, atol=1e-12)


def test_signals_state_round_trip_keeps_every_value() -> None:
    signals = signals_after([([1, 2], 3), ([2, 3], 4), ([3], 1)] * 20)
    again = signals_after([])
    again.load_state(decode(encode(signals.to_state())))  # type: ignore[arg-type]
    recent = np.array([2, 3], np.int64)
    np.testing.assert_array_equal(
        again.catalog_values(recent, 5), signals.catalog_values(recent, 5)
    )


def quiet(tmp_path: Path, **sections: Any) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 16},
            "state": {"restore": False, "snapshot_path": ""},
            "ingest": {"dead_letter_path": ""},
            "http": {"enabled": False},
            **sections,
        }
    )


async def test_one_click_raises_its_neighbours_in_the_very_next_recommendation(
    tmp_path: Path,
) -> None:
    """Users who watch X go on to watch Y: right after a new user's click on X (no
    waiting: the ingest returns once it is learned), Y is in that user's top 3."""
    items = [{"item": f"i{k}"} for k in range(40)]
    pairs = [("x", "y"), ("a", "b"), ("c", "d")]
    events = [{"item": it} for pair in pairs for it in pair]
    for u in range(60):
        for first, then in pairs:
            events += [{"user": f"u{u}", "item": first}, {"user": f"u{u}", "item": then}]
    events += [{"user": f"fan{u}", "item": it} for u in range(10) for it in ("b", "d")]
    async with System(quiet(tmp_path)) as system:
        await system.ingest(items + events)
        before = [r["item"] for r in await system.recommend("newcomer", k=40)]
        await system.ingest([{"user": "newcomer", "item": "x"}])
        after = [r["item"] for r in await system.recommend("newcomer", k=3)]
        assert after[0] == "y" and before.index("y") > 0  # raised to the top by one click
        await system.ingest([{"user": "other", "item": "a"}])
        assert [r["item"] for r in await system.recommend("other", k=1)] == ["b"]
        metrics = system.metrics.summary()
    assert metrics["rank_evaluated"] > 0
    assert {"signal_markov_hr@10", "signal_trend_1d_hr@10", "signal_mixture_hr@10"} <= set(metrics)


async def test_similar_items_over_http(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from runtime.http import make_app

    events = [{"user": f"u{u}", "item": it} for u in range(20) for it in ("x", "y")]
    events += [{"user": f"v{u}", "item": it} for u in range(5) for it in ("x", "z")]
    async with System(quiet(tmp_path, http={"enabled": True})) as system:
        await system.ingest(events)
        async with TestClient(TestServer(make_app(system))) as client:
            resp = await client.get("/v1/items/x/similar", params={"k": "5"})
            body = await resp.json()
            assert resp.status == 200 and [s["item"] for s in body["similar"]] == ["y", "z"]
            assert body["similar"][0]["score"] > body["similar"][1]["score"] > 0
            missing = await client.get("/v1/items/nope/similar")
            assert missing.status == 404 and "unknown item" in (await missing.json())["error"]
            assert (await client.get("/v1/items/x/similar", params={"k": "0"})).status == 400


def test_content_scores_equal_a_plain_profile_and_leave_ids_out() -> None:
    from actors.content import ContentProfile

    space = FeatureSpace(16)
    catalog = Catalog()
    genres = {"w1": ["war"], "w2": ["war"], "c1": ["comedy"], "m1": ["war", "comedy"]}
    for row, (item, names) in enumerate(genres.items()):
        entries = [("item", item), *(("i.genre", g) for g in names)]
        ns = np.array([space.ns_hash(n) for n, _ in entries], np.uint32)
        raw = np.array([space.value_hash(n, v) for n, v in entries], np.uint32)
        catalog.upsert(item, row, ns, raw, np.ones(len(entries)), [f"{n}={v}" for n, v in entries])
    content = ContentProfile(catalog, half_life=1.0, id_namespace=space.ns_hash("item"))
    recent = np.array([2, 0], np.int64)  # c1, then w1 (the newest, weight 1; c1 weight 1/2)
    scores = content.scores_at(recent, np.arange(4))
    np.testing.assert_allclose(scores, [1 / 1.5, 1 / 1.5, 0.5 / 1.5, 1.0])  # ids never match
    raw, weight, total = content.raw_scores_and_totals(recent, np.arange(4))
    assert weight == 1.5 and total == 1.0 * 3 + 0.5 * 2  # war on 3 items, comedy on 2
    np.testing.assert_allclose(raw, scores * weight)
