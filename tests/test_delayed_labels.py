"""Delayed labels: impressions joined with later clicks (actors/delayed.py, System.ingest)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.batching import batch_from_events, take_events
from actors.delayed import COUNTERS, DelayedLabelJoiner, Resolved
from actors.events import Event, EventLimits, InvalidEvent, validate_event
from actors.trainer import evaluation_rows
from runtime.codec import decode, decode_message, encode, encode_message
from runtime.config import Config, ConfigError
from runtime.http import make_app
from runtime.labels import LabelStage
from runtime.messages import NOT_EVALUATED, EventBatch
from runtime.system import System


def validate(obj: Any) -> Event:
    """Validation as System.ingest does it: impressions and clicks allowed."""
    return validate_event(obj, EventLimits(delayed_labels=True))


class FakeClock:
    """Wall time the test moves by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def impression(key: str, ts: float | None = None, user: str = "u", item: str = "i") -> Event:
    obj: dict[str, Any] = {"event": "impression", "impression_id": key, "user": user, "item": item}
    if ts is not None:
        obj["ts"] = ts
    return validate(obj)


def click(key: str, ts: float | None = None, kind: str = "click", **ids: str) -> Event:
    obj: dict[str, Any] = {"event": kind, "impression_id": key, **ids}
    if ts is not None:
        obj["ts"] = ts
    return validate(obj)


def labels(records: list[Resolved]) -> list[tuple[str | None, int]]:
    return [(r.event.user, r.label) for r in records]


# --------------------------------------------------------------------------- schema


