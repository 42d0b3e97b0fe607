"""Feedback types (issue 13): an event's ``type`` is learned as the label, weight and
``seen`` of its ``[feedback.types.<name>]``, in the System, over HTTP, through the
journal replay and in a cluster ranker's history; an unknown type is refused per event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.batching import batch_from_events
from actors.events import DEFAULT_FEEDBACK_TYPES, EventLimits, InvalidEvent, validate_event
from actors.model import build_model
from runtime.client import AsyncClient
from runtime.cluster import HistoryFollower
from runtime.codec import decode, decode_message, encode, encode_message
from runtime.config import Config, ConfigError
from runtime.http import make_app
from runtime.messages import IMPLICIT, NEGATIVE, POSITIVE, EventBatch, seen_flags
from runtime.replay import open_log, replay
from runtime.system import System

ITEMS = [{"item": f"i{k}", "item_features": {"genre": [f"g{k % 3}"]}} for k in range(8)]
CLICKS = [{"user": u, "item": f"i{k}"} for u in ("ann", "bob", "cy") for k in (0, 1, 2, 3)]


NOW = 1.7e9


def settings(**sections: dict[str, Any]) -> Config:
    return Config.from_dict(
        {"state": {"restore": False}, "ingest": {"dead_letter_path": ""}, **sections}
    )


async def trained(config: Config, *events: dict[str, Any]) -> System:
    """A started System that learned the catalog, the clicks and then ``events``, on a
    clock that stands still (an untimed event happens when it arrives)."""
    system = System(config, clock=lambda: NOW)
    await system.start()
    await system.ingest(ITEMS)
    await system.ingest(CLICKS)
    if events:
        result = await system.ingest(list(events))
        assert result.rejected == 0, result.errors
    return system


async def scores(system: System, user: str, items: list[str]) -> dict[str, float]:
    answer = await system.recommend(user, k=len(items), candidates=items)
    return {it["item"]: it["score"] for it in answer}


SCORED = settings(training={"exclude_seen": False})  # every candidate keeps its score


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("kind", "label", "weight", "seen"),
    [
        ("view", IMPLICIT, 0.5, False),
        ("click", IMPLICIT, 1.0, True),
        ("like", IMPLICIT, 2.0, True),
        ("purchase", IMPLICIT, 3.0, True),
        ("skip", NEGATIVE, 0.5, True),
        ("dislike", NEGATIVE, 2.0, True),
    ],
)
def test_each_default_type_maps_to_its_label_weight_and_seen(
    kind: str, label: int, weight: float, seen: bool
) -> None:
    event = validate_event({"user": "u", "item": "i", "type": kind})
    assert (event.label, event.weight, event.seen) == (label, weight, seen)


def test_an_event_without_type_is_a_seen_implicit_positive_of_weight_one() -> None:
    event = validate_event({"user": "u", "item": "i"})
    assert (event.label, event.weight, event.seen) == (IMPLICIT, 1.0, True)
    batch = batch_from_events([event, validate_event({"user": "u", "item": "j", "type": "like"})])
    assert batch.seen.size == 0  # no column at all: the batch is as it was before types
    assert seen_flags(batch) == [True, True]


def test_the_events_own_label_and_weight_win_over_its_types() -> None:
    event = validate_event({"user": "u", "item": "i", "type": "purchase", "label": 1, "weight": 7})
    assert (event.label, event.weight, event.seen) == (POSITIVE, 7.0, True)
    event = validate_event({"user": "u", "item": "i", "type": "view", "label": 0})
    assert (event.label, event.weight, event.seen) == (NEGATIVE, 0.5, False)


def test_the_seen_column_travels_through_batching_and_featurizing() -> None:
    events = [validate_event(e) for e in ITEMS[:2]]
    events += [validate_event({"user": "u", "item": "i0", "type": t}) for t in ("view", "like")]
    batch = batch_from_events(events)
    assert seen_flags(batch) == [True, True, False, True]
    features = build_model(Config()).featurizer().featurize(batch)
    assert seen_flags(features) == [False, True]  # the interactions only


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"user": "u", "item": "i", "type": "bogus"}, "'bogus' is not one of click, dislike"),
        ({"user": "u", "item": "i", "type": 3}, "'type' must be a string, got int"),
        ({"item": "i", "type": "like"}, "'user' is required for an interaction"),
        (
            {"event": "impression", "impression_id": "x", "user": "u", "item": "i", "type": "like"},
            "'type' is not allowed on a impression event",
        ),
    ],
)
def test_a_bad_type_is_refused_with_the_reason(event: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        validate_event(event, EventLimits(delayed_labels=True))


# --------------------------------------------------------------------------- config


def test_a_configured_type_is_added_or_changes_only_the_keys_it_gives(tmp_path: Path) -> None:
    path = tmp_path / "freshrank.toml"
    path.write_text(
        "[feedback.types.share]\nweight = 1.5\n\n"
        "[feedback.types.dislike]\nweight = 4\n\n"
        "[feedback.types.view]\nseen = true\n",
        encoding="utf-8",
    )
    types = Config.load(path).feedback.types
    assert (types["share"].label, types["share"].weight, types["share"].seen) == (1, 1.5, True)
    assert (types["dislike"].label, types["dislike"].weight) == (0, 4.0)
    assert (types["view"].weight, types["view"].seen) == (0.5, True)
    assert types["purchase"] == DEFAULT_FEEDBACK_TYPES["purchase"]
    limits = System(settings(feedback={"types": {"share": {"label": 0}}})).limits
    assert validate_event({"user": "u", "item": "i", "type": "share"}, limits).label == NEGATIVE


@pytest.mark.parametrize(
    ("feedback", "message"),
    [
        ({"types": {"like": {"label": 2}}}, "feedback.types.like.label must be 1 or 0, got 2"),
        ({"types": {"like": {"weight": -1}}}, "feedback.types.like.weight must be in 0..1e6"),
        ({"types": {"like": {"weight": "high"}}}, "feedback.types.like.weight must be float"),
        ({"types": {"like": {"seen": 1}}}, "feedback.types.like.seen must be bool"),
        ({"types": {"like": {"lable": 1}}}, "unknown key feedback.types.like.lable"),
        ({"types": {"like": 2}}, r"\[feedback.types.like\] must be a table"),
        ({"types": ["like"]}, "feedback.types must be a table"),
        ({"kinds": {}}, "unknown key feedback.kinds"),
    ],
)
def test_a_bad_type_definition_is_a_config_error_naming_the_key(
    feedback: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"feedback": feedback})


def test_the_types_survive_a_config_round_trip() -> None:
    config = Config.from_dict({"feedback": {"types": {"share": {"weight": 2.5, "seen": False}}}})
    assert Config.from_dict(config.to_dict()).feedback == config.feedback


# --------------------------------------------------------------------------- learning


async def test_a_type_is_learned_exactly_as_its_label_and_weight() -> None:
    pairs = [
        ({"type": "dislike"}, {"label": 0, "weight": 2.0}),
        ({"type": "purchase"}, {"weight": 3.0}),
    ]
    for typed, spelled in pairs:
        one = await trained(SCORED, {"user": "ann", "item": "i5", **typed})
        other = await trained(SCORED, {"user": "ann", "item": "i5", **spelled})
        try:
            items = [f"i{k}" for k in range(8)]
            assert await scores(one, "ann", items) == await scores(other, "ann", items)
        finally:
            await one.stop()
            await other.stop()


async def test_a_dislike_lowers_the_item_for_that_user_and_hides_it() -> None:
    system = await trained(SCORED)
    try:
        before = await scores(system, "ann", ["i5", "i6"])
        await system.ingest([{"user": "ann", "item": "i5", "type": "dislike"}])
        after = await scores(system, "ann", ["i5", "i6"])
        assert after["i5"] < before["i5"]
        assert after["i5"] - before["i5"] < after["i6"] - before["i6"]  # most for the item
        assert system.model.users.seen("ann") == {0, 1, 2, 3, 5}
    finally:
        await system.stop()
    system = await trained(settings(), {"user": "ann", "item": "i5", "type": "dislike"})
    try:
        recommended = [it["item"] for it in await system.recommend("ann", k=8)]
        assert sorted(recommended) == ["i4", "i6", "i7"]  # not the clicks, not the dislike
    finally:
        await system.stop()


async def test_a_dislike_does_not_feed_the_item_to_item_statistics() -> None:
    """Not as a co-occurrence of its own, nor in the user's recent items that the next
    positives co-occur with (the disliked item's neighbours would rise for the user)."""
    system = await trained(settings(), {"user": "ann", "item": "i5", "type": "dislike"})
    try:
        assert await system.similar("i5") == []
        await system.ingest([{"user": "ann", "item": "i6", "type": "like"}])
        neighbours = {it["item"] for it in await system.similar("i6")}
        assert "i3" in neighbours and "i5" not in neighbours
        assert 5 not in system.model.users.sequence("ann").tolist()
    finally:
        await system.stop()


async def margin(system: System, user: str, item: str) -> float:
    """The item's score above the mean of the catalog's for the user: a weighted
    implicit positive also weighs its sampled negatives, which lower every score."""
    every = await scores(system, user, [f"i{k}" for k in range(8)])
    return every[item] - sum(every.values()) / len(every)


async def test_a_purchase_weighs_more_than_a_view() -> None:
    bought = await trained(SCORED, {"user": "ann", "item": "i5", "type": "purchase"})
    viewed = await trained(SCORED, {"user": "ann", "item": "i5", "type": "view"})
    try:
        weights = []
        for system in (bought, viewed):
            features = (await system.inspect("i5"))["features"]
            weights.append({f["feature"]: f["weight"] for f in features}["item=i5"])
        assert weights[0] > weights[1]
        assert await margin(bought, "ann", "i5") > await margin(viewed, "ann", "i5")
    finally:
        await bought.stop()
        await viewed.stop()


async def test_a_view_is_not_seen_so_it_stays_recommendable() -> None:
    system = await trained(settings(), {"user": "ann", "item": "i5", "type": "view"})
    try:
        assert "i5" in [it["item"] for it in await system.recommend("ann", k=8)]
        await system.ingest([{"user": "ann", "item": "i5", "type": "purchase"}])
        assert "i5" not in [it["item"] for it in await system.recommend("ann", k=8)]
    finally:
        await system.stop()


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[tuple[TestClient, System, Path]]:
    dlq = tmp_path / "dlq.jsonl"
    config = Config.from_dict(
        {
            "state": {"restore": False},
            "ingest": {"dead_letter_path": str(dlq)},
            "queues": {"codec_roundtrip": True},  # the seen column crosses the codec
        }
    )
    async with System(config) as system:
        await system.ingest(ITEMS)
        await system.ingest(CLICKS)
        async with TestClient(TestServer(make_app(system), host="127.0.0.1", port=0)) as client:
            yield client, system, dlq


async def test_an_unknown_type_is_refused_and_the_rest_learned_over_http(
    http: tuple[TestClient, System, Path],
) -> None:
    client, system, dlq = http
    learned = system.statistics()["trainer"]["events"]
    events = [
        {"user": "ann", "item": "i5", "type": "dislike"},
        {"user": "ann", "item": "i6", "type": "teleport"},
        {"user": "ann", "item": "i7", "type": "view"},
    ]
    resp = await client.post("/v1/events", json=events)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert body["errors"][0]["index"] == 1
    assert "'teleport' is not one of click, dislike" in body["errors"][0]["reason"]
    await system.drain()
    assert system.statistics()["trainer"]["events"] == learned + 2
    letters = [json.loads(line) for line in dlq.read_text("utf-8").splitlines()]
    assert [r["reason"] for r in letters] == [body["errors"][0]["reason"]]
    dead = system.statistics()["dead_letters"]
    assert dead["records"] == 1
    assert dead["by_reason"] == {
        "'type' must name a configured feedback type ([feedback.types.<name>]):": 1
    }
    resp = await client.get("/v1/recommend", params={"user": "ann", "k": "8"})
    recommended = {it["item"] for it in (await resp.json())["items"]}
    assert recommended == {"i4", "i6", "i7"}  # the dislike is seen, the view is not
    scraped = await (await client.get("/metrics")).text()
    assert 'freshrank_dead_letters_total{reason="invalid_type"} 1.0' in scraped


# --------------------------------------------------------------------------- replay, cluster


async def test_the_journal_replay_learns_the_types_as_they_were(tmp_path: Path) -> None:
    config = Config.from_dict({"state": {"dir": str(tmp_path)}, "ingest": {"dead_letter_path": ""}})
    typed = [
        {"user": "ann", "item": "i5", "type": "dislike"},
        {"user": "bob", "item": "i6", "type": "view"},
        {"user": "cy", "item": "i7", "type": "purchase"},
    ]
    system = await trained(config, *typed)
    items = [f"i{k}" for k in range(8)]
    reached = {u: await scores(system, u, items) for u in ("ann", "bob", "cy")}
    seen = {u: system.model.users.seen(u) for u in ("ann", "bob", "cy")}
    await system.stop(drain=False)  # no snapshot: the restart replays the whole journal
    async with System(config) as again:
        assert again.statistics()["snapshots"]["replayed_records"] == 3
        assert {u: again.model.users.seen(u) for u in seen} == seen
        assert {u: await scores(again, u, items) for u in reached} == reached


class NoItemsToWaitFor:
    async def wait_for(self, upto: list[int]) -> None:
        return None


async def test_a_cluster_ranker_follows_the_seen_and_negatives_of_each_type() -> None:
    """Cluster ingest publishes the batch :func:`batch_from_events` makes of the typed
    events; a ranker's (and a restarted trainer's) :class:`HistoryFollower` learns the
    users' seen items and the item-to-item statistics from it as the trainer does."""
    model = build_model(Config())
    history = HistoryFollower(model, NoItemsToWaitFor())  # type: ignore[arg-type]
    events = [*ITEMS, {"user": "ann", "item": "i0"}, {"user": "ann", "item": "i1"}]
    events += [{"user": "ann", "item": "i2", "type": "view"}]
    events += [{"user": "ann", "item": "i3", "type": "dislike"}]
    await history.apply(batch_from_events([validate_event(e) for e in events]))
    assert model.users.seen("ann") == {0, 1, 3}
    assert model.users.sequence("ann").tolist() == [0, 1, 2]
    ranker = model.ranker(exploration=False)
    assert ranker.similar("i3", 10) == []
    assert {it["item"] for it in ranker.similar("i2", 10)} == {"i0", "i1"}


async def test_a_json_lines_replay_knows_the_configured_types(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    events = [*ITEMS, *CLICKS, {"user": "ann", "item": "i5", "type": "share"}]
    events.append({"user": "ann", "item": "i6", "type": "teleport"})
    log.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    config = settings(feedback={"types": {"share": {"weight": 2.0}}})
    async with System(config) as system:
        result = await replay(system, open_log(log, "jsonl", 64, config.feedback))
        assert (result["events"], result["rejected"]) == (len(CLICKS) + 1, 1)
        assert system.model.users.seen("ann") == {0, 1, 2, 3, 5}
    default = list(open_log(log, "jsonl", 64))  # without the config: no such type
    assert sum(len(chunk.rejected) for chunk in default) == 2


async def test_the_openapi_document_lists_the_configured_types() -> None:
    config = settings(feedback={"types": {"share": {"weight": 2.0}}})
    async with System(config) as system:
        async with TestClient(TestServer(make_app(system), host="127.0.0.1", port=0)) as client:
            resp = await client.get("/v1/openapi.json")
            document = await resp.json()
    schemas = document["components"]["schemas"]
    assert schemas["Interaction"]["properties"]["type"] == {
        "$ref": "#/components/schemas/FeedbackType"
    }
    assert schemas["FeedbackType"]["enum"] == [
        "click", "dislike", "like", "purchase", "share", "skip", "view"
    ]  # fmt: skip
    assert "share: label 1, weight 2, seen" in schemas["FeedbackType"]["description"]


async def test_the_client_sends_typed_events(http: tuple[TestClient, System, Path]) -> None:
    client = http[0]
    async with AsyncClient(str(client.make_url("")).rstrip("/")) as freshrank:
        result = await freshrank.ingest(
            [
                {"user": "bob", "item": "i6", "type": "skip"},
                {"user": "bob", "item": "i7", "type": ""},
            ]
        )
        assert (result["accepted"], result["rejected"]) == (1, 1)
        assert "'' is not one of click" in result["errors"][0]["reason"]
        recommended = {it["item"] for it in await freshrank.recommend("bob", k=8)}
    assert recommended == {"i4", "i5", "i7"}  # the skip is seen


def test_a_version_1_event_batch_from_before_types_decodes_as_all_seen() -> None:
    """An events topic keeps the batches of the previous release: a restarted trainer or
    a new ranker reads them, without the seen column, as every item seen."""
    batch = batch_from_events([validate_event({"user": "u", "item": "i", "type": "view"})])
    kind, version, fields = decode(encode_message(batch))
    assert version == 2 and fields.pop("seen").tolist() == [False]
    older = decode_message(encode([kind, 1, fields]))
    assert isinstance(older, EventBatch) and seen_flags(older) == [True]
