"""The HTTP API (aiohttp): ingest events, recommend, health, stats, Prometheus metrics
and its OpenAPI document (runtime/openapi.py).  What every request goes through first
(request id, access log, auth, limits) is in runtime/http_middleware.py.

Bad input never gets a 5xx: every rejection is a 4xx with a reason, and the
good events of a partly bad request are still learned.  Handlers let the errors of
runtime/errors.py escape: the middleware answers each with its class's status.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from actors.exploration import ExplorationError
from actors.filters import ItemFilter
from runtime.admission import Admission, Overload, Ticket
from runtime.bodies import DuplicateKey, loads, parse_json_array, parse_ndjson
from runtime.codec import CodecError, Limits, decode
from runtime.dashboard import add_dashboard
from runtime.errors import BadRequest
from runtime.front import (
    ITEMS_OFFSET_MAX,
    ITEMS_PAGE_DEFAULT,
    ITEMS_PAGE_MAX,
    Front,
    catalog_page,
)
from runtime.gcpause import gc_paused, release
from runtime.gilshare import loop_first
from runtime.http_middleware import (
    METRICS_KEY,
    MIDDLEWARES,
    SETTINGS_KEY,
    HTTPSettings,
    first_chunk,
    handler_args,
    read_body,
)
from runtime.openapi import build_openapi
from runtime.prometheus import HTTPMetrics
from runtime.recommend_request import item_filter, parse_recommend_request
from runtime.replay import clean

SYSTEM_KEY = web.AppKey("system", Front)
ADMISSION_KEY = web.AppKey("admission", Admission)
OFF_LOOP_BYTES = 256 * 1024
USER_RE = re.compile(r"^.{1,256}$", re.DOTALL)


def _error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(clean(data), status=status)


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
    """Admission once the body starts arriving: past the ingest bounds a 429 before the
    rest of it is read, and a client that sends headers and no body holds no capacity
    (only a connection, until ``http.body_timeout_s``)."""
    first = await first_chunk(request)
    ticket = request.app[ADMISSION_KEY].enter()
    if isinstance(ticket, Overload):
        return _overloaded(ticket)
    with ticket:
        return await _ingest_events(request, ticket, first)


def _overloaded(overload: Overload) -> web.Response:
    # 429, not 503: the daemon is healthy and only asks this client to come back later;
    # 503 stays the answer of a crashed system, so monitors can tell the two apart
    return web.json_response(
        overload.to_dict(), status=429, headers={"Retry-After": str(overload.retry_after_s)}
    )


async def _ingest_events(request: web.Request, ticket: Ticket, first: bytes) -> web.Response:
    system = request.app[SYSTEM_KEY]
    cfg = system.config.ingest
    body = await read_body(request, first)
    if not body.strip():
        return _error(400, "empty body: send a JSON array, NDJSON or msgpack array of events")
    ctype = request.content_type
    limits = Limits(max_bytes=cfg.max_body_bytes, max_str_len=cfg.max_string_len * 4)
    if ctype in ("application/x-ndjson", "application/jsonl", "application/ndjson"):
        parse: Callable[[bytes], list[Any]] = parse_ndjson
    elif ctype in ("application/msgpack", "application/x-msgpack"):
        parse = functools.partial(_parse_msgpack, limits=limits)
    elif ctype in ("application/json", "application/octet-stream", "text/plain", ""):
        parse = parse_json_array
    else:
        return _error(
            415,
            f"unsupported content type {ctype!r}: use application/json, application/x-ndjson or application/msgpack",
        )
    with gc_paused(large=len(body) >= OFF_LOOP_BYTES):
        return await _decode_and_ingest(request, ticket, body, parse)


async def _parse_off_loop(parse: Callable[[bytes], list[Any]], body: bytes) -> list[Any]:
    """A large body decoded in a worker thread (16 MB of JSON took the loop 100s of ms),
    which hands the interpreter back to the loop every 0.5 ms, not 5 (runtime/gilshare.py)."""
    with loop_first():
        return await asyncio.to_thread(parse, body)


async def _decode_and_ingest(
    request: web.Request, ticket: Ticket, body: bytes, parse: Callable[[bytes], list[Any]]
) -> web.Response:
    system = request.app[SYSTEM_KEY]
    cfg = system.config.ingest
    try:
        events = parse(body) if len(body) < OFF_LOOP_BYTES else await _parse_off_loop(parse, body)
    except ValueError as error:  # also json's own, e.g. an integer over 4300 digits
        await system.reject([(str(error), body[:8192].decode("utf-8", "replace"))], "http")
        raise BadRequest(str(error)) from None
    if not events:
        return _error(400, "empty batch: the array holds no events")
    if len(events) > cfg.max_events_per_request:
        return _error(
            413, f"{len(events)} events in one request, the limit is {cfg.max_events_per_request}"
        )
    overload = ticket.reserve(len(events))
    if overload is not None:
        return _overloaded(overload)
    wait = request.query.get("wait", "true").lower() not in ("0", "false", "no")
    result = await system.ingest(events, wait=wait, source="http")
    await release(events)
    ticket.queued(result.seq, result.accepted)
    request.app[METRICS_KEY].observe_ingest(result.accepted, result.rejected)
    status = 200 if result.accepted else 422
    return _json(result.to_dict(), status)


# the query parameters each API route takes; the others (health, metrics, the page) are free
QUERY_PARAMS: dict[str, frozenset[str]] = {
    "/v1/events": frozenset({"wait"}),
    "/v1/recommend": frozenset(
        "user k candidates exclude filter context explain explore scale epsilon variant".split()
    ),
    "/v1/items": frozenset({"offset", "limit"}),
    "/v1/items/{item}/similar": frozenset({"k"}),
    "/v1/items/{item}": frozenset({"k"}),
    "/v1/items/{item}/hide": frozenset(),
    "/v1/items/{item}/unhide": frozenset(),
    "/v1/users/{user}": frozenset(),
    "/v1/dashboard/series": frozenset({"since"}),
    "/v1/dashboard/top": frozenset({"k"}),
    "/v1/experiments": frozenset(),
}
INTEGER = re.compile(r"-?[0-9]{1,18}")  # ASCII digits only: no "1_000", "٣" or " 5 "


@web.middleware
async def strict_query(request: web.Request, handler: Any) -> web.StreamResponse:
    """An unknown or repeated query parameter is a 400 naming it (``http.strict_params``)."""
    resource = request.match_info.route.resource
    allowed = QUERY_PARAMS.get(resource.canonical) if resource is not None else None
    if allowed is not None and request.app[SYSTEM_KEY].config.http.strict_params:
        unknown = sorted({name for name in request.query if name not in allowed})
        if unknown:
            names = ", ".join(repr(n[:40]) for n in unknown[:5])
            raise BadRequest(
                f"unknown query parameter(s) {names}; this route takes {sorted(allowed)}"
            )
        for name in set(request.query):
            if len(request.query.getall(name)) > 1:
                raise BadRequest(f"query parameter {name!r} is given more than once")
    response: web.StreamResponse = await handler(request)
    return response


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not INTEGER.fullmatch(raw):
        raise BadRequest(f"'{name}' must be an integer (ASCII digits), got {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be in {low}..{high}, got {value}")
    return value


def _exploration_params(request: web.Request, system: Front) -> dict[str, Any]:
    """The request's ``explore``, ``scale`` and ``epsilon`` (the system's policy checks them)."""
    given = [name for name in ("explore", "scale", "epsilon") if name in request.query]
    if not given:
        return {}
    if not system.exploration_available:
        raise ExplorationError("exploration is not available on this server")
    params: dict[str, Any] = {}
    for name in given:
        raw = request.query[name]
        if name == "explore":
            params[name] = raw
            continue
        try:
            params[name] = float(raw)
        except ValueError:
            raise ExplorationError(f"'{name}' must be a number, got {raw[:40]!r}") from None
    return params


def _ids(request: web.Request, name: str) -> list[str] | None:
    """A comma-separated list of item ids (None: the parameter is absent)."""
    if name not in request.query:
        return None
    ids = [c for c in request.query[name].split(",") if c]
    if not ids:
        raise BadRequest(f"'{name}' names no item: give comma-separated item ids")
    return ids


async def get_recommend(request: web.Request) -> web.Response:
    system = request.app[SYSTEM_KEY]
    user = request.query.get("user")
    if not user or not USER_RE.match(user):
        return _error(400, "'user' is required (1..256 characters)")
    limits = system.config.http
    k = _int_param(request, "k", 10, 1, limits.max_k)
    candidates, exclude = _ids(request, "candidates"), _ids(request, "exclude")
    for name, ids in (("candidates", candidates), ("exclude", exclude)):
        if ids is not None and len(ids) > limits.max_candidates:
            return _error(
                413, f"{len(ids)} {name} ids, the limit is {limits.max_candidates} "
                "(http.max_candidates)",
            )  # fmt: skip
    context = None
    if "context" in request.query:
        try:
            context = loads(request.query["context"])
        except DuplicateKey as error:
            return _error(400, f"'context': {error}")
        except ValueError:  # also ints over 4300 digits, deep nesting
            return _error(400, "'context' must be a JSON object")
        if isinstance(context, dict) and len(context) > limits.max_context_keys:
            return _error(
                413,
                f"{len(context)} context features, the limit is {limits.max_context_keys} "
                "(http.max_context_keys)",
            )
    explain = request.query.get("explain", "false").lower() in ("1", "true", "yes")
    exploration = _exploration_params(request, system)
    items = await system.recommend(
        user, k, candidates, context, explain, **exploration, exclude=exclude,
        item_filter=_filter_param(request), variant=request.query.get("variant"),
    )  # fmt: skip
    return _json({"user": user, "k": k, "items": items, **_variant(items)})


def _variant(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer's ``variant`` field, only with ``[experiments]``."""
    variant = getattr(items, "variant", None)
    return {"variant": variant} if variant is not None else {}