def test_impression_and_click_validate() -> None:
    shown = validate(
        {
            "event": "impression",
            "impression_id": 17,
            "user": "u1",
            "item": "i1",
            "ts": 5.0,
            "context": {"device": "mobile"},
        }
    )
    assert (shown.event, shown.impression_id, shown.is_upsert) == ("impression", "17", False)
    clicked = validate({"event": "conversion", "impression_id": "17"})
    assert (clicked.event, clicked.user, clicked.item, clicked.is_upsert) == (
        "conversion",
        None,
        "",
        False,
    )


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (
            {"event": "view", "user": "u", "item": "i", "impression_id": "a"},
            "'event' must be one of",
        ),
        ({"event": 3, "user": "u", "item": "i", "impression_id": "a"}, "'event' must be one of"),
        ({"event": "impression", "user": "u", "item": "i"}, "needs 'impression_id'"),
        ({"event": "click", "user": "u", "item": "i"}, "needs 'impression_id'"),
        ({"event": "impression", "item": "i", "impression_id": "a"}, "an impression needs 'user'"),
        ({"event": "impression", "user": "u", "impression_id": "a"}, "'item' is required"),
        ({"user": "u", "item": "i", "impression_id": "a"}, "'impression_id' needs 'event'"),
        (
            {"event": "impression", "user": "u", "item": "i", "impression_id": "a", "label": 1},
            "'label' is not allowed",
        ),
        ({"event": "click", "impression_id": "a", "label": 1}, "'label' is not allowed"),
        ({"event": "click", "impression_id": "a", "context": {"d": "m"}}, "carries no context"),
        ({"event": "conversion", "impression_id": "a", "weight": 2.0}, "carries no weight"),
        ({"event": "click", "impression_id": "x" * 257}, "'impression_id' is 257 characters"),
        ({"event": "click", "impression_id": ""}, "'impression_id' must not be empty"),
        ({"event": "click", "impression_id": ["a"]}, "'impression_id' must be a string"),
    ],
)
def test_invalid_delayed_label_events_have_a_reason(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        validate(obj)


def test_paths_without_a_joiner_reject_impressions_and_clicks() -> None:
    """File replay and cluster ingest validate with the default limits: an impression there
    is refused with a reason rather than learned as a plain implicit positive."""
    for obj in (
        {"event": "impression", "impression_id": "a", "user": "u", "item": "i"},
        {"event": "click", "impression_id": "a"},
    ):
        with pytest.raises(InvalidEvent, match="not joined on this input path"):
            validate_event(obj)


# --------------------------------------------------------------------------- joiner


def test_a_click_in_the_window_is_a_positive_and_silence_a_negative() -> None:
    joiner = DelayedLabelJoiner(window_s=10, max_pending=100)
    assert joiner.add_impression(impression("a", 0.0, user="ua"), 0.3).resolved == []
    assert joiner.add_impression(impression("b", 1.0, user="ub"), 0.6).resolved == []
    step = joiner.add_outcome(click("a", 10.0))  # exactly at the end of a's window: joins
    assert step.rejected is None
    assert [(r.event.user, r.label, r.prescore, r.outcome) for r in step.resolved] == [
        ("ua", 1, 0.3, "joined")
    ]
    assert step.resolved[0].event.event is None  # learned as a plain labelled event
    assert joiner.expire(11.0) == []  # b's window is [1, 11]: still open at 11
    closed = joiner.expire(11.5)
    assert [(r.event.user, r.label, r.prescore, r.outcome) for r in closed] == [
        ("ub", 0, 0.6, "expired")
    ]
    assert joiner.pending == 0
    stats = joiner.statistics()
    assert (stats["joined_positive"], stats["expired_negative"], stats["clicks"]) == (1, 1, 1)


def test_expiry_order_is_window_end_then_arrival() -> None:
    joiner = DelayedLabelJoiner(window_s=5, max_pending=100)
    for key, ts in (("late-shown", 3.0), ("first", 1.0), ("tie", 3.0), ("second", 2.0)):
        joiner.add_impression(impression(key, ts, user=key))
    assert [r.event.user for r in joiner.expire(100.0)] == ["first", "second", "late-shown", "tie"]


def test_an_impression_older_than_the_watermark_closes_at_once() -> None:
    joiner = DelayedLabelJoiner(window_s=5, max_pending=100)
    joiner.add_impression(impression("new", 100.0))
    step = joiner.add_impression(impression("old", 10.0, user="old"))
    assert labels(step.resolved) == [("old", 0)]


@pytest.mark.parametrize("policy", ["ignore", "positive", "dead_letter"])
def test_late_clicks_follow_the_policy(policy: str) -> None:
    joiner = DelayedLabelJoiner(window_s=10, max_pending=100, late_policy=policy)
    joiner.add_impression(impression("a", 0.0, user="ua"), 0.25)
    step = joiner.add_outcome(click("a", 30.0))
    assert labels(step.resolved[:1]) == [("ua", 0)]  # the click's time closes the window first
    assert step.resolved[0].prescore == 0.25
    corrections = step.resolved[1:]
    if policy == "positive":
        assert [(r.label, r.prescore, r.outcome) for r in corrections] == [
            (1, NOT_EVALUATED, "late")
        ]
    else:
        assert corrections == []
    assert (step.rejected is not None) == (policy == "dead_letter")
    again = joiner.add_outcome(click("a", 31.0))
    assert again.resolved == [] and again.rejected is not None and "duplicate" in again.rejected
    counters = joiner.statistics()
    assert counters["late"] == 1 and counters["duplicate_click"] == 1
    assert counters["late_corrections"] == (1 if policy == "positive" else 0)


def test_duplicates_unknown_ids_and_mismatches_are_refused_with_reasons() -> None:
    joiner = DelayedLabelJoiner(window_s=10, max_pending=100)
    joiner.add_impression(impression("a", 0.0, user="ua", item="ia"))
    duplicate = joiner.add_impression(impression("a", 1.0, user="ua", item="ia"))
    assert duplicate.rejected is not None and "duplicate impression_id 'a'" in duplicate.rejected
    wrong_user = joiner.add_outcome(click("a", 2.0, user="someone-else"))
    assert wrong_user.rejected is not None and "user 'someone-else'" in wrong_user.rejected
    wrong_item = joiner.add_outcome(click("a", 2.0, item="ib"))
    assert wrong_item.rejected is not None and "item 'ib'" in wrong_item.rejected
    assert joiner.pending == 1  # a mismatched click leaves the impression waiting
    joined = joiner.add_outcome(click("a", 3.0, kind="conversion", user="ua", item="ia"))
    assert labels(joined.resolved) == [("ua", 1)]
    twice = joiner.add_outcome(click("a", 4.0))
    assert twice.rejected is not None and "duplicate click" in twice.rejected
    unknown = joiner.add_outcome(click("nope", 4.0))
    assert unknown.rejected is not None and "unknown impression_id 'nope'" in unknown.rejected
    reshown = joiner.add_impression(impression("a", 5.0, user="ua", item="ia"))
    assert reshown.rejected is not None  # a resolved id is still remembered
    counters = joiner.statistics()
    assert counters["duplicate_impression"] == 2
    assert counters["mismatched_click"] == 2
    assert counters["duplicate_click"] == 1 and counters["unknown_click"] == 1
    assert counters["conversions"] == 1 and counters["clicks"] == 4


def test_full_memory_evicts_the_impression_closing_first() -> None:
    joiner = DelayedLabelJoiner(window_s=100, max_pending=2, late_policy="positive")
    joiner.add_impression(impression("b", 2.0, user="b"))
    joiner.add_impression(impression("a", 1.0, user="a"))
    step = joiner.add_impression(impression("c", 3.0, user="c"))
    assert [(r.event.user, r.label, r.outcome) for r in step.resolved] == [("a", 0, "evicted")]
    assert joiner.pending == 2
    late = joiner.add_outcome(click("a", 4.0))  # in its window, but it was resolved early
    assert [(r.label, r.outcome) for r in late.resolved] == [(1, "late")]
    assert joiner.statistics()["evicted"] == 1


def test_events_without_ts_use_the_clock_and_idle_time_closes_windows() -> None:
    clock = FakeClock(1000.0)
    joiner = DelayedLabelJoiner(window_s=60, max_pending=10, clock=clock)
    joiner.add_impression(impression("a"))
    clock.now = 1030.0
    assert joiner.expire(joiner.stream_time()) == []
    clock.now = 1061.0
    assert labels(joiner.expire(joiner.stream_time())) == [("u", 0)]
    with pytest.raises(ValueError, match="clock"):
        DelayedLabelJoiner(window_s=1, max_pending=1).add_impression(impression("x"))


def test_state_round_trips_and_the_joiner_goes_on() -> None:
    joiner = DelayedLabelJoiner(window_s=10, max_pending=10, late_policy="positive")
    event = validate(
        {
            "event": "impression",
            "impression_id": "a",
            "user": "u1",
            "item": "i1",
            "ts": 1.0,
            "weight": 2.0,
            "user_features": {"age": "25-34", "score": 0.5},
            "item_features": {"genre": ["war", "drama"]},
        }
    )
    joiner.add_impression(event, 0.125)
    joiner.add_impression(impression("b", 2.0))
    joiner.add_outcome(click("b", 3.0))
    joiner.add_impression(impression("c", 3.0))
    joiner.expire(13.5)  # closes c's window [3, 13]; a's [1, 11] closed too
    joiner.add_impression(impression("d", 13.5))
    restored = DelayedLabelJoiner(window_s=10, max_pending=10, late_policy="positive")
    state = decode(encode(joiner.to_state()))
    assert isinstance(state, dict)
    restored.load_state(state)
    assert restored.statistics() == joiner.statistics()
    for replica in (joiner, restored):
        late = replica.add_outcome(click("a", 14.0))
        assert [(r.event, r.label) for r in late.resolved] == [
            (Event(**{**event.__dict__, "label": 1, "event": None, "impression_id": None}), 1)
        ]
        (joined,) = replica.add_outcome(click("d", 14.0)).resolved
        assert joined.label == 1 and math.isnan(joined.prescore)  # none was given
        assert replica.add_outcome(click("b", 14.0)).rejected is not None
    assert restored.statistics() == joiner.statistics()


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int, float]]:
    """(kind, impression number, time step): impressions, clicks (also for ids never shown,
    and repeated), conversions and expiry calls, with times that sometimes go backwards."""
    kinds = st.sampled_from(["impression", "impression", "click", "conversion", "expire"])
    step = st.floats(min_value=-3.0, max_value=6.0, allow_nan=False)
    return draw(st.lists(st.tuples(kinds, st.integers(0, 30), step), max_size=120))


