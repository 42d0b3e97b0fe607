"""Seen items may return after a time (issue 13): the filter key ``seen_returns_after_s``
lets an item the user met back into their answers once that long has passed since they
last met it, judged by the events' times against the ranker's clock; over the Python API,
GET and POST /v1/recommend and the client, and across a restart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.features import UserState
from actors.filters import ItemFilter
from runtime.client import AsyncClient
from runtime.config import Config
from runtime.http import make_app
from runtime.system import System

T0 = 1_700_000_000.0
CANDIDATES = ["old", "recent", "never"]


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(tmp_path: Path, restore: bool = False) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 16},
            "state": {"restore": restore, "dir": str(tmp_path / "state")},
            "ingest": {"dead_letter_path": ""},
            "http": {"enabled": False},
        }
    )


def events() -> list[dict[str, Any]]:
    """ann met ``old`` an hour before T0 and ``recent`` a minute before; others met all."""
    crowd = [
        {"user": f"u{u}", "item": item, "ts": T0 - 7200 + u}
        for u in range(10)
        for item in CANDIDATES
    ]
    mine = [
        {"user": "ann", "item": "old", "ts": T0 - 3600},
        {"user": "ann", "item": "recent", "ts": T0 - 60},
    ]
    return crowd + mine


async def answer(system: System, after: float | None) -> set[str]:
    flt = ItemFilter(seen_returns_after_s=after) if after is not None else None
    found = await system.recommend("ann", k=3, candidates=CANDIDATES, item_filter=flt)
    return {it["item"] for it in found}


async def test_a_seen_item_returns_once_its_time_has_passed(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    async with System(config(tmp_path), clock=clock) as system:
        await system.ingest(events())
        assert await answer(system, None) == {"never"}  # seen items never return by default
        assert await answer(system, 600) == {"never", "old"}
        assert await answer(system, 30) == set(CANDIDATES)
        assert await answer(system, 7200) == {"never"}
        clock.now = T0 + 3000  # the ranker's clock moves on: recent is 3,060 s old now
        assert await answer(system, 600) == set(CANDIDATES)


async def test_the_times_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    async with System(config(tmp_path), clock=clock) as system:
        await system.ingest(events())
    async with System(config(tmp_path, restore=True), clock=clock) as restored:
        assert await answer(restored, 600) == {"never", "old"}


def test_a_history_saved_without_times_keeps_its_items_excluded() -> None:
    users = UserState()
    users.load_state({"history": {"ann": [3, 5]}, "recent": {}, "sequences": {}, "profiles": {}})
    assert set(users.seen("ann")) == {3, 5}
    assert users.seen_since("ann", math.inf) == {3, 5}  # unknown times never return
    users.add("ann", 7, ts=T0)
    assert users.seen_since("ann", T0 + 1) == {3, 5}
    assert users.seen_since("ann", T0) == {3, 5, 7}
    again = UserState()
    again.load_state(users.to_state())
    met = again.history["ann"]
    assert set(met) == {3, 5, 7} and math.isnan(met[3]) and met[7] == T0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "must be >= 0 and finite"),
        (math.inf, "must be >= 0 and finite"),
        ("1h", "must be a number"),
        (True, "must be a number"),
    ],
)
def test_a_bad_return_time_says_what_is_wrong(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ItemFilter.from_dict({"seen_returns_after_s": value})


async def test_over_http_and_the_client(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    async with System(config(tmp_path), clock=clock) as system:
        await system.ingest(events())
        flt = {"seen_returns_after_s": 600}
        params = {"user": "ann", "candidates": ",".join(CANDIDATES), "filter": json.dumps(flt)}
        body = {"user": "ann", "candidates": CANDIDATES, "filter": flt}
        async with TestClient(TestServer(make_app(system), host="127.0.0.1", port=0)) as http:
            got = await http.get("/v1/recommend", params=params)
            assert got.status == 200
            assert {it["item"] for it in (await got.json())["items"]} == {"never", "old"}
            posted = await http.post("/v1/recommend", json=body)
            assert {it["item"] for it in (await posted.json())["items"]} == {"never", "old"}
            bad = await http.post(
                "/v1/recommend", json={**body, "filter": {"seen_returns_after_s": -5}}
            )
            assert bad.status == 400
            assert "seen_returns_after_s" in (await bad.json())["error"]
            url = str(http.make_url("")).rstrip("/")
            async with AsyncClient(url) as client:
                found = await client.recommend("ann", candidates=CANDIDATES, item_filter=flt)
                assert {it["item"] for it in found} == {"never", "old"}
