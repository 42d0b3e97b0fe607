"""The HTTP API (aiohttp): ingest events, recommend, health, stats.

Bad input never gets a 5xx: every rejection is a 4xx with a reason, and the
good events of a partly bad request are still learned.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from actors.events import InvalidEvent, Unparsable
from actors.ranker import UnknownCandidates
from runtime.codec import CodecError, Limits, decode
from runtime.replay import clean
from runtime.system import System, SystemFailed

SYSTEM_KEY = web.AppKey("system", System)
USER_RE = re.compile(r"^.{1,256}$", re.DOTALL)
MAX_K = 1000


def _error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(clean(data), status=status)


def _parse_json_array(body: bytes) -> list[Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"body is not valid UTF-8 (byte {error.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise ValueError(
            f"body must be a JSON array of events (or one event object), got {type(data).__name__}"
        )
    return data


def _parse_ndjson(body: bytes) -> list[Any]:
    out: list[Any] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line.decode("utf-8")))
        except UnicodeDecodeError:
            out.append(
                Unparsable(
                    f"line {number}: not valid UTF-8", line[:8192].decode("utf-8", "replace")
                )
            )
        except ValueError as error:  # JSONDecodeError, or e.g. an integer over 4300 digits
            reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)[:200]
            out.append(
                Unparsable(
                    f"line {number}: not valid JSON: {reason}",
                    line[:8192].decode("utf-8", "replace"),
                )
            )
    return out


def _parse_msgpack(body: bytes, limits: Limits) -> list[Any]:
    try:
        data = decode(body, limits)
    except CodecError as error:
        raise ValueError(f"body is not valid msgpack: {error}") from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise ValueError(f"body must be a msgpack array of events, got {type(data).__name__}")
    return data


async def post_events(request: web.Request) -> web.Response:
    system = request.app[SYSTEM_KEY]
    cfg = system.config.ingest
    body = await request.read()
    if not body.strip():
        return _error(400, "empty body: send a JSON array, NDJSON or msgpack array of events")
    ctype = request.content_type
    limits = Limits(max_bytes=cfg.max_body_bytes, max_str_len=cfg.max_string_len * 4)
    try:
        if ctype in ("application/x-ndjson", "application/jsonl", "application/ndjson"):
            events = _parse_ndjson(body)
        elif ctype in ("application/msgpack", "application/x-msgpack"):
            events = _parse_msgpack(body, limits)
        elif ctype in ("application/json", "application/octet-stream", "text/plain", ""):
            events = _parse_json_array(body)
        else:
            return _error(
                415,
                f"unsupported content type {ctype!r}: use application/json, application/x-ndjson or application/msgpack",
            )
    except ValueError as error:
        await system.reject([(str(error), body[:8192].decode("utf-8", "replace"))], "http")
        return _error(400, str(error))
    if not events:
        return _error(400, "empty batch: the array holds no events")
    if len(events) > cfg.max_events_per_request:
        return _error(
            413, f"{len(events)} events in one request, the limit is {cfg.max_events_per_request}"
        )
    wait = request.query.get("wait", "true").lower() not in ("0", "false", "no")
    try:
        result = await system.ingest(events, wait=wait, source="http")
    except SystemFailed as error:
        return _error(503, str(error))
    status = 200 if result.accepted else 422
    return _json(result.to_dict(), status)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"'{name}' must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ValueError(f"'{name}' must be in {low}..{high}, got {value}")
    return value


async def get_recommend(request: web.Request) -> web.Response:
    system = request.app[SYSTEM_KEY]
    user = request.query.get("user")
    if not user or not USER_RE.match(user):
        return _error(400, "'user' is required (1..256 characters)")
    try:
        k = _int_param(request, "k", 10, 1, MAX_K)
    except ValueError as error:
        return _error(400, str(error))
    candidates = None
    if "candidates" in request.query:
        candidates = [c for c in request.query["candidates"].split(",") if c]
        if len(candidates) > 100_000:
            return _error(413, "at most 100000 candidates")
    context = None
    if "context" in request.query:
        try:
            context = json.loads(request.query["context"])
        except json.JSONDecodeError:
            return _error(400, "'context' must be a JSON object")
    explain = request.query.get("explain", "false").lower() in ("1", "true", "yes")
    try:
        items = await system.recommend(user, k, candidates, context, explain)
    except (InvalidEvent, UnknownCandidates) as error:
        return _error(400, str(error))
    except SystemFailed as error:
        return _error(503, str(error))
    return _json({"user": user, "k": k, "items": items})


async def get_health(request: web.Request) -> web.Response:
    system = request.app[SYSTEM_KEY]
    stats = system.statistics()
    if stats["failed"]:
        return _json({"status": "failed", "error": stats["failed"]}, 503)
    return _json(
        {"status": "ok", "seq": stats["seq"], "learned_seq": stats["trainer"]["learned_seq"]}
    )


async def get_stats(request: web.Request) -> web.Response:
    return _json(request.app[SYSTEM_KEY].statistics())


def make_app(system: System) -> web.Application:
    """The aiohttp application; request bodies over ``ingest.max_body_bytes`` get a 413."""
    app = web.Application(client_max_size=system.config.ingest.max_body_bytes)
    app[SYSTEM_KEY] = system
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/recommend", get_recommend)
    app.router.add_get("/v1/healthz", get_health)
    app.router.add_get("/v1/stats", get_stats)
    return app
