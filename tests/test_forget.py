"""Forgetting a user (issue 13, privacy requests): ``DELETE /v1/users/{user}``,
``system.lifecycle.forget_user`` and the clients remove everything keyed by the user
(history, seen set, recent items, profile, impressions, next-item evaluations, the user
id's own weights), so they are recommended as a stranger is; the deletion is a journal
record, so a restart (snapshot or replay) and ``freshrank journal export`` honour it; a
cluster ranker refuses with 501."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.forget import UnknownUser
from runtime.client import ApiError, AsyncClient, Client
from runtime.cluster import ClusterFront
from runtime.config import Config
from runtime.http import make_app
from runtime.journal import export_jsonl
from runtime.system import System

T0 = 1_700_000_000.0


def config(tmp_path: Path, **state: Any) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 18},
            "state": {"restore": bool(state), "snapshot_path": "", **state},
            "ingest": {"dead_letter_path": ""},
            "http": {"enabled": False},
            "training": {"rank_eval_every": 3, "rank_eval_rows": 0, "relevant_next": 3},
        }
    )


def stream() -> list[dict[str, Any]]:
    """A catalog with genres, walkers along a ring, and ann with a profile."""
    rng = np.random.default_rng(0)
    events: list[dict[str, Any]] = [
        {"item": f"x{k}", "item_features": {"genre": f"g{k % 4}"}} for k in range(40)
    ]
    for u in range(60):
        start = int(rng.integers(0, 40))
        events += [{"user": f"u{u}", "item": f"x{(start + s) % 40}"} for s in range(6)]
    events += [
        {"user": "ann", "item": f"x{k}", "user_features": {"age": "25-34"}} for k in (4, 8, 13)
    ]
    return events


def labelled() -> list[dict[str, Any]]:
    """ann's impressions: one clicked (resolved, remembered), one still open."""
    return [
        {"event": "impression", "impression_id": "p1", "user": "ann", "item": "x1"},
        {"event": "click", "impression_id": "p1"},
        {"event": "impression", "impression_id": "p2", "user": "ann", "item": "x2"},
    ]


def traces(system: System, user: str) -> dict[str, Any]:
    model = system.model
    users = model.users
    return {
        "history": user in users.history,
        "recent": user in users.recent,
        "sequence": user in users.sequences,
        "profile": user in users.profiles,
        "impressions": model.labels.impressions_of(user),
        "evaluations": model.metrics.next_item.waiting_for(user),
    }


NONE = {"history": False, "recent": False, "sequence": False, "profile": False,
        "impressions": ([], []), "evaluations": False}  # fmt: skip


async def test_forgetting_a_user_removes_every_trace_of_them(tmp_path: Path) -> None:
    async with System(config(tmp_path)) as system:
        await system.ingest(stream())
        await system.ingest(labelled())
        assert traces(system, "ann") == {
            "history": True, "recent": True, "sequence": True, "profile": True,
            "impressions": (["p2"], ["p1"]), "evaluations": True,
        }  # fmt: skip
        users = system.statistics()["users"]
        stranger = await system.recommend("stranger", k=40)
        assert await system.recommend("ann", k=40) != stranger
        answer = await system.lifecycle.forget_user("ann")
        assert answer["user"] == "ann"
        removed = answer["forgotten"]
        assert removed["items_seen"] == 4 and removed["recent_items"] == 4  # x1 was clicked
        assert removed["profile"] is True
        assert (removed["open_impressions"], removed["resolved_impressions"]) == (1, 1)
        assert removed["pending_evaluations"] >= 1
        assert removed["parameters_reset"] >= 1 + 4 + 1  # user=ann, ann x i.genre=g*, factors
        assert traces(system, "ann") == NONE
        assert system.statistics()["users"] == users - 1
        assert system.statistics()["lifecycle"]["users_forgotten"] == 1
        # what is left ranks ann as it ranks a stranger: nothing of ann is in the model
        assert await system.recommend("ann", k=40) == stranger
        with pytest.raises(UnknownUser, match="unknown user 'ann'"):
            await system.lifecycle.forget_user("ann")
        with pytest.raises(UnknownUser):
            await system.lifecycle.forget_user("never-seen")
        # the open impression is gone: its click is an unknown one
        result = await system.ingest([{"event": "click", "impression_id": "p2"}])
        assert result.rejected == 1 and "unknown impression_id" in result.errors[0]["reason"]
        # other users are untouched, and ann can come back as a new user
        assert traces(system, "u1")["history"]
        await system.ingest([{"user": "ann", "item": "x30"}])
        assert set(system.model.users.history["ann"]) == {system.catalog.rows["x30"]}