def _filter_param(request: web.Request) -> ItemFilter | None:
    """``filter``: the JSON object of POST's ``filter`` (None: absent)."""
    if "filter" not in request.query:
        return None
    try:
        value = loads(request.query["filter"])
    except DuplicateKey as error:
        raise BadRequest(f"'filter': {error}") from None
    except ValueError:  # also ints over 4300 digits, deep nesting
        raise BadRequest("'filter' must be a JSON object") from None
    return item_filter(value)


async def post_recommend(request: web.Request) -> web.Response:
    """Recommend for a JSON body: a known ``user``, an anonymous visitor's ``session`` of
    item ids (oldest first; ranked with, not learned), or both."""
    system = request.app[SYSTEM_KEY]
    query = parse_recommend_request(await read_body(request), system.config.http)
    if query.exploration and not system.exploration_available:
        raise ExplorationError("exploration is not available on this server")
    items = await system.recommend(
        query.user, query.k, query.candidates, query.context, query.explain,
        session=query.session, exclude=query.exclude, item_filter=query.item_filter,
        variant=query.variant, **query.exploration,
    )  # fmt: skip
    ignored = [i for i in query.session if i not in system.catalog.rows]
    return _json({"user": query.user or None, "k": query.k, "items": items,
                  "ignored_session_items": ignored, **_variant(items)})  # fmt: skip


