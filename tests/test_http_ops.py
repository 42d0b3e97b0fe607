"""Operating the HTTP API: Prometheus metrics, request ids and JSON logs, bearer-token
auth, and limits on requests, bodies and slow or idle clients (real loopback sockets)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from runtime.cli import main
from runtime.cluster import ClusterFront, run_ranker
from runtime.config import Config, ConfigError, HTTPConfig
from runtime.http import make_app
from runtime.http_middleware import SETTINGS_KEY, check_exposure, is_loopback
from runtime.logs import REDACTED, make_handler, request_id_from
from runtime.prometheus import ReasonClasses, reason_class
from runtime.system import System

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-tests-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
JSON = "application/json"
ITEMS = [{"item": f"m{n}", "item_features": {"genre": f"g{n % 2}"}} for n in range(5)]
CLICKS = [{"user": f"u{n}", "item": f"m{n % 5}", "label": n % 2} for n in range(12)]


@pytest.fixture(autouse=True)
def no_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's $FRESHRANK_TOKEN must not change what these tests see."""
    monkeypatch.delenv("FRESHRANK_TOKEN", raising=False)


# --------------------------------------------------------------------------- harness


@dataclass
class Harness:
    system: System
    app: web.Application
    server: TestServer
    client: TestClient

    def stats(self) -> dict[str, Any]:
        return self.system.statistics()

    async def post(self, events: Any, headers: dict[str, str] | None = None) -> Any:
        body = events if isinstance(events, bytes) else json.dumps(events).encode()
        return await self.client.post(
            "/v1/events", data=body, headers={"Content-Type": JSON, **(headers or {})}
        )

    async def scrape(self, headers: dict[str, str] | None = None) -> dict[str, float]:
        resp = await self.client.get("/metrics", headers=headers)
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        return samples(await resp.text())


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """``await start(section=dict(...), routes=...)``: a System behind a loopback server."""
    async with AsyncExitStack() as stack:

        async def _start(
            routes: Callable[[web.Application], None] | None = None, **sections: Any
        ) -> Harness:
            config: dict[str, Any] = {
                "state": {"restore": False, "snapshot_path": ""},
                "ingest": {"dead_letter_path": str(tmp_path / "dlq.jsonl")},
                "model": {"bits": 14},
            }
            for name, values in sections.items():
                config[name] = {**config.get(name, {}), **values}
            system = await stack.enter_async_context(System(Config.from_dict(config)))
            app = make_app(system)
            if routes is not None:
                routes(app)
            server = TestServer(app, host="127.0.0.1", port=0)
            client = await stack.enter_async_context(TestClient(server))
            return Harness(system, app, server, client)

        yield _start


