"""The item inspector: ``GET /v1/items/{item}`` (and ``System.inspect``) reports an
item's features with their learned weights, its kNN neighbours, its Markov successors
and its exposure, as the model has them now."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.itemstats import ItemStats, ItemStatsParams
from actors.ranker import UnknownItem
from runtime.http import make_app
from runtime.system import System
from tests.test_session import quiet, sequences


def test_successors_are_the_markov_list_with_its_transition_shares() -> None:
    stats = ItemStats(ItemStatsParams(window=3, half_life=3.0, markov_order=2, markov_decay=0.5))
    for recent, item in (([], 0), ([0], 1), ([0, 1], 2), ([], 0), ([0], 1), ([], 0), ([0], 3)):
        stats.learn(np.array(recent, np.int64), item)
    rows, shares = stats.successors(0, 10)
    # from 0: next 1 twice and 3 once (distance 1, weight 1); 2 once at distance 2 (0.5)
    expected = {1: 2.0 / 3.5, 3: 1.0 / 3.5, 2: 0.5 / 3.5}
    for row, share in zip(rows.tolist(), shares.tolist(), strict=True):
        assert share == pytest.approx(expected[row])
    assert rows.tolist() == [1, 3, 2]  # shares decide the order
    assert stats.successors(2, 10)[0].size == 0  # nothing ever followed 2
    assert stats.successors(99, 10)[0].size == 0


async def test_inspect_reports_neighbours_successors_weights_and_exposure(tmp_path: Path) -> None:
    async with System(quiet(tmp_path)) as system:
        catalog = [{"item": f"x{i}", "item_features": {"genre": f"g{i % 4}"}} for i in range(40)]
        await system.ingest(catalog + sequences())
        report = await system.inspect("x10", k=5)
        assert report["item"] == "x10"
        assert report["successors"][0]["item"] == "x11"  # the ring goes x10 → x11
        assert {n["item"] for n in report["neighbours"][:2]} == {"x9", "x11"}
        assert len(report["neighbours"]) == len(report["successors"]) == 5
        assert report["neighbours"] == await system.similar("x10", 5)
        features = {f["feature"]: f for f in report["features"]}
        assert set(features) == {"item=x10", "i.genre=g2"}
        explained = (await system.recommend("u0", 1, candidates=["x10"], explain=True))[0]
        linear = [t for t in explained["explanation"] if t["feature"] in features]
        assert linear  # the explanation of the same item names the same weights
        for term in linear:
            f = features[term["feature"]]
            assert term["contribution"] == pytest.approx(f["weight"] * f["value"])
        exposure = report["exposure"]
        assert exposure["interactions"] == sum(e["item"] == "x10" for e in sequences())
        assert 0.0 < exposure["trend_1d"] <= 1.0
        shown_before = exposure["shown"]
        ranked = [r["item"] for r in await system.recommend("u0", k=10)]
        after = (await system.inspect(ranked[0]))["exposure"]["shown"]
        assert after >= 1 and (ranked[0] != "x10" or after == shown_before + 1)
        with pytest.raises(UnknownItem):
            await system.inspect("nope")


async def test_the_http_item_endpoint_answers_200_and_404(tmp_path: Path) -> None:
    async with System(quiet(tmp_path)) as system:
        await system.ingest(sequences())
        async with TestClient(TestServer(make_app(system), host="127.0.0.1", port=0)) as client:
            ok = await client.get("/v1/items/x3", params={"k": "3"})
            assert ok.status == 200
            body = await ok.json()
            assert body["k"] == 3 and body["successors"][0]["item"] == "x4"
            assert body == {"k": 3, **await system.inspect("x3", 3)}
            missing = await client.get("/v1/items/nope")
            assert missing.status == 404
            assert "unknown item" in (await missing.json())["error"]
            bad = await client.get("/v1/items/x3", params={"k": "0"})
            assert bad.status == 400