@settings(max_examples=150, deadline=None)
@given(
    ops=operations(),
    window=st.floats(min_value=0.0, max_value=15.0),
    max_pending=st.integers(1, 8),
    policy=st.sampled_from(["ignore", "positive", "dead_letter"]),
)
def test_every_impression_resolves_exactly_once(
    ops: list[tuple[str, int, float]], window: float, max_pending: int, policy: str
) -> None:
    joiner = DelayedLabelJoiner(window, max_pending, policy)
    now = 0.0
    shown: dict[str, int] = {}  # impression id -> times accepted (a forgotten id is new again)
    first: dict[str, int] = {}  # impression id -> times resolved (corrections apart)
    learned = {0: 0, 1: 0}  # label -> impressions resolved with it
    outcomes = 0

    def record(records: list[Resolved]) -> None:
        for r in records:
            assert r.event.impression_id is None and r.event.event is None
            key = f"{r.event.user}"
            if r.outcome == "late":
                assert r.label == 1 and r.prescore == NOT_EVALUATED and policy == "positive"
                continue
            first[key] = first.get(key, 0) + 1
            assert r.label == (1 if r.outcome == "joined" else 0)
            assert r.prescore == float(key[1:])  # the prescore given at impression time
            learned[r.label] += 1

    for kind, number, dt in ops:
        now += dt
        key = f"k{number}"
        if kind == "impression":
            step = joiner.add_impression(impression(key, now, user=key), float(number))
            if step.rejected is None:
                shown[key] = shown.get(key, 0) + 1
            else:
                assert key in shown
        elif kind == "expire":
            record(joiner.expire(now))
            continue
        else:
            outcomes += 1
            step = joiner.add_outcome(click(key, now, kind=kind))
            if key not in shown:
                assert step.rejected is not None and "unknown" in step.rejected
        record(step.resolved)
        assert joiner.pending <= max_pending
        assert len(joiner.to_state()["closed"]) <= max_pending
    record(joiner.expire(math.inf))
    counters = joiner.statistics()
    assert joiner.pending == 0
    assert first == shown  # each accepted impression resolved exactly once
    assert counters["impressions"] == sum(shown.values())
    assert counters["impressions"] == (
        counters["joined_positive"] + counters["expired_negative"] + counters["evicted"]
    )
    assert counters["joined_positive"] == learned[1]
    assert counters["expired_negative"] + counters["evicted"] == learned[0]
    assert (
        counters["clicks"] + counters["conversions"]
        == outcomes
        == sum(
            counters[name]
            for name in ("joined_positive", "late", "duplicate_click", "unknown_click")
        )
    )
    assert set(counters) >= set(COUNTERS)


