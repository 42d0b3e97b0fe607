"""Item lifecycle (issue 13): hidden, unavailable, expired and deleted items are never
recommended (whole catalog, generated candidates, given candidates, sessions, similar
items, exploration) nor drawn as negatives (uniform and hard), from the very next
request; the state survives a snapshot and a journal replay; over the Python API, HTTP
and the client, with a reason for every bad input."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

import actors.trainer
from actors.ranker import UnknownItem
from actors.trainer import rows_with_negatives
from runtime.client import ApiError, AsyncClient, Client
from runtime.config import Config
from runtime.errors import BadRequest
from runtime.http import make_app
from runtime.messages import IMPLICIT
from runtime.system import System

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    base: dict[str, Any] = {
        "model": {"bits": 16},
        "state": {"restore": False, "snapshot_path": ""},
        "ingest": {"dead_letter_path": ""},
        "http": {"enabled": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Config.from_dict(base)


def ring(users: int = 400, who: str = "u", seed: int = 0) -> list[dict[str, Any]]:
    """Each user walks 6 steps along the ring x0 → x1 → … → x39 from a random start."""
    rng = np.random.default_rng(seed)
    events = []
    for u in range(users):
        start = int(rng.integers(0, 40))
        events += [{"user": f"{who}{u}", "item": f"x{(start + s) % 40}"} for s in range(6)]
    return events


def ids(ranked: list[dict[str, Any]]) -> list[str]:
    return [r["item"] for r in ranked]


async def every_answer(system: System, item: str) -> dict[str, list[str]]:
    """What each kind of request answers around ``item`` (x20): the ring makes x20 the
    first pick after x18, x19 and a neighbour of x19 and x21."""
    return {
        "session": ids(await system.recommend("", k=5, session=["x18", "x19"])),
        "whole catalog": ids(await system.recommend("nobody", k=40)),
        "candidates": ids(await system.recommend("nobody", k=3, candidates=[item, "x1", "x2"])),
        "similar x19": ids(await system.similar("x19", k=5)),
        "similar x21": ids(await system.similar("x21", k=5)),
        "epsilon": ids(await system.recommend("", k=39, session=["x0"], explore="epsilon",
                                              epsilon=1.0)),
    }  # fmt: skip


@pytest.mark.parametrize("whole_catalog_below", [5000, 0], ids=["whole catalog", "candidates"])
async def test_a_hidden_item_is_never_recommended_until_unhidden(
    tmp_path: Path, whole_catalog_below: int
) -> None:
    cfg = config(tmp_path, candidates={"whole_catalog_below": whole_catalog_below})
    async with System(cfg) as system:
        await system.ingest(ring())
        before = await every_answer(system, "x20")
        assert before["session"][0] == "x20" and "x20" in before["similar x19"]
        for answer in before.values():
            assert "x20" in answer
        state = await system.lifecycle.hide_item("x20")
        assert state == {"item": "x20", "hidden": True, "available": True, "expires_at": None,
                         "expired": False, "deleted": False}  # fmt: skip
        hidden = await every_answer(system, "x20")
        for kind, answer in hidden.items():
            assert "x20" not in answer, kind
        assert hidden["session"][:4] == before["session"][1:]  # the rest keep their order
        assert (await system.inspect("x20"))["lifecycle"]["hidden"]  # still inspectable
        await system.lifecycle.unhide_item("x20")
        again = await every_answer(system, "x20")
        assert set(again.pop("epsilon")) == set(before.pop("epsilon"))  # other draws
        assert again == before


async def test_unavailable_and_expired_items_are_not_served(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    async with System(config(tmp_path), clock=clock) as system:
        await system.ingest(ring())
        await system.lifecycle.update_item("x20", available=False)
        assert "x20" not in ids(await system.recommend("", k=40, session=["x0"]))
        await system.lifecycle.update_item("x20", available=True, expires_at=T0 + 60)
        assert "x20" in ids(await system.recommend("", k=40, session=["x0"]))
        clock.now = T0 + 59.9
        assert "x20" in ids(await system.similar("x19"))
        clock.now = T0 + 60  # the serving side judges expiry by the wall clock
        assert "x20" not in ids(await system.recommend("", k=40, session=["x0"]))
        assert "x20" not in ids(await system.similar("x19"))
        assert (await system.inspect("x20"))["lifecycle"] == {
            "hidden": False, "available": True, "expires_at": T0 + 60, "expired": True,
            "deleted": False,
        }  # fmt: skip
        stats = system.statistics()["lifecycle"]["catalog"]
        assert stats == {"hidden": 0, "unavailable": 0, "deleted": 0, "with_expiry": 1,
                         "expired": 1}  # fmt: skip
        await system.ingest([{"item": "x20", "expires_at": None}])  # null: no expiry
        assert "x20" in ids(await system.recommend("", k=40, session=["x0"]))
        assert await system.lifecycle.update_item("x20", expires_at=T0) == {
            "item": "x20", "hidden": False, "available": True, "expires_at": T0,
            "expired": True, "deleted": False,
        }  # fmt: skip


def test_rows_with_negatives_never_draws_a_blocked_row() -> None:
    labels = np.full(2000, IMPLICIT, np.int8)
    items = np.arange(2000) % 20
    plain = rows_with_negatives(labels, items, 20, 4, (1, 0))
    same = rows_with_negatives(labels, items, 20, 4, (1, 0), np.zeros(20, bool))
    for a, b in zip(plain, same, strict=True):
        assert np.array_equal(a, b)  # nothing blocked: the same draws as before
    blocked = np.zeros(20, bool)
    blocked[[3, 7, 8]] = True
    origin, rows, label, _ = rows_with_negatives(labels, items, 20, 4, (1, 0), blocked)
    negatives = rows[label == 0]
    assert negatives.size == 2000 * 4 and not np.isin(negatives, [3, 7, 8]).any()
    assert (negatives != items[origin[label == 0]]).all()  # never the positive itself
    assert set(np.unique(negatives)) == set(range(20)) - {3, 7, 8}
    assert np.array_equal(rows[label == 1], items)  # a hidden positive is still learned
    only = np.ones(20, bool)
    only[5] = False  # one row left: the positive on it has no negative to draw
    _, rows, label, _ = rows_with_negatives(labels, items, 20, 4, (1, 0), only)
    assert set(rows[label == 0]) == {5} and (label == 0).sum() == 4 * (2000 - 100)


def recorded_negatives(
    monkeypatch: pytest.MonkeyPatch, batches: list[tuple[np.ndarray, np.ndarray]] | None = None
) -> Callable[[], np.ndarray]:
    """Record every batch's training rows (into ``batches``); returns the items drawn as
    negatives so far (as learned: the hard negatives are written into the same rows)."""
    batches = [] if batches is None else batches
    original = actors.trainer.rows_with_negatives

    def recording(*args: Any, **kwargs: Any) -> Any:
        origin, rows, labels, explicit = original(*args, **kwargs)
        batches.append((rows, labels))
        return origin, rows, labels, explicit

    monkeypatch.setattr(actors.trainer, "rows_with_negatives", recording)
    return lambda: np.concatenate([rows[labels == 0] for rows, labels in batches])


async def test_a_change_applies_from_its_place_in_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hasher runs ahead of the trainer; a hide waits until the batches before it are
    learned, so they draw the item (as a replay would) and the ones after it never do."""
    batches: list[tuple[np.ndarray, np.ndarray]] = []
    recorded_negatives(monkeypatch, batches)
    handle = actors.trainer.TrainerActor.handle
    gate = asyncio.Event()

    async def gated(self: actors.trainer.TrainerActor, message: Any) -> None:
        await gate.wait()  # the trainer starts once everything is queued: the hasher is ahead
        await handle(self, message)

    monkeypatch.setattr(actors.trainer.TrainerActor, "handle", gated)
    cfg = config(tmp_path, training={"negatives": 4, "batch_size": 16})
    async with System(cfg) as system:
        before = ring(100)
        await system.ingest(before, wait=False)
        await system.ingest([{"item": "x20", "hidden": True}], wait=False)
        await system.ingest(ring(100, who="w", seed=1), wait=False)
        gate.set()
        await system.drain()
        row = system.catalog.rows["x20"]
    split = math.ceil(len(before) / 16)
    drawn = [int((rows[labels == 0] == row).sum()) for rows, labels in batches]
    assert len(drawn) == 2 * split
    assert sum(drawn[:split]) > 30
    assert sum(drawn[split // 2 : split]) > 10  # the batches just before the hide too
    assert sum(drawn[split:]) == 0


@pytest.mark.parametrize("hard", [0, 4], ids=["uniform", "hard negatives"])
async def test_a_hidden_item_is_never_drawn_as_a_negative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hard: int
) -> None:
    negatives = recorded_negatives(monkeypatch)
    cfg = config(tmp_path, training={"negatives": 4}, sequence={"hard_negatives": hard})
    async with System(cfg) as system:
        await system.ingest(ring(100))
        hidden, deleted = system.catalog.rows["x20"], system.catalog.rows["x21"]
        drawn = np.isin(negatives(), [hidden, deleted]).sum()
        assert drawn > 20  # without a lifecycle they are drawn like any other
        await system.lifecycle.hide_item("x20")
        await system.lifecycle.delete_item("x21")
        learned = negatives().size
        # walkers around x20 and x21: with hard negatives, their neighbours are drawn
        await system.ingest(ring(400, who="w", seed=1))
        after = negatives()[learned:]
        assert after.size >= 400 * 5 * 4
        assert not np.isin(after, [hidden, deleted]).any()
        await system.lifecycle.unhide_item("x20")
        await system.ingest(ring(100, who="v", seed=2))
        assert hidden in negatives()[learned + after.size :]


async def test_expiry_for_learning_is_judged_by_event_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    negatives = recorded_negatives(monkeypatch)
    clock = FakeClock(T0 + 10_000)
    async with System(config(tmp_path, training={"negatives": 4}), clock=clock) as system:
        await system.ingest([{"item": f"i{k}"} for k in range(6)])
        await system.ingest([{"item": "i5", "expires_at": T0 + 100}])
        row = system.catalog.rows["i5"]
        early = [{"user": f"u{n}", "item": f"i{n % 5}", "ts": T0 + 50} for n in range(300)]
        await system.ingest(early)  # the stream is before i5's expiry: it may be drawn
        drawn = negatives()
        assert (drawn == row).sum() > 50
        late = [{"user": f"u{n}", "item": f"i{n % 5}", "ts": T0 + 100} for n in range(300)]
        await system.ingest(late)
        assert not (negatives()[drawn.size :] == row).any()
        clock.now = T0  # serving goes by the wall clock: before the expiry, served
        assert "i5" in ids(await system.recommend("someone", k=6))


async def test_deleting_an_item_and_bringing_it_back(tmp_path: Path) -> None:
    async with System(config(tmp_path)) as system:
        await system.ingest(ring())
        features_before = (await system.inspect("x20"))["features"]
        assert await system.lifecycle.delete_item("x20") == {"item": "x20", "deleted": True}
        answers = await every_answer(system, "x20")
        assert not any("x20" in answer for answer in answers.values())
        for call in (system.similar, system.inspect, system.lifecycle.delete_item,
                     system.lifecycle.hide_item):  # fmt: skip
            with pytest.raises(UnknownItem, match="unknown item 'x20'"):
                await call("x20")
        assert "x20" not in ids(await system.recommend("u1", k=3, candidates=["x20", "x1"]))
        assert system.statistics()["lifecycle"]["catalog"]["deleted"] == 1
        # an interaction with a deleted item is learned but does not bring it back
        await system.ingest([{"user": "late", "item": "x20"}])
        with pytest.raises(UnknownItem):
            await system.inspect("x20")
        await system.ingest([{"item": "x20", "item_features": {"genre": "g"}}])
        back = await system.inspect("x20")
        assert back["lifecycle"] == {"hidden": False, "available": True, "expires_at": None,
                                     "expired": False, "deleted": False}  # fmt: skip
        assert back["features"] != features_before  # the upsert's features
        assert "x20" in ids(await system.recommend("", k=5, session=["x18", "x19"]))
        # deleting an item never seen creates nothing; a delete carries nothing else
        result = await system.ingest([{"item": "never", "deleted": True}])
        assert result.accepted == 1 and "never" not in system.catalog.rows


async def test_a_lifecycle_upsert_keeps_the_features_a_plain_upsert_replaces(
    tmp_path: Path,
) -> None:
    async with System(config(tmp_path)) as system:
        await system.ingest([{"item": "a", "item_features": {"genre": "war", "price": 3.0}}])
        features = system.catalog.names[system.catalog.rows["a"]]
        await system.ingest([{"item": "a", "hidden": True}])
        assert system.catalog.names[system.catalog.rows["a"]] == features
        await system.ingest([{"item": "a", "hidden": False, "item_features": {"genre": "x"}}])
        assert system.catalog.names[system.catalog.rows["a"]] == ["item=a", "i.genre=x"]
        await system.ingest([{"item": "b", "hidden": True}])  # a new item, created hidden
        assert (await system.inspect("b"))["lifecycle"]["hidden"]
        assert await system.recommend("u", k=5) == [
            {"item": "a", "score": pytest.approx(0.5)}
        ]  # fmt: skip


BAD_EVENTS = [
    ({"item": "a", "expires_at": "tomorrow"}, "'expires_at' must be a number of Unix seconds"),
    ({"item": "a", "expires_at": True}, "'expires_at' must be a number"),
    ({"item": "a", "expires_at": -5}, "'expires_at' must be Unix seconds >= 0"),
    ({"item": "a", "expires_at": 1.7e12}, "milliseconds? it is in seconds"),
    ({"item": "a", "expires_at": [1]}, "got list"),
    ({"item": "a", "hidden": "yes"}, "'hidden' must be true or false"),
    ({"item": "a", "available": 1}, "'available' must be true or false"),
    ({"item": "a", "deleted": False}, "'deleted' can only be true"),
    ({"item": "a", "deleted": True, "hidden": True}, "a deletion ('deleted': true) carries no"),
    (
        {"item": "a", "deleted": True, "item_features": {"g": "x"}},
        "carries no item_features",
    ),
    ({"user": "u", "item": "a", "hidden": True}, "'hidden' only on an item upsert"),
    ({"user": "u", "item": "a", "expires_at": None}, "'expires_at' only on an item upsert"),
]


@pytest.mark.parametrize(("event", "reason"), BAD_EVENTS, ids=[r for _, r in BAD_EVENTS])
async def test_bad_lifecycle_fields_are_refused_with_a_reason(
    tmp_path: Path, event: dict[str, Any], reason: str
) -> None:
    async with System(config(tmp_path)) as system:
        await system.ingest([{"item": "a"}])
        result = await system.ingest([event])
        assert result.rejected == 1 and reason in result.errors[0]["reason"]
        assert not system.catalog.restricted  # nothing changed
        with pytest.raises(BadRequest, match="lifecycle has no user"):
            await system.lifecycle.update_item("a", user="u")


async def test_lifecycle_over_http_and_the_clients(tmp_path: Path) -> None:
    async with System(config(tmp_path)) as system:
        await system.ingest(ring())
        async with TestClient(TestServer(make_app(system))) as http:
            resp = await http.post("/v1/items/x20/hide")
            assert resp.status == 200 and (await resp.json())["hidden"] is True
            resp = await http.get("/v1/recommend", params={"user": "u1", "k": "40"})
            assert "x20" not in ids((await resp.json())["items"])
            resp = await http.post("/v1/recommend", json={"session": ["x18", "x19"], "k": 3})
            assert "x20" not in ids((await resp.json())["items"])
            resp = await http.get("/v1/items/x19/similar")
            assert "x20" not in ids((await resp.json())["similar"])
            resp = await http.get("/v1/items/x20")
            assert (await resp.json())["lifecycle"]["hidden"] is True
            resp = await http.post("/v1/items/x20/unhide")
            assert resp.status == 200 and (await resp.json())["hidden"] is False
            resp = await http.delete("/v1/items/x20")
            assert resp.status == 200 and await resp.json() == {"item": "x20", "deleted": True}
            for method, path in [("DELETE", "/v1/items/x20"), ("POST", "/v1/items/nope/hide"),
                                 ("POST", "/v1/items/nope/unhide"), ("GET", "/v1/items/x20"),
                                 ("GET", "/v1/items/x20/similar")]:  # fmt: skip
                resp = await http.request(method, path)
                assert resp.status == 404, (method, path)
                assert "unknown item" in (await resp.json())["error"]
            resp = await http.delete("/v1/items/x21", params={"now": "1"})
            assert resp.status == 400 and "unknown query parameter" in await resp.text()
            resp = await http.post("/v1/events", json=[{"item": "x3", "expires_at": "soon"}])
            body = await resp.json()
            assert resp.status == 422 and "'expires_at' must be a number" in str(body["errors"])
            resp = await http.post("/v1/events", json=[{"item": "x3", "available": False}])
            assert resp.status == 200
            url = str(http.make_url("")).rstrip("/")
            async with AsyncClient(url) as client:
                assert (await client.hide_item("x4"))["hidden"] is True
                assert (await client.unhide_item("x4"))["hidden"] is False
                assert await client.delete_item("x5") == {"item": "x5", "deleted": True}
                with pytest.raises(ApiError) as error:
                    await client.delete_item("x5")
                assert error.value.status == 404
            sync = Client(url)
            assert (await _in_thread(sync.hide_item, "x6"))["hidden"] is True
            assert await _in_thread(sync.delete_item, "x6") == {"item": "x6", "deleted": True}
        answer = ids(await system.recommend("", k=40, session=["x0"]))
        assert not {"x3", "x5", "x6", "x20"} & set(answer) and "x4" in answer


async def test_an_item_expires_over_http_by_the_servers_clock(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    async with System(config(tmp_path), clock=clock) as system:
        await system.ingest(ring(50))
        async with TestClient(TestServer(make_app(system))) as http:
            upsert = [{"item": "x7", "expires_at": T0 + 60}]
            assert (await http.post("/v1/events", json=upsert)).status == 200
            query = {"user": "nobody", "k": "40"}
            resp = await http.get("/v1/recommend", params=query)
            assert "x7" in ids((await resp.json())["items"])
            clock.now = T0 + 60
            resp = await http.get("/v1/recommend", params=query)
            assert "x7" not in ids((await resp.json())["items"])
            resp = await http.get("/v1/items/x7")
            assert (await resp.json())["lifecycle"] == {
                "hidden": False, "available": True, "expires_at": T0 + 60, "expired": True,
                "deleted": False,
            }  # fmt: skip


async def _in_thread(call: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(call, *args)


def durable(state: Path) -> Config:
    return config(state, state={"dir": str(state), "restore": True})


def lifecycle_of(system: System) -> dict[str, Any]:
    catalog = system.catalog
    return {item: catalog.lifecycle(row, math.inf) for item, row in catalog.rows.items()}


@pytest.mark.parametrize("snapshot", ["before the changes", "after the changes"])
async def test_the_lifecycle_survives_a_restart(tmp_path: Path, snapshot: str) -> None:
    """A snapshot holds the lifecycle; a journal replay makes the same changes again."""
    state = tmp_path / "state"
    system = System(durable(state))
    await system.start()
    await system.ingest(ring(100))
    if snapshot == "before the changes":
        await system.snapshot()
    await system.lifecycle.hide_item("x1")
    await system.lifecycle.delete_item("x2")
    await system.lifecycle.update_item("x3", available=False, expires_at=T0)
    await system.ingest([{"item": "x4", "expires_at": 2 * T0}])
    if snapshot == "after the changes":
        await system.snapshot()
    await system.ingest(ring(20))  # learned after the changes
    expected = lifecycle_of(system)
    answer = ids(await system.recommend("u3", k=40))
    await system.stop(drain=False)  # a crash: no snapshot on the way out
    again = System(durable(state))
    await again.start()
    try:
        replayed = again.statistics()["snapshots"]["replayed_records"]
        assert replayed == (5 if snapshot == "before the changes" else 1)
        assert lifecycle_of(again) == expected
        assert ids(await again.recommend("u3", k=40)) == answer
        assert not {"x1", "x2", "x3"} & set(answer)
        with pytest.raises(UnknownItem):
            await again.inspect("x2")
    finally:
        await again.stop()