def samples(text: str) -> dict[str, float]:
    """Every sample as ``name{label="value",...}`` (labels sorted) → value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def total(scraped: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in scraped.items()
        if key.startswith(name + "{") and all(w in key for w in wanted)
    )


def label_values(scraped: dict[str, float], name: str, label: str) -> set[str]:
    out = set()
    for key in scraped:
        if key.startswith(name + "{") and f'{label}="' in key:
            out.add(key.split(f'{label}="', 1)[1].split('"', 1)[0])
    return out


# --------------------------------------------------------------------------- metrics


async def test_metrics_after_good_and_bad_events(start: Start) -> None:
    h = await start(training={"shards": 2})
    assert (await h.post(ITEMS)).status == 200
    assert (await h.post(CLICKS)).status == 200
    mixed = [
        {"user": "a", "item": "m1"},
        {"user": "b", "item": "m2", "label": 1},
        {"user": "c", "item": "m3", "bogus": 1},  # unknown field
        {"user": "d", "item": "m4", "label": 7},  # bad label
        {"user": "e", "item": ""},  # empty id
    ]
    resp = await h.post(mixed)
    assert resp.status == 200 and (await resp.json())["rejected"] == 3
    assert (await h.post(b"[{broken")).status == 400  # unparsable: one dead letter
    assert (await h.post([{"foo": 1}])).status == 422  # unknown field, nothing accepted
    for user in ("u1", "someone"):
        assert (await h.client.get("/v1/recommend", params={"user": user})).status == 200
    await h.system.drain()

    scraped = await h.scrape()
    stats = h.stats()
    learned = len(CLICKS) + 2
    assert stats["trainer"]["events"] == learned
    assert scraped["freshrank_learned_events_total{}"] == learned
    assert scraped["freshrank_learned_batches_total{}"] == stats["trainer"]["batches"]
    assert scraped["freshrank_catalog_items{}"] == stats["catalog_items"] == 5
    assert scraped['freshrank_info{role="embedded"}'] == 1
    assert scraped["freshrank_failed{}"] == 0
    # dead letters by reason class: they add up to the sink's count
    assert stats["dead_letters"]["records"] == 5
    assert total(scraped, "freshrank_dead_letters_total") == 5
    assert scraped['freshrank_dead_letters_total{reason="malformed"}'] == 1
    assert scraped['freshrank_dead_letters_total{reason="unknown_field"}'] == 2
    assert label_values(scraped, "freshrank_dead_letters_total", "reason") <= KNOWN_CLASSES
    # what the HTTP layer counted
    accepted, rejected = len(ITEMS) + len(CLICKS) + 2, 3 + 1
    assert scraped['freshrank_ingest_events_total{outcome="accepted"}'] == accepted
    assert scraped['freshrank_ingest_events_total{outcome="rejected"}'] == rejected
    assert scraped["freshrank_ingest_request_events_count{}"] == 4  # bodies that parsed
    assert scraped["freshrank_ingest_request_events_sum{}"] == accepted + rejected
    events = 'freshrank_http_request_duration_seconds_count{method="POST",route="/v1/events",'
    assert scraped[events + 'status="200"}'] == 3
    assert scraped[events + 'status="400"}'] == 1
    assert scraped[events + 'status="422"}'] == 1
    assert scraped["freshrank_recommend_duration_seconds_count{}"] == 2
    # per shard and per queue
    updates = [learner["updates"] for learner in stats["learners"]]
    assert scraped['freshrank_shard_updates_total{shard="0"}'] == updates[0]
    assert scraped['freshrank_shard_updates_total{shard="1"}'] == updates[1]
    assert sum(updates) > 0
    assert total(scraped, "freshrank_shard_nonzero_weights") > 0
    queues = label_values(scraped, "freshrank_queue_depth", "queue")
    assert {"events", "features", "grads.0", "grads.1", "dead_letters"} <= queues
    assert scraped['freshrank_queue_depth{queue="events"}'] == 0
    # progressive validation, as /v1/stats reports it
    logloss = scraped['freshrank_progressive_logloss{model="freshrank"}']
    assert logloss == pytest.approx(stats["metrics"]["logloss"])
    labelled = stats["metrics"]["labelled"]
    assert scraped["freshrank_progressive_labelled_events_total{}"] == labelled == learned - 1


KNOWN_CLASSES = {
    "malformed", "too_large", "not_finite", "unknown_field", "missing_field", "invalid_value",
    "other", *(f"invalid_{field}" for field in (
        "user", "item", "ts", "label", "weight", "type", "event", "impression_id",
        "user_features", "item_features", "context")),
}  # fmt: skip


async def test_two_apps_in_one_process_keep_their_own_metrics(start: Start) -> None:
    first, second = await start(), await start()
    assert (await first.post(CLICKS[:3])).status == 200
    assert (await second.post(CLICKS)).status == 200
    one, two = await first.scrape(), await second.scrape()
    assert one["freshrank_learned_events_total{}"] == 3
    assert two["freshrank_learned_events_total{}"] == len(CLICKS)
    assert one['freshrank_ingest_events_total{outcome="accepted"}'] == 3


def test_reason_classes_are_few_and_add_up() -> None:
    assert reason_class("body is not valid JSON: Expecting value") == "malformed"
    assert reason_class("'label") == "invalid_label"  # the sink's short form of a reason
    assert reason_class("context.x-client-chosen-name is 2000 characters long") == "too_large"
    assert reason_class("something new and unforeseen") == "other"
    classes = ReasonClasses()
    by_reason = {f"'{name}' must be ... {n}": n + 1 for n, name in enumerate("abcdefghij")}
    first = classes.counts(by_reason, total=100)
    assert set(first) == {"invalid_value", "other"}
    assert sum(first.values()) == 100
    # a reason that drops out of the sink's listing keeps its count (counters never go back)
    del by_reason["'a' must be ... 0"]
    later = classes.counts(by_reason, total=120)
    assert later["invalid_value"] == first["invalid_value"]
    assert sum(later.values()) == 120


# --------------------------------------------------------------------------- auth


async def test_every_endpoint_but_healthz_needs_the_token(start: Start) -> None:
    h = await start(http={"token": TOKEN})
    for method, path in [
        ("GET", "/v1/stats"),
        ("GET", "/v1/recommend?user=u"),
        ("GET", "/metrics"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/"),
        ("GET", "/v1/dashboard/series"),
        ("POST", "/v1/events"),
        ("GET", "/no/such/route"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abc"},
                        {"Authorization": f"Basic {TOKEN}"}):  # fmt: skip
            resp = await h.client.request(method, path, headers=headers)
            assert resp.status == 401, (method, path, headers)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "error" in await resp.json()
    assert (await h.client.get("/v1/healthz")).status == 200
    assert (await h.client.get("/v1/stats", headers=BEARER)).status == 200
    assert (await h.client.get("/", headers=BEARER)).status == 200


async def test_nothing_is_ingested_without_the_token(start: Start) -> None:
    h = await start(http={"token": TOKEN})
    wrong = {"Authorization": "Bearer not-the-token-0123456789"}
    for headers in ({}, wrong):
        assert (await h.post(CLICKS, headers)).status == 401
        assert (await h.post(b"[{broken", headers)).status == 401
    await h.system.drain()
    stats = h.stats()
    assert (stats["seq"], stats["trainer"]["events"], stats["dead_letters"]["records"]) == (
        -1,
        0,
        0,
    )
    resp = await h.post(CLICKS, BEARER)
    assert resp.status == 200
    assert h.stats()["trainer"]["events"] == len(CLICKS)


async def test_the_cookie_works_for_reads_only(start: Start) -> None:
    """For the dashboard in a browser; a POST by cookie would be a CSRF hole."""
    h = await start(http={"token": TOKEN})
    cookie = {"Cookie": f"freshrank_token={TOKEN}"}
    assert (await h.client.get("/", headers=cookie)).status == 200
    assert (await h.client.get("/v1/dashboard/series", headers=cookie)).status == 200
    assert (await h.post(CLICKS, cookie)).status == 401
    assert h.stats()["seq"] == -1
    bad = {"Cookie": "freshrank_token=guess-0123456789abcdef"}
    assert (await h.client.get("/", headers=bad)).status == 401


async def test_metrics_can_be_public(start: Start) -> None:
    h = await start(http={"token": TOKEN, "metrics_public": True})
    assert (await h.client.get("/metrics")).status == 200
    assert (await h.client.get("/v1/stats")).status == 401


async def test_token_from_a_named_variable_or_freshrank_token(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_API_TOKEN", TOKEN)
    h = await start(http={"token": "env:MY_API_TOKEN"})
    assert (await h.client.get("/v1/stats")).status == 401
    assert (await h.client.get("/v1/stats", headers=BEARER)).status == 200
    monkeypatch.setenv("FRESHRANK_TOKEN", TOKEN)
    h = await start()
    assert (await h.client.get("/v1/stats")).status == 401
    assert (await h.client.get("/v1/stats", headers=BEARER)).status == 200


def test_token_config_errors_never_show_the_token() -> None:
    with pytest.raises(ConfigError, match=r"http\.token") as error:
        Config.from_dict({"http": {"token": "short-secret"}})
    assert "short-secret" not in str(error.value)
    with pytest.raises(ConfigError, match=r"http\.token"):
        Config.from_dict({"http": {"token": "env:"}})
    with pytest.raises(ConfigError, match=r"\$NOT_SET_ANYWHERE"):
        HTTPConfig(token="env:NOT_SET_ANYWHERE").bearer_token({})
    assert TOKEN not in repr(HTTPConfig(token=TOKEN))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_need_no_token(host: str) -> None:
    assert is_loopback(host)
    assert check_exposure(HTTPConfig(host=host), {}) == ""


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "myhost.example"])
def test_other_hosts_need_a_token(host: str) -> None:
    with pytest.raises(ConfigError, match=r"http\.token"):
        check_exposure(HTTPConfig(host=host), {})
    assert check_exposure(HTTPConfig(host=host), {"FRESHRANK_TOKEN": TOKEN}) == TOKEN
    assert check_exposure(HTTPConfig(host=host, enabled=False), {}) == ""


def test_run_refuses_a_public_host_without_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "http.token" in capsys.readouterr().err


async def test_ranker_refuses_a_public_host_without_token() -> None:
    config = Config.from_dict({"http": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match=r"http\.token"):
        await run_ranker(config, 0)  # refused before it connects to Kafka


# --------------------------------------------------------------------------- request ids, logs


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the daemon's JSON handler writes for the freshrank loggers (token redacted)."""
    stream = io.StringIO()
    handler = make_handler("json", secrets=[TOKEN], stream=stream)
    logger = logging.getLogger("freshrank")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_request_ids_are_kept_when_sane_else_made(start: Start) -> None:
    h = await start()
    resp = await h.client.get("/v1/healthz", headers={"X-Request-ID": "abc-123:x/y"})
    assert resp.headers["X-Request-ID"] == "abc-123:x/y"
    for insane in ("x" * 129, "has space", "naïve", ""):
        resp = await h.client.get("/v1/stats", headers={"X-Request-ID": insane})
        made = resp.headers["X-Request-ID"]
        assert made != insane and len(made) == 32 and made.isalnum()
    ids = set()
    for path in ("/v1/stats", "/nowhere", "/v1/recommend"):  # 200, 404, 400
        resp = await h.client.get(path)
        ids.add(resp.headers["X-Request-ID"])
    assert len(ids) == 3
    assert request_id_from(None) != request_id_from(None)


