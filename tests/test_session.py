"""Session recommendations for anonymous visitors: ``POST /v1/recommend`` (and
``System.recommend(session=...)``) with the item ids a visitor just viewed and no user
id, ranked by the same model and signals a known user gets, nothing learned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from runtime.config import Config
from runtime.errors import BadRequest
from runtime.http import make_app
from runtime.recommend_request import parse_recommend_request
from runtime.system import System


def quiet(tmp_path: Path) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 16},
            "state": {"restore": False, "snapshot_path": ""},
            "ingest": {"dead_letter_path": ""},
            "http": {"enabled": False},
        }
    )


def sequences(users: int = 400) -> list[dict[str, Any]]:
    """Each user walks 6 steps along the ring x0 → x1 → … → x39 from a random start."""
    rng = np.random.default_rng(0)
    events = []
    for u in range(users):
        start = int(rng.integers(0, 40))
        events += [{"user": f"u{u}", "item": f"x{(start + s) % 40}"} for s in range(6)]
    return events


async def test_an_anonymous_session_gets_what_follows_its_items(tmp_path: Path) -> None:
    async with System(quiet(tmp_path)) as system:
        await system.ingest(sequences())
        learned = system.statistics()["trainer"]["events"]
        for start in (3, 17, 30):
            session = [f"x{start}", f"x{start + 1}"]
            ranked = [r["item"] for r in await system.recommend("", k=3, session=session)]
            assert ranked[0] == f"x{start + 2}", (session, ranked)
            assert not set(session) & set(ranked)  # the session's items count as seen
        nobody = [r["item"] for r in await system.recommend("", k=40, session=["unknown"])]
        assert len(nobody) == 40  # nothing known: the whole catalog, by popularity and trend
        assert system.statistics()["trainer"]["events"] == learned  # nothing was learned
        assert "" not in system.model.users.history


async def test_a_known_users_session_extends_their_history(tmp_path: Path) -> None:
    async with System(quiet(tmp_path)) as system:
        await system.ingest([*sequences(), {"user": "w", "item": "x5"}])
        ranked = [r["item"] for r in await system.recommend("w", k=3, session=["x20"])]
        assert ranked[0] == "x21" and not {"x5", "x20"} & set(ranked)
        assert system.model.users.sequences["w"] == [system.catalog.rows["x5"]]


async def test_post_recommend_over_http(tmp_path: Path) -> None:
    async with System(quiet(tmp_path)) as system:
        await system.ingest(sequences())
        async with TestClient(TestServer(make_app(system))) as client:
            resp = await client.post(
                "/v1/recommend", json={"session": ["x8", "x9", "nope"], "k": 2, "explain": True}
            )
            body = await resp.json()
            assert resp.status == 200, body
            assert body["user"] is None and body["items"][0]["item"] == "x10"
            assert body["ignored_session_items"] == ["nope"]
            terms = body["items"][0]["explanation"]
            assert any(t["feature"].startswith("signal=") and t["contribution"] > 0 for t in terms)
            for bad, reason in [
                ({}, "give a 'user'"),
                ({"session": "a"}, "list of item ids"),
                ({"session": ["a"], "k": 0}, "'k' must be an integer"),
                ({"session": ["a"], "sesion": []}, "unknown field"),
                ({"user": 5}, "'user' must be a string"),
                ({"user": "u", "scale": 10**400}, "'scale' is a number past the float range"),
            ]:
                resp = await client.post("/v1/recommend", json=bad)
                assert resp.status == 400 and reason in (await resp.json())["error"], bad
            resp = await client.post("/v1/recommend", data=b"[1,")
            assert resp.status == 400


def test_the_request_parser_names_every_field(tmp_path: Path) -> None:
    limits = quiet(tmp_path).http
    parsed = parse_recommend_request(b'{"user": "u", "candidates": ["x"], "scale": 1}', limits)
    assert (parsed.user, parsed.candidates, parsed.exploration) == ("u", ["x"], {"scale": 1.0})
    for body in (b'{"user": "u", "candidates": []}', b'{"user": "u", "explain": "yes"}',
                 b'{"user": "u", "k": true}', b'{"user": "u", "scale": "1"}',
                 b'{"user": "u", "epsilon": 1' + b"0" * 400 + b"}",
                 b'{"session": [' + b'"x",' * 1000 + b'"x"]}'):  # fmt: skip
        with pytest.raises(BadRequest):
            parse_recommend_request(body, limits)
