"""Hostile bodies and clients (issue 12): each case answered as documented, the good
events of a mixed batch learned, the daemon still serving. Every test here failed on
main before its fix (a 500, a traceback or a silent last-value-wins)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from runtime import cli
from runtime.config import Config, ConfigError
from runtime.errors import BadRequest
from runtime.http import make_app
from runtime.http_middleware import METRICS_KEY, start_site
from runtime.system import System
from tests import test_bad_input
from tests.test_bad_input import (
    GOOD,
    GOOD_INTERACTIONS,
    JSON,
    NDJSON,
    Harness,
    Start,
    assert_still_serving,
)

start = test_bad_input.start  # the fixtures: a System behind a loopback server
h = test_bad_input.h

DEEP = 10_000


def deep_value(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def event_with_deep_context(depth: int = DEEP) -> str:
    return '{"user": "deep", "item": "x1", "context": {"a": ' + deep_value(depth) + "}}"


async def learned_good(h: Harness, before: int) -> None:
    assert h.stats()["trainer"]["events"] == before + GOOD_INTERACTIONS


async def test_a_body_nested_10000_deep_is_a_400_with_a_dead_letter(h: Harness) -> None:
    resp = await h.post(deep_value().encode(), JSON)
    assert resp.status == 400, await resp.text()
    assert "nested" in (await resp.json())["error"]
    assert h.dead_letters() and "nested" in h.dead_letters()[-1]["reason"]
    await assert_still_serving(h)


@pytest.mark.parametrize("where", ["middle", "first", "last"])
async def test_one_deep_event_in_a_json_array_loses_only_itself(h: Harness, where: str) -> None:
    good = [json.dumps(e) for e in GOOD]
    at = {"first": 0, "middle": 1, "last": len(good)}[where]
    parts = [*good[:at], event_with_deep_context(), *good[at:]]
    before = h.stats()["trainer"]["events"]
    resp = await h.post(("[" + ", ".join(parts) + "]").encode(), JSON)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["accepted"] == len(GOOD) and body["rejected"] == 1
    assert body["errors"][0]["index"] == at and "nested" in body["errors"][0]["reason"]
    await learned_good(h, before)
    await assert_still_serving(h)


async def test_one_deep_ndjson_line_loses_only_itself(h: Harness) -> None:
    lines = [json.dumps(GOOD[0]), event_with_deep_context(), *(json.dumps(e) for e in GOOD[1:])]
    before = h.stats()["trainer"]["events"]
    resp = await h.post(("\n".join(lines) + "\n").encode(), NDJSON)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["rejected"] == 1 and "line 2" in body["errors"][0]["reason"]
    assert "nested" in body["errors"][0]["reason"]
    await learned_good(h, before)


@pytest.mark.parametrize("content_type", [JSON, NDJSON])
async def test_a_duplicated_key_rejects_that_event_with_the_key(
    h: Harness, content_type: str
) -> None:
    twice = '{"user": "u1", "item": "a", "item": "b"}'
    good = [json.dumps(e) for e in GOOD]
    if content_type == JSON:
        body = ("[" + ", ".join([good[0], twice, *good[1:]]) + "]").encode()
    else:
        body = ("\n".join([good[0], twice, *good[1:]]) + "\n").encode()
    before = h.stats()["trainer"]["events"]
    resp = await h.post(body, content_type)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["rejected"] == 1
    assert "duplicate key 'item'" in answer["errors"][0]["reason"]
    await learned_good(h, before)


async def test_a_duplicated_key_in_a_single_event_object_is_a_422(h: Harness) -> None:
    resp = await h.post(b'{"user": "u1", "user": "u2", "item": "a"}', JSON)
    assert resp.status == 422, await resp.text()
    assert "duplicate key 'user'" in (await resp.json())["errors"][0]["reason"]


async def test_gzip_declared_on_a_plain_body_is_a_400(h: Harness) -> None:
    resp = await h.client.post(
        "/v1/events",
        data=json.dumps(GOOD).encode(),
        headers={"Content-Type": JSON, "Content-Encoding": "gzip"},
    )
    assert resp.status == 400, await resp.text()
    assert "gzip" in (await resp.json())["error"].lower()
    good = await h.client.post(
        "/v1/events",
        data=gzip.compress(json.dumps(GOOD).encode()),
        headers={"Content-Type": JSON, "Content-Encoding": "gzip"},
    )
    assert good.status == 200, await good.text()
    await assert_still_serving(h)


async def test_a_client_gone_mid_body_is_no_error_and_no_traceback(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    server = h.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    caplog.set_level(logging.INFO)
    writer.write(head.encode() + b'[{"user": "gone", ')
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    # the handler sees the reset when the loop next polls the socket: give it loop turns
    # (bounded), not wall-clock time
    counter = h.client.app[METRICS_KEY].client_disconnects
    for _ in range(10_000):
        if counter._value.get() >= 1:
            break
        await asyncio.sleep(0)
    assert counter._value.get() == 1
    await assert_still_serving(h)
    metrics = await (await h.client.get("/metrics")).text()
    assert "freshrank_http_client_disconnects_total 1.0" in metrics
    assert 'status="499"' in metrics
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    del reader


async def test_embedding_one_event_dict_and_integer_ids(h: Harness) -> None:
    system = h.system
    result = await system.ingest({"user": 7, "item": 42})
    assert (result.accepted, result.rejected) == (1, 0)
    by_int = await system.recommend(7, k=2)
    assert by_int == await system.recommend("7", k=2)
    for k in (0, -1, 2.5, True):
        with pytest.raises(BadRequest, match="k must be"):
            await system.recommend("7", k=k)  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="user must be"):
        await system.recommend(["7"], k=2)  # type: ignore[arg-type]


async def test_post_recommend_refuses_duplicated_keys(h: Harness) -> None:
    resp = await h.client.post(
        "/v1/recommend",
        data=b'{"user": "a", "user": "b", "k": 2}',
        headers={"Content-Type": JSON},
    )
    assert resp.status == 400
    assert "duplicate key 'user'" in (await resp.json())["error"]


@pytest.mark.parametrize("ts", [time.time() * 1000.0, 1e300, -5.0])
async def test_an_implausible_time_is_refused_and_moves_no_watermark(h: Harness, ts: float) -> None:
    system = h.system
    ok = await system.ingest(
        {"user": "u", "item": "i", "event": "impression", "impression_id": "p1", "ts": time.time()}
    )
    assert ok.accepted == 1
    watermark = system.model.labels.watermark
    result = await system.ingest(
        [
            {"user": "u", "item": "j", "event": "impression", "impression_id": "p2", "ts": ts},
            GOOD[0],
        ]
    )
    assert (result.accepted, result.rejected) == (1, 1)
    reason = result.errors[0]["reason"]
    assert "'ts'" in reason and ("max_ahead_s" in reason or "min_ts" in reason)
    if ts > 1e12 and ts < 1e14:
        assert "milliseconds" in reason
    assert system.model.labels.watermark == watermark
    assert h.dead_letters()[-1]["reason"] == reason


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"user": "u", "explian": "1"}, "unknown query parameter(s) 'explian'"),
        ({"user": "u", "k": "1_000"}, "ASCII digits"),
        ({"user": "u", "k": "٣"}, "ASCII digits"),
        ({"user": "u", "k": " 5 "}, "ASCII digits"),
        ({"user": "u", "candidates": ",,,"}, "names no item"),
    ],
)
async def test_strict_query_parameters(h: Harness, query: dict[str, str], reason: str) -> None:
    resp = await h.client.get("/v1/recommend", params=query)
    assert resp.status == 400, await resp.text()
    assert reason in (await resp.json())["error"]


async def test_a_repeated_query_parameter_is_a_400(h: Harness) -> None:
    resp = await h.client.get("/v1/recommend?user=a&user=b")
    assert resp.status == 400
    assert "'user' is given more than once" in (await resp.json())["error"]
    ok = await h.client.get("/v1/recommend?user=a&k=3")
    assert ok.status == 200


async def test_strict_params_off_ignores_unknown_ones(start: Start) -> None:
    relaxed = await start()
    relaxed.system.config.http.strict_params = False
    resp = await relaxed.client.get("/v1/recommend", params={"user": "u", "explian": "1"})
    assert resp.status == 200


def freshrank(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, as an operator runs it."""
    command = [sys.executable, "-m", "runtime", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_a_port_out_of_range_or_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    def run(port: str) -> subprocess.CompletedProcess[str]:
        return freshrank("run", "--port", port, "--state", str(tmp_path), cwd=tmp_path)

    for bad in ("99999", "-5", "http"):
        proc = run(bad)
        assert proc.returncode == 2 and "--port" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = run(str(taken.getsockname()[1]))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("freshrank:")]
    assert len(lines) == 1 and "address already in use" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