async def get_items(request: web.Request) -> web.Response:
    """A page of the catalog, each item as the upsert that would recreate it."""
    offset = _int_param(request, "offset", 0, 0, ITEMS_OFFSET_MAX)
    limit = _int_param(request, "limit", ITEMS_PAGE_DEFAULT, 1, ITEMS_PAGE_MAX)
    return _json(catalog_page(request.app[SYSTEM_KEY].catalog, offset, limit))


async def get_similar(request: web.Request) -> web.Response:
    item = request.match_info["item"]
    k = _int_param(request, "k", 10, 1, request.app[SYSTEM_KEY].config.http.max_k)
    similar = await request.app[SYSTEM_KEY].similar(item, k)
    return _json({"item": item, "k": k, "similar": similar})


async def get_item(request: web.Request) -> web.Response:
    item = request.match_info["item"]
    k = _int_param(request, "k", 10, 1, request.app[SYSTEM_KEY].config.http.max_k)
    return _json({"k": k, **await request.app[SYSTEM_KEY].inspect(item, k)})


async def delete_item(request: web.Request) -> web.Response:
    """Remove the item from serving and sampling (until an upsert brings it back)."""
    lifecycle = request.app[SYSTEM_KEY].lifecycle
    return _json(await lifecycle.delete_item(request.match_info["item"]))