# --------------------------------------------------------------------------- messages and metrics


def test_prescores_travel_on_batches_and_old_messages_still_decode() -> None:
    events = [impression("a", 1.0, user="u1"), impression("b", 2.0, user="u2")]
    batch = batch_from_events(events, prescore=[0.25, math.nan])
    back = decode_message(encode_message(batch))
    assert isinstance(back, EventBatch)
    np.testing.assert_array_equal(back.prescore, [0.25, math.nan])
    np.testing.assert_array_equal(take_events(back, np.array([1, 0])).prescore, [math.nan, 0.25])
    wire = decode(encode_message(batch))
    assert isinstance(wire, list)
    kind, version, fields = wire
    del fields["prescore"]  # a message from before the column existed
    old = decode_message(encode([kind, version, fields]))
    assert isinstance(old, EventBatch) and old.prescore.size == 0
    assert take_events(old, np.array([0])).prescore.size == 0
    with pytest.raises(ValueError, match="prescores"):
        batch_from_events(events, prescore=[0.5])


def test_metrics_use_prescores_where_given() -> None:
    probs = np.array([0.9, 0.8, 0.7, 0.6])
    explicit = np.array([True, True, True, False])
    origin = np.arange(4)
    scores, evaluated = evaluation_rows(np.zeros(0), origin, probs, explicit)
    assert scores is probs and evaluated is explicit
    prescore = np.array([0.1, math.nan, NOT_EVALUATED, 0.2])
    scores, evaluated = evaluation_rows(prescore, origin, probs, explicit)
    np.testing.assert_array_equal(scores[[0, 1, 3]], [0.1, 0.8, 0.2])
    np.testing.assert_array_equal(evaluated, [True, True, False, False])


