"""Request-time exclusion (issue 13): ``exclude`` item ids are never recommended in that
answer (seen or not, whole catalog, generated candidates or given candidates), over the
Python API, GET and POST /v1/recommend and the client; unknown ids are ignored."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from runtime.client import AsyncClient
from runtime.http import make_app
from runtime.system import System
from tests.conftest import embedded_with

ITEMS = [{"item": f"i{k}", "item_features": {"genre": [f"g{k % 3}"]}} for k in range(12)]
CLICKS = [{"user": "ann", "item": f"i{k}"} for k in (0, 3, 6)]


@pytest.fixture
async def system() -> AsyncIterator[System]:
    async with embedded_with(ITEMS, CLICKS) as system:
        yield system


async def test_excluded_items_never_come_back(system: System) -> None:
    plain = [it["item"] for it in await system.recommend("ann", k=5)]
    dropped = [*plain[:2], "not-an-item"]
    again = [it["item"] for it in await system.recommend("ann", k=5, exclude=dropped)]
    assert len(again) == 5 and not set(again) & set(dropped)
    assert again[:3] == plain[2:]  # the rest keep their order
    every = [f"i{k}" for k in range(12)]
    assert await system.recommend("ann", k=5, exclude=every) == []
    picked = await system.recommend("ann", k=3, candidates=["i1", "i2", "i4"], exclude=["i2"])
    assert {it["item"] for it in picked} == {"i1", "i4"}
    anonymous = await system.recommend("", k=12, session=["i9"], exclude=["i1"])
    assert not {"i1", "i9"} & {it["item"] for it in anonymous}


async def test_exclude_over_http_and_the_client(system: System) -> None:
    server = TestServer(make_app(system), host="127.0.0.1", port=0)
    async with TestClient(server) as http:
        resp = await http.get("/v1/recommend", params={"user": "ann", "k": "9", "exclude": "i1,i2"})
        assert resp.status == 200, await resp.text()
        assert not {"i1", "i2"} & {it["item"] for it in (await resp.json())["items"]}
        resp = await http.post("/v1/recommend", json={"user": "ann", "k": 9, "exclude": ["i4"]})
        assert resp.status == 200, await resp.text()
        assert "i4" not in {it["item"] for it in (await resp.json())["items"]}
        resp = await http.get("/v1/recommend", params={"user": "ann", "exclude": ",,"})
        assert resp.status == 400 and "'exclude' names no item" in await resp.text()
        many = ",".join(f"x{k}" for k in range(1001))
        resp = await http.get("/v1/recommend", params={"user": "ann", "exclude": many})
        assert resp.status == 413 and "exclude" in await resp.text()
        resp = await http.post("/v1/recommend", json={"user": "ann", "exclude": "i4"})
        assert resp.status == 400 and "'exclude' must be a list" in await resp.text()
        async with AsyncClient(str(http.make_url("")).rstrip("/")) as client:
            items = await client.recommend("ann", k=9, exclude=["i5", "i7"])
        assert len(items) == 7 and not {"i5", "i7"} & {it["item"] for it in items}
