"""Raw request bodies for POST /v1/events, fuzzed (issue 12): JSON, NDJSON and msgpack
batches mixing good events with arbitrary values, random bytes under every content
type, deep nesting and huge numbers, against a live server on a loopback port.

For every body: never a 5xx; when a batch holds good events, each of them is accepted
(its index is not among the errors) and learned before the answer (``wait`` is on).
Afterwards the daemon is healthy and has learned at least every good interaction sent.
A fixed, derandomized example count keeps the run deterministic and well under a minute.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.codec import CodecError, encode
from tests.test_codec import nested_of
from tests.test_openapi import AUTH, LiveServer, fuzz_config

EXAMPLES = 150
MAX_EVENTS = 12  # per body, under the server's ingest.max_events_per_request (50)

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
good_events = st.fixed_dictionaries(
    {"user": ids, "item": ids},
    optional={
        "label": st.sampled_from([0, 1]),
        "ts": st.floats(min_value=1.5e9, max_value=1.7e9),
        "user_features": st.dictionaries(
            st.sampled_from(["age", "city"]), st.sampled_from(["a", "b", "c"]), max_size=2
        ),
        "item_features": st.dictionaries(
            st.sampled_from(["genre"]), st.sampled_from(["x", "y"]), max_size=1
        ),
    },
)
# anything JSON can hold, near-events included (an id of the wrong type, a huge number)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
values = nested_of(scalars, size=4, max_leaves=12)
near_events = st.fixed_dictionaries(
    {"user": values, "item": values}, optional={"label": values, "ts": values, "context": values}
)
bad_events = values | near_events


@dataclass
class Body:
    data: bytes
    content_type: str
    good: list[int]  # indices of events that are valid by construction
    kind: str


@st.composite
def mixed_batches(draw: st.DrawFn) -> Body:
    """A batch of good and arbitrary events in one of the three encodings."""
    slots = draw(st.lists(st.booleans(), min_size=1, max_size=MAX_EVENTS))
    events = [draw(good_events) if is_good else draw(bad_events) for is_good in slots]
    good = [i for i, is_good in enumerate(slots) if is_good]
    kind = draw(st.sampled_from(["json", "ndjson", "msgpack"]))
    if kind == "msgpack":
        try:
            return Body(encode(events), "application/msgpack", good, kind)
        except CodecError:  # an integer msgpack cannot hold: send the batch as JSON
            kind = "json"
    if kind == "json":
        return Body(json.dumps(events).encode(), "application/json", good, kind)
    lines = [json.dumps(e).encode() for e in events]
    return Body(b"\n".join(lines) + b"\n", "application/x-ndjson", good, kind)


CONTENT_TYPES = [
    "application/json",
    "application/x-ndjson",
    "application/msgpack",
    "text/plain",
    "",
    "image/png",
]


@st.composite
def hostile_bodies(draw: st.DrawFn) -> Body:
    """Bodies no client should send: random bytes, deep nesting, huge numbers, cut text."""
    kind = draw(st.sampled_from(["bytes", "deep", "huge", "cut"]))
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    if kind == "bytes":
        data = draw(st.binary(min_size=1, max_size=300))
    elif kind == "deep":
        depth = draw(st.integers(min_value=500, max_value=20_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * depth + "1" + closer * depth
        data = ('[{"user": "u", "item": "i", "context": {"x": ' + inner + "}}]").encode()
    elif kind == "huge":
        number = draw(st.sampled_from(["1e999", "-1e999", "9" * 5000, "1" + "0" * 400, "NaN"]))
        data = f'[{{"user": "u", "item": "i", "ts": {number}, "weight": {number}}}]'.encode()
    else:
        text = json.dumps([{"user": "u", "item": "i", "label": 1}] * 3)
        data = text[: draw(st.integers(min_value=1, max_value=len(text) - 1))].encode()
    return Body(data, ctype, [], kind)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(fuzz_config(tmp_path_factory.mktemp("fuzz-bodies"))) as server:
        yield server


def post(url: str, body: Body) -> tuple[int, Any]:
    headers = {**AUTH, "Content-Type": body.content_type} if body.content_type else dict(AUTH)
    request = urllib.request.Request(f"{url}/v1/events", body.data, headers, method="POST")
    if not body.content_type:  # urllib would add application/x-www-form-urlencoded
        request.add_unredirected_header("Content-Type", "")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


SENT_GOOD = {"interactions": 0}


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=mixed_batches() | hostile_bodies())
def test_no_body_gets_a_5xx_and_good_events_are_learned(live: LiveServer, body: Body) -> None:
    status, answer = post(live.url, body)
    assert status < 500, (body.kind, status, answer)
    assert (isinstance(answer, dict) and "error" in answer) or "accepted" in answer, answer
    if not body.good:
        return
    assert status == 200, (body.kind, status, answer)
    refused = {error["index"] for error in answer["errors"]}
    assert not refused & set(body.good), (body.kind, answer["errors"])
    assert answer["accepted"] >= len(body.good) and answer["learned"] is True
    SENT_GOOD["interactions"] += len(body.good)


def test_the_daemon_is_healthy_and_learned_every_good_event(live: LiveServer) -> None:
    """After the fuzzing (this test runs after the one above, in file order)."""
    with urllib.request.urlopen(f"{live.url}/v1/healthz", timeout=30) as resp:
        assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
    request = urllib.request.Request(f"{live.url}/v1/stats", headers=AUTH)
    with urllib.request.urlopen(request, timeout=30) as resp:
        stats = json.loads(resp.read())
    assert stats["failed"] is None
    assert SENT_GOOD["interactions"] > EXAMPLES // 4  # the fuzzer sent good events at all
    # the 40 clicks LiveServer learns at start, every good interaction since, and any
    # arbitrary value that happened to be a valid event
    assert stats["trainer"]["events"] >= 40 + SENT_GOOD["interactions"]
    good = {"user": "after", "item": f"i{random.Random(0).randrange(10**6)}", "label": 1}
    status, answer = post(live.url, Body(json.dumps([good]).encode(), "application/json", [0], "x"))
    assert status == 200 and answer["accepted"] == 1