async def test_aiohttp_errors_are_json_with_a_reason(start: Start) -> None:
    h = await start()
    resp = await h.client.get("/nowhere")
    assert resp.status == 404
    assert "no such endpoint: /nowhere" in (await resp.json())["error"]
    resp = await h.client.put("/v1/events", data=b"[]")
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"] and "allowed: POST" in (await resp.json())["error"]


async def test_json_access_log_line_per_request(start: Start, json_log: io.StringIO) -> None:
    h = await start()
    rid = "trace-me-42"
    resp = await h.client.get("/v1/recommend?user=u1&k=3", headers={"X-Request-ID": rid})
    assert resp.status == 200
    assert (await h.client.get("/no/such")).status == 404
    lines = log_lines(json_log)
    (access,) = [line for line in lines if line.get("request_id") == rid]
    assert access["logger"] == "freshrank.access" and access["level"] == "INFO"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/v1/recommend", 200)
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] >= 0
    assert access["ts"].endswith("Z") and "user=u1" not in json.dumps(access)
    assert any(line.get("status") == 404 and line["path"] == "/no/such" for line in lines)


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError(f"cannot go on: Authorization: Bearer {TOKEN}")


async def test_a_crash_is_a_logged_500_with_the_request_id(
    start: Start, json_log: io.StringIO
) -> None:
    h = await start(routes=lambda app: app.router.add_get("/v1/boom", boom))
    resp = await h.client.get("/v1/boom", headers={"X-Request-ID": "crash-1"})
    assert resp.status == 500
    body = await resp.json()
    assert "crash-1" in body["error"] and "cannot go on" not in body["error"]
    assert resp.headers["X-Request-ID"] == "crash-1"
    errors = [line for line in log_lines(json_log) if line["level"] == "ERROR"]
    (error,) = errors
    assert error["request_id"] == "crash-1" and "RuntimeError" in error["exc"]
    assert TOKEN not in json_log.getvalue() and REDACTED in error["exc"]
    assert (await h.client.get("/v1/healthz")).status == 200  # still serving