async def post_hide(request: web.Request) -> web.Response:
    lifecycle = request.app[SYSTEM_KEY].lifecycle
    return _json(await lifecycle.hide_item(request.match_info["item"]))


async def post_unhide(request: web.Request) -> web.Response:
    lifecycle = request.app[SYSTEM_KEY].lifecycle
    return _json(await lifecycle.unhide_item(request.match_info["item"]))


async def delete_user(request: web.Request) -> web.Response:
    """Forget a user (a privacy request): 404 when nothing of them is kept, 501 in cluster
    mode."""
    lifecycle = request.app[SYSTEM_KEY].lifecycle
    return _json(await lifecycle.forget_user(request.match_info["user"]))


async def get_health(request: web.Request) -> web.Response:
    health = request.app[SYSTEM_KEY].health()
    return _json(health, 503 if health["status"] == "failed" else 200)


async def get_stats(request: web.Request) -> web.Response:
    return _json(request.app[SYSTEM_KEY].statistics())


async def get_experiments(request: web.Request) -> web.Response:
    """Per variant: progressive HR@k/NDCG@k and click-through with 95% intervals (404:
    no ``[experiments]`` section)."""
    experiments = request.app[SYSTEM_KEY].statistics().get("experiments")
    if experiments is None:
        return _error(404, "no experiments: the config has no [experiments] section")
    return _json(experiments)


async def get_metrics(request: web.Request) -> web.Response:
    """Prometheus text format, from this app's own registry."""
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(request.app[SYSTEM_KEY].config))


def make_app(system: Front) -> web.Application:
    """The aiohttp application; request bodies over ``ingest.max_body_bytes`` get a 413.

    The token comes from ``http.token`` or $FRESHRANK_TOKEN (see http_middleware).
    """
    max_body = system.config.ingest.max_body_bytes
    settings = HTTPSettings.from_config(system.config.http, max_body, os.environ)
    app = web.Application(
        client_max_size=max_body,
        middlewares=[*MIDDLEWARES, strict_query],
        handler_args=handler_args(settings),
    )
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = HTTPMetrics(system.statistics)
    app[SYSTEM_KEY] = system
    app[ADMISSION_KEY] = system.admission
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/recommend", get_recommend)
    app.router.add_post("/v1/recommend", post_recommend)
    app.router.add_get("/v1/items", get_items)
    app.router.add_get("/v1/items/{item}/similar", get_similar)
    app.router.add_get("/v1/items/{item}", get_item)
    app.router.add_delete("/v1/items/{item}", delete_item)
    app.router.add_post("/v1/items/{item}/hide", post_hide)
    app.router.add_post("/v1/items/{item}/unhide", post_unhide)
    app.router.add_delete("/v1/users/{user}", delete_user)
    app.router.add_get("/v1/healthz", get_health)
    app.router.add_get("/v1/stats", get_stats)
    app.router.add_get("/v1/experiments", get_experiments)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/v1/openapi.json", get_openapi)
    add_dashboard(app, system)
    return app