async def test_clients_that_send_no_body_take_no_admission_capacity(start: Start) -> None:
    h = await start(max_inflight_requests=16)
    server = h.client.server
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    idle = []
    try:
        for _ in range(200):  # far more than the 16 requests admission lets in at once
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(head)
            await writer.drain()
            idle.append((reader, writer))
        # each idle request has been handed to its handler once a later request is answered
        for _ in range(5):
            resp = await h.post(json.dumps(GOOD).encode(), JSON)
            assert resp.status == 200, await resp.text()
        assert h.stats()["admission"]["inflight_requests"] == 0
    finally:
        for _, writer in idle:
            writer.close()
    await assert_still_serving(h)


HEADER_TIMEOUT_S = 0.5
TRICKLE = b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000


async def trickle_until_closed(host: str, port: int, keep_alive_first: bool = False) -> bytes:
    """Send request headers one byte at a time (never completing them) until the server
    closes the connection; return what it answered to the unfinished request."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if keep_alive_first:  # one good request, then the slow one on the same connection
            writer.write(b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        for byte in TRICKLE:
            writer.write(bytes([byte]))
            try:  # the attacker's pace; an answer or EOF ends the wait at once
                first = await asyncio.wait_for(reader.read(65536), HEADER_TIMEOUT_S / 10)
            except TimeoutError:
                continue
            return first + await reader.read()
        raise AssertionError("the server read 4 KB of headers byte by byte without closing")
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **http: Any) -> AsyncIterator[tuple[web.Application, str, int]]:
    """A System behind the daemon's own listener (start_site) on a free loopback port."""
    config = Config.from_dict(
        {
            "state": {"restore": False},
            "ingest": {"dead_letter_path": str(tmp_path / "dlq.jsonl")},
            "http": {"port": 0, **http},
        }
    )
    async with System(config) as system:
        app = make_app(system)
        runner = await start_site(app, config.http)
        host, port = runner.addresses[0][:2]
        try:
            yield app, host, port
        finally:
            await runner.cleanup()


