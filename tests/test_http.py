"""The HTTP API against a real aiohttp server on a loopback socket.

POST /v1/events (JSON array, NDJSON, msgpack; ``?wait=false``), GET /v1/recommend
(k, candidates, explain, context, exclusion of seen items, cold start),
GET /v1/healthz and GET /v1/stats.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from runtime.codec import encode
from runtime.config import Config
from runtime.http import make_app
from runtime.system import System

JSON = "application/json"
NDJSON = "application/x-ndjson"
MSGPACK = "application/msgpack"

GENRES = ("drama", "war", "comedy")
ITEMS = [{"item": f"m{n}", "item_features": {"genre": GENRES[n % 3]}} for n in range(10)]
CLICKS = {"m0": 30, "m1": 12, "m2": 4}  # implicit positives per item, one user each


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN / Infinity (which are not JSON)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- harness


@dataclass
class Harness:
    system: System
    client: TestClient

    def stats(self) -> dict[str, Any]:
        return self.system.statistics()

    async def post(self, body: bytes | str, content_type: str, query: str = "") -> Any:
        return await self.client.post(
            "/v1/events" + query, data=body, headers={"Content-Type": content_type}
        )

    async def post_json(self, events: Any) -> dict[str, Any]:
        resp = await self.post(json.dumps(events), JSON)
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result

    async def recommend(self, status: int = 200, **params: str) -> dict[str, Any]:
        resp = await self.client.get("/v1/recommend", params=params)
        assert resp.status == status, await resp.text()
        result: dict[str, Any] = strict_json(await resp.text())
        return result


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """``await start(section=dict(...))``: a running System behind a loopback server."""
    async with AsyncExitStack() as stack:

        async def _start(**sections: dict[str, Any]) -> Harness:
            config: dict[str, Any] = {
                "state": {"restore": False},
                "ingest": {"dead_letter_path": str(tmp_path / "dlq.jsonl")},
            }
            for name, values in sections.items():
                config[name] = {**config.get(name, {}), **values}
            system = await stack.enter_async_context(System(Config.from_dict(config)))
            server = TestServer(make_app(system), host="127.0.0.1", port=0)
            client = await stack.enter_async_context(TestClient(server))
            return Harness(system, client)

        yield _start


@pytest.fixture
async def h(start: Start) -> Harness:
    return await start()


@pytest.fixture
async def world(h: Harness) -> Harness:
    """10 items in 3 genres; m0 clicked by 30 users, m1 by 12, m2 by 4 (small batches)."""
    return await populated(h)


async def populated(h: Harness) -> Harness:
    await h.post_json(ITEMS)
    clicks = [
        {"user": f"u{u}", "item": item, "user_features": {"age": "25-34"}}
        for item, count in CLICKS.items()
        for u in range(count)
    ]
    for lo in range(0, len(clicks), 8):
        result = await h.post_json(clicks[lo : lo + 8])
        assert result["learned"] is True
    assert h.stats()["trainer"]["events"] == sum(CLICKS.values())
    return h


def seen_by(user: str) -> set[str]:
    index = int(user[1:])
    return {item for item, count in CLICKS.items() if index < count}


def assert_ranked(items: list[dict[str, Any]]) -> None:
    scores = [entry["score"] for entry in items]
    assert all(isinstance(s, float) and 0.0 < s < 1.0 for s in scores), scores
    assert scores == sorted(scores, reverse=True)
    names = [entry["item"] for entry in items]
    assert len(set(names)) == len(names)


# --------------------------------------------------------------------------- POST /v1/events

EVENTS: list[dict[str, Any]] = [
    {"item": "a", "item_features": {"genre": "drama", "price": 3.5}},
    {"user": "u1", "item": "a", "label": 1, "ts": 1.7e9, "context": {"device": "tv"}},
    {"user": "u2", "item": "b", "label": 0, "weight": 2.5, "user_features": {"age": "18-24"}},
    {"user": 3, "item": 7, "item_features": {"tags": ["x", "y"], "new": True}},
]
EVENT_INTERACTIONS = 3


async def assert_learned(h: Harness, resp: Any, accepted: int, interactions: int) -> None:
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "accepted": accepted,
        "rejected": 0,
        "errors": [],
        "learned": True,
    }
    stats = h.stats()
    assert stats["trainer"]["events"] == interactions
    assert stats["catalog_items"] == 3  # a, b, 7
    assert stats["dead_letters"]["records"] == 0


@pytest.mark.parametrize(
    "content_type",
    [JSON, "application/json; charset=utf-8", "application/octet-stream", "text/plain"],
)
async def test_post_json_array(h: Harness, content_type: str) -> None:
    resp = await h.post(json.dumps(EVENTS), content_type)
    await assert_learned(h, resp, len(EVENTS), EVENT_INTERACTIONS)


async def test_post_single_json_object(h: Harness) -> None:
    resp = await h.post(json.dumps({"user": "u1", "item": "a"}), JSON)
    assert resp.status == 200
    assert (await resp.json())["accepted"] == 1
    assert h.stats()["trainer"]["events"] == 1


@pytest.mark.parametrize("content_type", [NDJSON, "application/jsonl", "application/ndjson"])
async def test_post_ndjson(h: Harness, content_type: str) -> None:
    lines = [json.dumps(e) for e in EVENTS]
    # blank lines and CRLF line ends are fine
    body = "\r\n".join([lines[0], "", lines[1], "   "]) + "\n" + "\n".join(lines[2:])
    resp = await h.post(body, content_type)
    await assert_learned(h, resp, len(EVENTS), EVENT_INTERACTIONS)


@pytest.mark.parametrize("content_type", [MSGPACK, "application/x-msgpack"])
async def test_post_msgpack(h: Harness, content_type: str) -> None:
    resp = await h.post(encode(EVENTS), content_type)
    await assert_learned(h, resp, len(EVENTS), EVENT_INTERACTIONS)


async def test_post_msgpack_single_object(h: Harness) -> None:
    resp = await h.post(encode({"user": "u1", "item": "a", "label": 1}), MSGPACK)
    assert resp.status == 200
    assert (await resp.json())["accepted"] == 1
    assert h.stats()["trainer"]["events"] == 1


async def test_a_batch_larger_than_the_training_batch_is_learned(start: Start) -> None:
    h = await start(training={"batch_size": 7})
    events = [{"user": f"u{i % 13}", "item": f"i{i % 17}"} for i in range(100)]
    resp = await h.post(json.dumps(events), JSON)
    assert resp.status == 200
    assert (await resp.json())["accepted"] == 100
    stats = h.stats()
    assert stats["trainer"]["events"] == 100
    assert stats["trainer"]["batches"] == 15  # ceil(100 / 7)
    assert stats["catalog_items"] == 17


@pytest.mark.parametrize("flag", ["false", "0", "no", "FALSE"])
async def test_wait_false_returns_before_learning(
    h: Harness, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    # Hold the hasher at a gate so "not learned yet" is a fact, not a race.
    gate = asyncio.Event()
    handle = h.system.hasher.handle

    async def gated(message: Any) -> None:
        await gate.wait()
        await handle(message)

    monkeypatch.setattr(h.system.hasher, "handle", gated)
    resp = await h.post(json.dumps(EVENTS), JSON, query=f"?wait={flag}")
    assert resp.status == 200
    assert await resp.json() == {
        "accepted": len(EVENTS),
        "rejected": 0,
        "errors": [],
        "learned": False,
    }
    assert h.stats()["trainer"]["events"] == 0
    assert h.stats()["seq"] == 0  # queued
    gate.set()
    await h.system.drain()
    assert h.stats()["trainer"]["events"] == EVENT_INTERACTIONS
    assert h.stats()["trainer"]["learned_seq"] == 0
    # ... and the recommendations reflect them: u1 has seen "a"
    items = (await h.recommend(user="u1", k="10"))["items"]
    assert "a" not in {entry["item"] for entry in items}


async def test_wait_true_is_the_default(h: Harness) -> None:
    for query in ("", "?wait=true", "?wait=1"):
        resp = await h.post(json.dumps([{"user": "u", "item": "i"}]), JSON, query=query)
        assert (await resp.json())["learned"] is True


# --------------------------------------------------------------------------- GET /v1/recommend


async def test_recommend_returns_k_items_sorted(world: Harness) -> None:
    body = await world.recommend(user="u20", k="5")
    assert body["user"] == "u20"
    assert body["k"] == 5
    assert len(body["items"]) == 5
    assert_ranked(body["items"])
    assert set(body["items"][0]) == {"item", "score"}


async def test_recommend_default_k_is_10(world: Harness) -> None:
    body = await world.recommend(user="someone-new")
    assert body["k"] == 10
    assert len(body["items"]) == 10


@pytest.mark.parametrize("user", ["u0", "u5", "u20"])
async def test_recommend_excludes_items_the_user_interacted_with(world: Harness, user: str) -> None:
    seen = seen_by(user)
    assert seen
    items = (await world.recommend(user=user, k="1000"))["items"]
    names = {entry["item"] for entry in items}
    assert names.isdisjoint(seen)
    assert names == {entry["item"] for entry in ITEMS} - seen
    assert_ranked(items)


async def test_recommend_sees_an_interaction_immediately(world: Harness) -> None:
    before = {e["item"] for e in (await world.recommend(user="fresh", k="1000"))["items"]}
    assert "m7" in before
    await world.post_json([{"user": "fresh", "item": "m7"}])
    after = {e["item"] for e in (await world.recommend(user="fresh", k="1000"))["items"]}
    assert after == before - {"m7"}


async def test_recommend_honours_candidates(world: Harness) -> None:
    items = (await world.recommend(user="cold", candidates="m3,m0,m9", k="10"))["items"]
    assert {entry["item"] for entry in items} == {"m0", "m3", "m9"}
    assert_ranked(items)
    # unknown candidates are ignored, seen candidates excluded, k still applies
    items = (await world.recommend(user="u0", candidates="m0,nope,m4,m5,m6", k="2"))["items"]
    assert len(items) == 2
    assert {entry["item"] for entry in items} <= {"m4", "m5", "m6"}
    assert_ranked(items)


async def test_candidate_scores_match_the_full_ranking(world: Harness) -> None:
    full = {e["item"]: e["score"] for e in (await world.recommend(user="cold", k="1000"))["items"]}
    subset = (await world.recommend(user="cold", candidates="m8,m2"))["items"]
    assert {e["item"]: e["score"] for e in subset} == {"m8": full["m8"], "m2": full["m2"]}


async def test_recommend_explain(world: Harness) -> None:
    body = await world.recommend(user="u0", k="3", explain="1", context='{"device": "tv"}')
    assert len(body["items"]) == 3
    for entry in body["items"]:
        explanation = entry["explanation"]
        assert isinstance(explanation, list)
        assert 1 <= len(explanation) <= 5
        for part in explanation:
            assert set(part) == {"feature", "contribution", "part"}
            assert part["part"] in ("linear", "factor", "signal")
            assert isinstance(part["feature"], str) and part["feature"]
            assert isinstance(part["contribution"], float) and part["contribution"] != 0
        magnitudes = [abs(part["contribution"]) for part in explanation]
        assert magnitudes == sorted(magnitudes, reverse=True)
        features = {part["feature"] for part in explanation}
        assert features & {"bias", "u.age=25-34", f"item={entry['item']}"}
        assert all(f == "bias" or "=" in f for f in features)
    # without explain=1 there is no explanation
    plain = await world.recommend(user="u0", k="3")
    assert all("explanation" not in entry for entry in plain["items"])
    assert [e["item"] for e in plain["items"]] == [e["item"] for e in body["items"]]


async def test_explain_names_item_features_and_crosses(start: Start) -> None:
    # without the signals, which would otherwise carry m0's popularity (its trends)
    world = await populated(await start(sequence={"enabled": False}))
    items = (await world.recommend(user="u40", candidates="m0", explain="true"))["items"]
    (entry,) = items
    features = {part["feature"] for part in entry["explanation"]}
    # m0 was clicked 30 times: its id and its genre carry weight
    assert "item=m0" in features
    assert features & {"i.genre=drama", "u.age=25-34 x item=m0", "bias"}


async def test_cold_start_user_gets_popularity_like_ranking(world: Harness) -> None:
    body = await world.recommend(user="never-seen-before", k="10")
    items = body["items"]
    assert len(items) == 10
    assert_ranked(items)
    ranking = [entry["item"] for entry in items]
    # the most clicked items lead; the clicked items keep their popularity order (items
    # that share m0's genre may come before m2: the genre feature is shared)
    assert ranking[:2] == ["m0", "m1"]
    clicked = [item for item in ranking if item in CLICKS]
    assert clicked == sorted(CLICKS, key=CLICKS.__getitem__, reverse=True)
    # a different unknown user gets the same list: nothing user-specific is known
    other = (await world.recommend(user="another-stranger", k="10"))["items"]
    assert [entry["item"] for entry in other] == ranking


async def test_recommend_with_empty_catalog(h: Harness) -> None:
    assert (await h.recommend(user="anyone"))["items"] == []


async def test_k_larger_than_catalog_returns_everything(world: Harness) -> None:
    items = (await world.recommend(user="cold", k="1000"))["items"]
    assert len(items) == len(ITEMS)


@pytest.mark.parametrize("k", ["0", "-1", "1001", "abc", "2.5", "", "1e3"])
async def test_k_out_of_range_or_not_an_integer(world: Harness, k: str) -> None:
    body = await world.recommend(400, user="u1", k=k)
    assert "'k'" in body["error"]


@pytest.mark.parametrize("k", ["1", "1000"])
async def test_k_bounds_are_inclusive(world: Harness, k: str) -> None:
    body = await world.recommend(user="cold", k=k)
    assert len(body["items"]) == min(int(k), len(ITEMS))


@pytest.mark.parametrize("params", [{}, {"user": ""}, {"user": "x" * 257}, {"k": "3"}])
async def test_missing_or_invalid_user(world: Harness, params: dict[str, str]) -> None:
    body = await world.recommend(400, **params)
    assert "'user'" in body["error"]


async def test_unknown_candidates_only(world: Harness) -> None:
    body = await world.recommend(400, user="u1", candidates="nope,zilch")
    assert "candidate" in body["error"]


@pytest.mark.parametrize(
    "context", ["not json", "[1, 2]", "7", "NaN", '{"a": {"b": 1}}', '{"x": Infinity}']
)
async def test_invalid_context(world: Harness, context: str) -> None:
    body = await world.recommend(400, user="u1", context=context)
    assert "context" in body["error"]


async def test_context_integer_beyond_float_range(world: Harness) -> None:
    body = await world.recommend(400, user="u1", context='{"x": 1' + "0" * 400 + "}")
    assert "context.x" in body["error"]


async def test_valid_context_is_used(world: Harness) -> None:
    body = await world.recommend(user="u1", k="2", context='{"device": "tv"}', explain="1")
    assert len(body["items"]) == 2


# --------------------------------------------------------------------------- health & stats


async def test_healthz(h: Harness) -> None:
    resp = await h.client.get("/v1/healthz")
    assert resp.status == 200
    body = strict_json(await resp.text())
    assert body["status"] == "ok"
    assert body["seq"] == -1
    await h.post_json([{"user": "u", "item": "i"}])
    body = strict_json(await (await h.client.get("/v1/healthz")).text())
    assert body == {"status": "ok", "seq": 0, "learned_seq": 0}


async def check_stats(h: Harness) -> dict[str, Any]:
    resp = await h.client.get("/v1/stats")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    stats: dict[str, Any] = strict_json(await resp.text())
    assert isinstance(stats["metrics"], dict)
    assert isinstance(stats["queues"], dict)
    assert set(stats["queues"]) >= {"events", "features", "dead_letters"}
    assert isinstance(stats["learners"], list)
    assert len(stats["learners"]) == stats["shards"]
    assert stats["failed"] is None
    return stats


async def test_stats_before_any_event(h: Harness) -> None:
    stats = await check_stats(h)
    assert stats["metrics"] == {}
    assert stats["trainer"]["events"] == 0


async def test_stats_with_undefined_metrics_is_valid_json(h: Harness) -> None:
    # only positives: AUC is undefined (NaN inside) and must come out as null
    await h.post_json([{"user": f"u{i}", "item": "a", "label": 1} for i in range(5)])
    stats = await check_stats(h)
    assert stats["metrics"]["labelled"] == 5
    assert stats["metrics"]["auc"] is None
    assert isinstance(stats["metrics"]["logloss"], float)


async def test_stats_after_training(start: Start) -> None:
    h = await start(training={"shards": 3})
    await h.post_json(ITEMS)
    events = [
        {"user": f"u{i}", "item": f"m{i % 10}", "label": i % 2, "user_features": {"age": "x"}}
        for i in range(40)
    ]
    await h.post_json(events)
    stats = await check_stats(h)
    assert len(stats["learners"]) == 3
    assert stats["trainer"]["events"] == 40
    assert stats["metrics"]["labelled"] == 40
    assert 0.0 <= stats["metrics"]["auc"] <= 1.0
    assert stats["metrics"]["logloss"] > 0
    assert stats["queues"]["events"]["sent"] == 2
    assert stats["catalog_items"] == 10


async def test_unknown_route_and_wrong_method(h: Harness) -> None:
    assert (await h.client.get("/v1/nothing")).status == 404
    assert (await h.client.post("/v1/healthz")).status == 405
    assert (await h.client.post("/v1/recommend")).status == 400  # POST: a session request
    assert (await h.client.get("/v1/events")).status == 405