def durable(state: Path) -> Config:
    return config(state, dir=str(state))


@pytest.mark.parametrize("snapshot", ["before the deletion", "after the deletion"])
async def test_a_forgotten_user_stays_forgotten_after_a_restart(
    tmp_path: Path, snapshot: str
) -> None:
    state = tmp_path / "state"
    system = System(durable(state))
    await system.start()
    await system.ingest(stream())
    if snapshot == "before the deletion":
        await system.snapshot()
    await system.lifecycle.forget_user("ann")
    if snapshot == "after the deletion":
        await system.snapshot()
    await system.ingest([{"user": "u1", "item": "x9"}, {"user": "bob", "item": "x3"}])
    users = system.statistics()["users"]
    expected = await system.recommend("ann", k=40)
    assert expected == await system.recommend("stranger", k=40)
    await system.stop(drain=False)  # a crash: the journal has the rest
    again = System(durable(state))
    await again.start()
    try:
        snapshots = again.statistics()["snapshots"]
        assert snapshots["replayed_forgets"] == (snapshot == "before the deletion")
        assert traces(again, "ann") == NONE
        assert again.statistics()["users"] == users
        assert await again.recommend("ann", k=40) == expected
        with pytest.raises(UnknownUser):
            await again.lifecycle.forget_user("ann")
    finally:
        await again.stop()


async def test_journal_export_leaves_out_a_forgotten_users_events(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with System(durable(state)) as system:
        await system.ingest([{"user": "ann", "item": "a"}, {"user": "bob", "item": "a"}])
        await system.ingest([{"user": 7, "item": "b"}])  # an integer id is its decimal text
        await system.lifecycle.forget_user("ann")
        await system.lifecycle.forget_user("7")
        await system.ingest([{"user": "ann", "item": "c"}])  # back, after the deletion
    out = io.StringIO()
    assert export_jsonl(state / "journal", out) == 2
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["user"], e["item"]) for e in exported] == [("bob", "a"), ("ann", "c")]


async def test_forget_over_http_and_the_clients(tmp_path: Path) -> None:
    async with System(config(tmp_path)) as system:
        await system.ingest(stream())
        await system.ingest([{"user": "bob", "item": "x1"}, {"user": "cy", "item": "x2"}])
        async with TestClient(TestServer(make_app(system))) as http:
            stats = await (await http.get("/v1/stats")).json()
            resp = await http.delete("/v1/users/ann")
            body = await resp.json()
            assert resp.status == 200 and body["user"] == "ann", body
            assert body["forgotten"]["items_seen"] == 3
            after = await (await http.get("/v1/stats")).json()
            assert after["users"] == stats["users"] - 1
            for user in ("ann", "nobody"):
                resp = await http.delete(f"/v1/users/{user}")
                assert resp.status == 404 and "unknown user" in (await resp.json())["error"]
            resp = await http.delete("/v1/users/bob", params={"all": "1"})
            assert resp.status == 400 and "unknown query parameter" in await resp.text()
            url = str(http.make_url("")).rstrip("/")
            async with AsyncClient(url) as client:
                assert (await client.forget_user("bob"))["forgotten"]["items_seen"] == 1
                with pytest.raises(ApiError) as error:
                    await client.forget_user("bob")
                assert error.value.status == 404 and "unknown user 'bob'" in error.value.reason
            answer = await asyncio.to_thread(Client(url).forget_user, "cy")
            assert answer["user"] == "cy"
        assert not {"ann", "bob", "cy"} & set(system.model.users.history)


async def test_a_cluster_ranker_refuses_with_501(tmp_path: Path) -> None:
    cfg = Config.from_dict({"http": {"port": 0}, "ingest": {"dead_letter_path": ""}})
    front = ClusterFront(cfg, 0)  # not started: the refusal needs no broker
    async with TestClient(TestServer(make_app(front))) as http:
        resp = await http.delete("/v1/users/ann")
        assert resp.status == 501
        assert "not supported in cluster mode" in (await resp.json())["error"]