async def test_headers_sent_byte_by_byte_are_cut_at_header_timeout(tmp_path: Path) -> None:
    """200 connections trickling headers are each answered 408 and closed after
    http.header_timeout_s (aiohttp alone keeps them for keepalive_timeout_s, 75 s),
    while a real client keeps getting 2xx."""
    async with (
        served(tmp_path, header_timeout_s=HEADER_TIMEOUT_S) as (app, host, port),
        asyncio.timeout(30),
        aiohttp.ClientSession(f"http://{host}:{port}") as client,
    ):
        slow = [
            asyncio.create_task(trickle_until_closed(host, port, keep_alive_first=n % 4 == 0))
            for n in range(200)
        ]
        served_requests = 0
        while not all(task.done() for task in slow) or served_requests < 5:
            async with client.post("/v1/events", json=GOOD) as resp:
                assert resp.status == 200, await resp.text()
            async with client.get("/v1/recommend", params={"user": "alice"}) as resp:
                assert resp.status == 200, await resp.text()
            served_requests += 1
        answers = await asyncio.gather(*slow)
        assert app[METRICS_KEY].header_timeouts._value.get() == 200
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"http.header_timeout_s" in answer


async def test_a_body_slower_than_the_header_timeout_is_still_read(tmp_path: Path) -> None:
    """The header deadline ends with the headers: the body has http.body_timeout_s."""
    async with served(tmp_path, header_timeout_s=HEADER_TIMEOUT_S) as (_, host, port):
        reader, writer = await asyncio.open_connection(host, port)
        body = json.dumps(GOOD).encode()
        writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        await writer.drain()
        # the deadline's own span: the headers are in, so it must not fire
        await asyncio.sleep(HEADER_TIMEOUT_S * 2)
        writer.write(body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.close()


# --------------------------------------------------------------------------- the CLI


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("freshrank: "), err
    assert "Traceback" not in err
    return lines[0]


def test_a_shard_id_outside_the_configs_shards_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "four.toml"
    config.write_text("[training]\nshards = 4\n", encoding="utf-8")
    assert cli.main(["shard", "--id", "9", "--config", str(config)]) == 2
    line = one_error_line(capsys)
    assert "--id 9 is outside 0..3" in line and "training.shards = 4" in line


MOVIELENS_ROWS = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"


@pytest.mark.parametrize(
    ("fmt", "where"),
    [
        ("tsv", "u.data"),
        ("rechorus", "u.data"),
        ("movietweetings", "u.data"),
        ("criteo", "u.data"),  # read nothing at all: not silently "0 events, exit 0"
        ("criteo", "."),  # a MovieLens folder
    ],
)
def test_replay_with_the_wrong_format_is_one_line_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    where: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "u.data").write_text(MOVIELENS_ROWS, encoding="utf-8")
    path = str(tmp_path / where)
    assert cli.main(["replay", path, "--format", fmt, "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert f"--format {fmt}" in line and "format (" in line


@pytest.mark.parametrize("argv", [["run", "--prot", "5"], ["journal", "export", "--outptu", "x"]])
def test_a_typo_in_a_subcommands_flag_shows_that_subcommands_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    command = " ".join(argv[:-2])
    assert err.startswith(f"usage: freshrank {command} ") and "unrecognized arguments" in err


def test_help_shows_defaults_and_no_raw_markup() -> None:
    parser = cli.build_parser()
    helps = {"": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps.update({name: sub.format_help() for name, sub in action.choices.items()})
    for name, text in helps.items():
        assert "``" not in text, name
        assert "(default: None)" not in text and "(default: False)" not in text, name
    assert "--trials TRIALS       trials, the base included (default: 12)" in helps["tune"]
    assert "(default: 0.3333)" in helps["tune"]


def test_a_snapshot_of_other_model_settings_is_one_line_with_the_fix(tmp_path: Path) -> None:
    snapshot = tmp_path / "s.msgpack"
    System(Config.from_dict({"model": {"bits": 18}})).write_snapshot(snapshot)
    config = tmp_path / "other.toml"
    config.write_text(
        f'[model]\nbits = 20\n[state]\nsnapshot_path = "{snapshot}"\n[http]\nport = 0\n'
        f'[ingest]\ndead_letter_path = "{tmp_path / "dlq.jsonl"}"\n',
        encoding="utf-8",
    )
    proc = freshrank("run", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("freshrank:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "bits: 18 in the file, 20 in the config" in lines[0]
    assert "state.restore = false" in lines[0] and len(lines[0]) < 400


# --------------------------------------------------------------------------- crosses


@pytest.mark.parametrize(
    ("pair", "needle"),
    [
        (["user", "nope"], "'nope' is none, so the cross would never yield a feature"),
        (["user", "i."], "item-side namespace second"),
        (["i.genre", "u.age"], "swap them"),
        (["item", "user"], "swap them"),
        (["h.items", "item"], "user/context-side namespace first"),
        (["u.", "i.genre"], "user/context-side namespace first"),
    ],
)
def test_a_cross_that_can_never_yield_a_feature_is_a_config_error(
    pair: list[str], needle: str
) -> None:
    with pytest.raises(ConfigError, match=r"model\.crosses") as info:
        Config.from_dict({"model": {"crosses": [["user", "i.genre"], pair]}})
    assert needle in str(info.value)


async def test_a_cross_on_a_column_name_is_warned_once_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user side such as 'nope' may be a CTR file's column (columns are named freely),
    so it is allowed; events never feed it, which the start log and /v1/stats say."""
    caplog.set_level(logging.WARNING)
    config = Config.from_dict(
        {
            "model": {"crosses": [["user", "i.genre"], ["nope", "item"], ["device", "item"]]},
            "state": {"restore": False},
            "ingest": {"dead_letter_path": str(tmp_path / "dlq.jsonl")},
        }
    )
    async with System(config) as system:
        assert system.statistics()["crosses_on_columns_only"] == 2
    warnings = [r.getMessage() for r in caplog.records if "model.crosses" in r.getMessage()]
    assert len(warnings) == 1 and "'nope'" in warnings[0] and "'device'" in warnings[0]
    async with System(Config.from_dict({"state": {"restore": False}})) as default:
        assert default.statistics()["crosses_on_columns_only"] == 0