def test_labels_config_is_checked() -> None:
    assert Config().labels.window_s == 600.0 and Config().labels.late == "ignore"
    custom = Config.from_dict({"labels": {"window_s": 30, "max_pending": 5, "late": "positive"}})
    assert (custom.labels.window_s, custom.labels.max_pending) == (30.0, 5)
    for bad in ({"late": "maybe"}, {"max_pending": 0}, {"window_s": -1.0}):
        with pytest.raises(ConfigError, match="labels"):
            Config.from_dict({"labels": bad})


# --------------------------------------------------------------------------- System end to end


def labelled_config(tmp_path: Path, model: dict[str, Any] | None = None, **labels: Any) -> Config:
    return Config.from_dict(
        {
            "model": model or {},
            "state": {"restore": False, "snapshot_path": str(tmp_path / "snapshot.msgpack")},
            "ingest": {"dead_letter_path": str(tmp_path / "dlq.jsonl")},
            "training": {"rank_eval_every": 0},
            "labels": {"window_s": 10.0, **labels},
        }
    )


def shown(key: str, ts: float, user: str, item: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": "impression",
        "impression_id": key,
        "user": user,
        "item": item,
        "ts": ts,
        **extra,
    }


def clicked(key: str, ts: float, **extra: Any) -> dict[str, Any]:
    return {"event": "click", "impression_id": key, "ts": ts, **extra}


async def test_system_learns_clicked_impressions_as_positives_and_the_rest_as_negatives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prescores = {"u0": 0.2, "u1": 0.3, "u2": 0.4, "u3": 0.6, "u4": 0.7, "u5": 0.8}
    # a fixed prediction per user at impression time: the metrics must use exactly these
    monkeypatch.setattr(
        LabelStage, "prescores", lambda self, events: [prescores[e.user] for e in events]
    )
    clock = FakeClock(5000.0)
    async with System(labelled_config(tmp_path), clock=clock) as system:
        impressions = [
            shown(f"imp{n}", 100.0 + n, f"u{n}", f"i{n % 3}", item_features={"genre": "war"})
            for n in range(6)
        ]
        result = await system.ingest(impressions)
        assert (result.accepted, result.rejected) == (6, 0)
        assert system.catalog.rows.keys() == {"i0", "i1", "i2"}  # catalogued when first shown
        assert system.statistics()["metrics"] == {}  # nothing has a label yet
        result = await system.ingest(
            [
                clicked("imp0", 104.0),
                clicked("imp3", 107.0, user="u3"),
                clicked("imp3", 108.0),  # a double click
                clicked("imp4", 109.0, user="not-u4"),  # a click naming another user
                clicked("nope", 109.0),
            ]
        )
        assert result.accepted == 2 and result.rejected == 3
        assert [e["index"] for e in result.errors] == [2, 3, 4]
        stats = system.statistics()
        assert stats["metrics"]["labelled"] == 2  # the clicked ones, learned at click time
        assert stats["labels"]["pending"] == 4
        # u1's window [101, 111] closes once stream time passes 111
        result = await system.ingest([clicked("imp1", 112.0)])
        assert result.accepted == 1 and result.rejected == 0  # late: counted, ignored
        await system.drain()
        stats = system.statistics()
        labels = stats["labels"]
        assert labels["late"] == 1 and labels["joined_positive"] == 2
        # u2's window [102, 112] is still open at 112, like u4's and u5's
        assert labels["expired_negative"] == 1 and labels["pending"] == 3
        assert labels["duplicate_click"] == 1 and labels["mismatched_click"] == 1
        assert labels["unknown_click"] == 1
        await system.flush_labels()  # no time has passed: nothing more closes
        assert system.statistics()["labels"]["pending"] == 3
        clock.now += 20.0  # no traffic for 20 s: windows close anyway
        await system.flush_labels()
        await system.drain()
        stats = system.statistics()
        assert stats["labels"]["pending"] == 0 and stats["labels"]["expired_negative"] == 4
        assert stats["metrics"]["labelled"] == 6  # once per impression
        assert stats["trainer"]["events"] == 6
        positives = {"u0", "u3"}
        expected = np.mean(
            [-math.log(p if u in positives else 1.0 - p) for u, p in prescores.items()]
        )
        assert stats["metrics"]["logloss"] == pytest.approx(expected)
        pairs = [
            (prescores[p] > prescores[n]) + 0.5 * (prescores[p] == prescores[n])
            for p in positives
            for n in prescores.keys() - positives
        ]
        assert stats["metrics"]["auc"] == pytest.approx(np.mean(pairs))
        assert stats["dead_letters"]["records"] == 3
        assert set(stats["dead_letters"]["by_reason"]) == {
            "duplicate click for impression_id",
            "click for impression_id",
            "click for unknown impression_id",
        }