async def test_tokens_never_reach_the_logs(
    start: Start, caplog: pytest.LogCaptureFixture, json_log: io.StringIO
) -> None:
    """Raw records (no redaction) of requests with right, wrong and cookie tokens."""
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-abcdefghijklmnop"
    h = await start(http={"token": TOKEN})
    for headers in (BEARER, {"Authorization": f"Bearer {wrong}"},
                    {"Cookie": f"freshrank_token={TOKEN}"}, {}):  # fmt: skip
        await h.client.get("/v1/stats", headers=headers)
        await h.post(CLICKS[:2], headers)
        await h.client.get("/v1/recommend", params={"user": "u"}, headers=headers)
    assert any(r.name == "freshrank.access" for r in caplog.records)
    for text in (caplog.text, json_log.getvalue()):
        assert TOKEN not in text and wrong not in text


# --------------------------------------------------------------------------- limits


async def test_recommend_limits(start: Start) -> None:
    h = await start(http={"max_k": 5, "max_candidates": 3, "max_context_keys": 2})
    await h.post(ITEMS)

    async def status(**params: str) -> tuple[int, str]:
        resp = await h.client.get("/v1/recommend", params={"user": "u", **params})
        return resp.status, (await resp.json()).get("error", "")

    assert (await status(k="5"))[0] == 200
    assert (await status(k="6"))[0] == 400
    assert (await status(candidates="m0,m1,m2"))[0] == 200
    code, reason = await status(candidates="m0,m1,m2,m3")
    assert code == 413 and "http.max_candidates" in reason
    assert (await status(context='{"a": "x", "b": 2}'))[0] == 200
    code, reason = await status(context='{"a": "x", "b": 2, "c": 3}')
    assert code == 413 and "http.max_context_keys" in reason
    # both were a 500: json.loads raises ValueError / RecursionError, not JSONDecodeError
    assert (await status(context='{"a": 1' + "0" * 5000 + "}"))[0] == 400
    assert (await status(context="[" * 1300 + "]" * 1300))[0] == 400  # URL under 8190 bytes
    assert await status(context='{"a": 1, "a": 2}') == (400, "'context': duplicate key 'a'")