@pytest.mark.parametrize(
    "model",
    [{"factors": 0, "history": 0}, {"factors": 0, "history": 3}, {"factors": 4, "history": 3}],
    ids=["linear", "history", "factors"],
)
async def test_the_prescore_is_the_prediction_the_trainer_would_make(
    tmp_path: Path, model: dict[str, Any]
) -> None:
    """The probability stored with an impression is the one the trainer computes when it
    learns the same event as a plain labelled one at that point of the stream."""
    history = [
        {
            "user": f"u{n % 4}",
            "item": f"i{n % 5}",
            "label": n % 2,
            "ts": float(n),
            "user_features": {"age": ["a", "b"][n % 2]},
            "item_features": {"genre": ["war", "drama", "comedy"][n % 3]},
            "context": {"hour": n % 24},
        }
        for n in range(60)
    ]
    probe = {"user": "u1", "item": "i3", "ts": 100.0, "user_features": {"age": "b"}}
    probe["context"] = {"hour": 7}
    async with System(labelled_config(tmp_path / "plain", model=model)) as plain:
        await plain.ingest(history)
        before = plain.statistics()["metrics"]
        await plain.ingest([{**probe, "label": 0}])
        after = plain.statistics()["metrics"]
    # the probe's own logloss, -log(1 - p), from the running means before and after it
    probe_loss = after["logloss"] * after["labelled"] - before["logloss"] * before["labelled"]
    trainer_p = 1.0 - math.exp(-probe_loss)
    # the model has learned (u1 always clicked: the factor terms, learned per event, take
    # it near 1), and not to exactly 0 or 1, where the comparison below would be empty
    assert 0.05 < trainer_p < 0.9999 and trainer_p != pytest.approx(0.5)

    async with System(labelled_config(tmp_path / "delayed", model=model)) as delayed:
        await delayed.ingest(history)
        await delayed.ingest([{"event": "impression", "impression_id": "p", **probe}])
        ((_, prescore, _, _),) = delayed.labels.to_state()["open"]
        assert prescore == pytest.approx(trainer_p, rel=1e-9)
        await delayed.ingest(history[:10])  # learning more changes the weights, not the prescore
        await delayed.flush_labels(now=1000.0)
        await delayed.drain()
        metrics = delayed.statistics()["metrics"]
        assert metrics["labelled"] == 71


async def test_windows_close_without_traffic(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    async with System(labelled_config(tmp_path, window_s=0.5), clock=clock) as system:
        await system.ingest([shown("a", 100.0, "ua", "i1")])
        assert system.label_stage.timer is not None and not system.label_stage.timer.done()
        clock.now = 1.0  # idle for longer than the window and the timer's tick (0.05 s)

        # the next batch is the timer's: the impression, learned as a negative
        await asyncio.wait_for(system.wait_learned(system.model.stream.seq + 1), timeout=30)
        stats = system.statistics()
        assert stats["labels"]["expired_negative"] == 1 and stats["metrics"]["labelled"] == 1
        timer = system.label_stage.timer
    assert timer.done() and system.label_stage.timer is None  # stopped with the system


async def test_pending_impressions_survive_a_clean_stop_in_the_snapshot(tmp_path: Path) -> None:
    config = labelled_config(tmp_path, late="positive")
    clock = FakeClock(0.0)
    system = System(config, clock=clock)
    await system.start()
    await system.ingest([shown("a", 10.0, "ua", "i1"), shown("b", 11.0, "ub", "i2")])
    await system.ingest([clicked("b", 12.0)])
    await system.stop()  # a clean stop: "a" is still waiting for its click
    assert system.statistics()["labels"]["pending"] == 1
    assert system.statistics()["metrics"]["labelled"] == 1
    system.write_snapshot()

    config.state.restore = True
    restarted = System(config, clock=clock)
    async with restarted:
        before = restarted.statistics()
        assert before["labels"]["pending"] == 1 and before["labels"]["joined_positive"] == 1
        result = await restarted.ingest([clicked("a", 15.0), clicked("b", 15.0)])
        assert result.accepted == 1 and "duplicate click" in result.errors[0]["reason"]
        await restarted.drain()
        after = restarted.statistics()
        assert after["labels"]["joined_positive"] == 2 and after["labels"]["pending"] == 0
        assert after["metrics"]["labelled"] == 2  # the restored one counted once, at its click


async def test_a_late_click_with_the_positive_policy_learns_a_correction(tmp_path: Path) -> None:
    async with System(labelled_config(tmp_path, late="positive"), clock=FakeClock()) as system:
        await system.ingest([shown("a", 0.0, "ua", "i1")])
        await system.ingest([clicked("a", 50.0)])  # its window closed at 10
        await system.drain()
        stats = system.statistics()
        assert stats["labels"]["expired_negative"] == 1 and stats["labels"]["late_corrections"] == 1
        assert stats["trainer"]["events"] == 2  # the negative and the correction
        assert stats["metrics"]["labelled"] == 1  # evaluated once


async def test_late_clicks_can_go_to_the_dead_letters(tmp_path: Path) -> None:
    async with System(labelled_config(tmp_path, late="dead_letter"), clock=FakeClock()) as system:
        await system.ingest([shown("a", 0.0, "ua", "i1")])
        result = await system.ingest([clicked("a", 50.0)])
        assert result.rejected == 1 and "late click" in result.errors[0]["reason"]
        await system.drain()
        stats = system.statistics()
        assert stats["dead_letters"]["records"] == 1 and stats["labels"]["late"] == 1


async def test_impressions_and_clicks_over_http(tmp_path: Path) -> None:
    async with System(labelled_config(tmp_path), clock=FakeClock()) as system:
        server = TestServer(make_app(system), host="127.0.0.1", port=0)
        async with TestClient(server) as client:
            response = await client.post("/v1/events", json=[shown("a", 1.0, "ua", "i1")])
            assert response.status == 200
            assert (await response.json())["accepted"] == 1
            response = await client.post("/v1/events", json=[clicked("zzz", 2.0)])
            assert response.status == 422  # nothing usable: the only click has no impression
            assert "unknown impression_id" in (await response.json())["errors"][0]["reason"]
            response = await client.post("/v1/events", json=[clicked("a", 2.0)])
            assert response.status == 200
            stats = await (await client.get("/v1/stats")).json()
    assert stats["labels"]["joined_positive"] == 1 and stats["labels"]["unknown_click"] == 1
    assert stats["metrics"]["labelled"] == 1