async def test_body_over_the_limit_is_a_json_413(start: Start) -> None:
    h = await start(ingest={"max_body_bytes": 1000})
    resp = await h.post([{"user": "u", "item": "i", "context": {"pad": "x" * 2000}}])
    assert resp.status == 413
    assert "ingest.max_body_bytes" in (await resp.json())["error"]
    assert "X-Request-ID" in resp.headers


async def open_raw(h: Harness) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(h.server.host, h.server.port)


def slow_post_head(length: int = 50, expect: bool = True) -> bytes:
    lines = [
        "POST /v1/events HTTP/1.1",
        "Host: test",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *(["Expect: 100-continue"] if expect else []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await asyncio.wait_for(reader.readline(), 30)
    assert status_line, "connection closed without a response"
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def test_a_slow_body_gets_408(start: Start) -> None:
    h = await start(http={"body_timeout_s": 0.3})
    reader, writer = await open_raw(h)
    writer.write(slow_post_head(100, expect=False) + b'[{"user": "u"')  # 13 of 100 bytes
    status, headers, body = await read_response(reader)
    assert status == 408
    assert headers["connection"] == "close"
    assert "http.body_timeout_s" in json.loads(body)["error"]
    writer.close()
    assert h.stats()["seq"] == -1  # nothing of it was learned


async def test_idle_and_slow_header_connections_are_closed(start: Start) -> None:
    h = await start(http={"keepalive_timeout_s": 0.3})
    idle = await open_raw(h)
    partial = await open_raw(h)
    partial[1].write(b"POST /v1/events HTTP/1.1\r\nHost: test\r\n")  # headers never end
    for reader, writer in (idle, partial):
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the server
        writer.close()
    assert (await h.client.get("/v1/healthz")).status == 200


async def test_past_max_connections_503_then_served_again(start: Start) -> None:
    h = await start(http={"max_connections": 3, "body_timeout_s": 1.0})
    slow = [await open_raw(h) for _ in range(3)]
    for reader, writer in slow:  # each holds a request slot, waiting for its body
        writer.write(slow_post_head())
        assert (await read_response(reader))[0] == 100
    assert h.app[SETTINGS_KEY].active == 3

    resp = await h.post(CLICKS)  # a well-behaved client is told to come back
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["reason"] == "max_connections"
    extra = [await open_raw(h) for _ in range(4)]  # more raw connections: 503 at once
    for reader, writer in extra:
        writer.write(b"GET /v1/stats HTTP/1.1\r\nHost: test\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["retry-after"]) == (503, "1")
        writer.close()
    assert (await h.client.get("/v1/healthz")).status == 200  # probes are exempt
    assert (await h.client.get("/metrics")).status == 200

    for reader, writer in slow:  # the slow clients are cut off...
        assert (await read_response(reader))[0] == 408
        writer.close()
    assert h.app[SETTINGS_KEY].active == 0
    resp = await h.post(CLICKS)  # ... and the well-behaved one is served
    assert resp.status == 200, await resp.text()
    assert h.stats()["trainer"]["events"] == len(CLICKS)


def test_http_limits_are_checked() -> None:
    for key, value in [("max_connections", 0), ("body_timeout_s", 0), ("max_k", 0),
                       ("keepalive_timeout_s", -1), ("log_format", "xml")]:  # fmt: skip
        with pytest.raises(ConfigError, match=rf"http\.{key}"):
            Config.from_dict({"http": {key: value}})


# --------------------------------------------------------------------------- the daemon


async def test_daemon_with_json_logs_and_a_token(tmp_path: Path) -> None:
    env = {**os.environ, "FRESHRANK_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runtime", "run", "--port", "0", "--state", str(tmp_path),
        "--log-json", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        assert line.startswith("freshrank ready http://"), line
        url = line.split()[2]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/v1/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{url}/v1/stats") as resp:
                assert resp.status == 401
            headers = {**BEARER, "X-Request-ID": "daemon-req-1"}
            async with http.post(f"{url}/v1/events", json=CLICKS, headers=headers) as resp:
                assert resp.status == 200
            async with http.get(f"{url}/metrics", headers=BEARER) as resp:
                scraped = samples(await resp.text())
        assert scraped["freshrank_learned_events_total{}"] == len(CLICKS)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    text = err.decode()
    assert TOKEN not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    (access,) = [line for line in lines if line.get("request_id") == "daemon-req-1"]
    assert (access["method"], access["path"], access["status"]) == ("POST", "/v1/events", 200)


async def test_a_cluster_ranker_serves_the_same_api_and_metrics() -> None:
    """The ranker's front (replicas fed from Kafka) behind the same app: auth, ids, metrics
    with its role.  Not started: nothing here needs the broker."""
    config = Config.from_dict({"http": {"token": TOKEN}, "ingest": {"dead_letter_path": ""}})
    front = ClusterFront(config, 3)
    app = make_app(front)  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        assert (await client.get("/metrics")).status == 401
        resp = await client.get("/metrics", headers={**BEARER, "X-Request-ID": "r-1"})
        assert resp.status == 200 and resp.headers["X-Request-ID"] == "r-1"
        scraped = samples(await resp.text())
    assert scraped['freshrank_info{role="ranker-3"}'] == 1
    assert scraped["freshrank_weight_deltas_total{}"] == 0
    assert scraped["freshrank_catalog_items{}"] == 0
