"""What every HTTP request goes through before its handler: request id, access log and
metrics, bearer-token authentication, and a cap on requests handled at once.

Middlewares, outermost first:

1. :func:`observe` gives the request its id (a sane incoming ``X-Request-ID`` or a new
   one; echoed in the response), times it, logs one access line and answers every
   error as JSON (``{"error": reason}``), a crash as a logged 500 that names the id;
2. :func:`authenticate` requires ``Authorization: Bearer <token>`` (or, on GET, the
   ``freshrank_token`` cookie, for the dashboard) when a token is set; ``/v1/healthz``
   is always public, ``/metrics`` when ``http.metrics_public``;
3. :func:`limit_requests` answers 503 with ``Retry-After`` past ``http.max_connections``
   requests in progress (health and metrics are exempt: they must answer under load).

Slow clients: headers not complete within ``http.header_timeout_s`` get a 408 and the
connection closed (runtime/http_conn.py); a body not received within ``http.body_timeout_s`` gets a 408
(:func:`read_body`); a connection idle for ``http.keepalive_timeout_s`` (also one that
never completes a request) is closed by aiohttp.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError

from runtime.config import ConfigError, HTTPConfig
from runtime.errors import FreshrankError, SetupError
from runtime.http_conn import Runner
from runtime.logs import REQUEST_ID, printable, request_id_from
from runtime.prometheus import HTTPMetrics

log = logging.getLogger("freshrank.http")
access_log = logging.getLogger("freshrank.access")

RETRY_AFTER_S = 1
TOKEN_COOKIE = "freshrank_token"
PUBLIC_PATHS = frozenset({"/v1/healthz"})
UNLIMITED_PATHS = frozenset({"/v1/healthz", "/metrics"})
QUIET_PATHS = frozenset({"/v1/healthz", "/metrics"})  # probes and scrapes: access log at DEBUG
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass
class HTTPSettings:
    """The [http] settings a running app needs, with the token resolved."""

    token: str = field(repr=False)
    metrics_public: bool
    access_log: bool
    max_connections: int
    body_timeout_s: float
    keepalive_timeout_s: float
    max_body_bytes: int
    active: int = 0  # requests in progress, counted against max_connections

    @classmethod
    def from_config(
        cls, http: HTTPConfig, max_body_bytes: int, environ: Mapping[str, str]
    ) -> HTTPSettings:
        return cls(
            token=http.bearer_token(environ),
            metrics_public=http.metrics_public,
            access_log=http.access_log,
            max_connections=http.max_connections,
            body_timeout_s=http.body_timeout_s,
            keepalive_timeout_s=http.keepalive_timeout_s,
            max_body_bytes=max_body_bytes,
        )


SETTINGS_KEY = web.AppKey("http_settings", HTTPSettings)
METRICS_KEY = web.AppKey("http_metrics", HTTPMetrics)


class HTTPError(FreshrankError):
    """An answer other than success, raised anywhere below :func:`observe` (which renders it).

    Its status is the instance's own, not the class's: one class for every such answer.
    """

    public = True

    def __init__(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.http_status = status
        self.message = message
        self.headers = dict(headers or {})
        self.close = close  # the connection cannot be reused (e.g. a body left half read)
        self.extra = extra

    def response(self) -> web.Response:
        body = {"error": self.message, **self.extra}
        response = web.json_response(body, status=self.status, headers=self.headers)
        if self.close:
            response.force_close()
        return response


# --------------------------------------------------------------------------- middlewares


@web.middleware
async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    metrics = request.app[METRICS_KEY]
    request_id = request_id_from(request.headers.get("X-Request-ID"))
    context = REQUEST_ID.set(request_id)
    started = time.perf_counter()
    status = 500
    metrics.in_flight.inc()
    try:
        response = await _answer(request, handler, request_id)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-ID"] = request_id
        return response
    except web.HTTPException as redirect:  # only a redirect gets here (see _answer)
        status = redirect.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's code for it)
        raise
    finally:
        seconds = time.perf_counter() - started
        metrics.in_flight.dec()
        metrics.observe_request(_route(request), _method(request), status, seconds)
        if status == 499:
            metrics.client_disconnects.inc()
        if settings.access_log:
            _log_access(request, status, seconds)
        REQUEST_ID.reset(context)


async def _answer(request: web.Request, handler: Any, request_id: str) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except FreshrankError as error:
        if error.public:
            return as_http_error(error).response()
        return _internal_error(request, request_id).response()
    except web.HTTPException as error:
        if error.status < 400:  # a redirect: pass it on, with the id
            error.headers["X-Request-ID"] = request_id
            raise
        return _from_aiohttp(request, error).response()
    except Exception:
        return _internal_error(request, request_id).response()


def as_http_error(error: FreshrankError) -> HTTPError:
    """The answer to a public error: its class's status and its message."""
    if isinstance(error, HTTPError):
        return error
    retry = getattr(error, "retry_after_s", None)  # a passing condition (a full disk)
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return HTTPError(error.http_status, str(error), headers)


def _internal_error(request: web.Request, request_id: str) -> HTTPError:
    # never a traceback to the client; the log line carries the request id to find it
    log.exception("unhandled error in %s %s", request.method, printable(request.path))
    return HTTPError(500, f"internal error (request {request_id})")


def _from_aiohttp(request: web.Request, error: web.HTTPException) -> HTTPError:
    """aiohttp's own errors (no route, wrong method, body too large) as JSON with a reason."""
    path = printable(request.path, 200)
    headers = {k: v for k, v in error.headers.items() if k.lower() in ("allow", "retry-after")}
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return _body_too_large(request)
    if error.text and error.text != f"{error.status}: {error.reason}":  # a handler's own reason
        return HTTPError(error.status, error.text, headers)
    if isinstance(error, web.HTTPNotFound):
        return HTTPError(404, f"no such endpoint: {path} (see /v1/openapi.json)", headers)
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        method = printable(request.method, 20)
        reason = f"method {method} is not allowed on {path} (allowed: {allowed})"
        return HTTPError(405, reason, headers)
    return HTTPError(error.status, error.reason, headers)


def _body_too_large(request: web.Request) -> HTTPError:
    limit = request.app[SETTINGS_KEY].max_body_bytes
    reason = f"request body size is over the limit of {limit} bytes (ingest.max_body_bytes)"
    return HTTPError(413, reason, close=True)


@web.middleware
async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    if not settings.token or _is_public(request.path, settings):
        response: web.StreamResponse = await handler(request)
        return response
    presented = _presented_token(request)
    if presented is None:
        raise HTTPError(
            401,
            "authentication required: send the header 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="freshrank"'},
        )
    expected = settings.token.encode()
    if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected):
        raise HTTPError(
            401,
            "invalid bearer token",
            {"WWW-Authenticate": 'Bearer realm="freshrank", error="invalid_token"'},
        )
    response = await handler(request)
    return response


def _is_public(path: str, settings: HTTPSettings) -> bool:
    return path in PUBLIC_PATHS or (path == "/metrics" and settings.metrics_public)


def _presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, credentials = header.strip().partition(" ")
        return credentials.strip() if scheme.lower() == "bearer" else ""
    # the cookie only for reads: a cookie rides along on cross-site requests, so a POST
    # authenticated by it would let any web page a user visits inject events (CSRF)
    if request.method in ("GET", "HEAD"):
        return request.cookies.get(TOKEN_COOKIE)
    return None


@web.middleware
async def limit_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    if request.path in UNLIMITED_PATHS:
        response: web.StreamResponse = await handler(request)
        return response
    if settings.active >= settings.max_connections:
        raise HTTPError(
            503,
            f"{settings.active} requests in progress, the limit is {settings.max_connections} "
            "(http.max_connections); retry later",
            {"Retry-After": str(RETRY_AFTER_S)},
            close=True,
            reason="max_connections",
        )
    settings.active += 1
    try:
        response = await handler(request)
        return response
    finally:
        settings.active -= 1


MIDDLEWARES = [observe, authenticate, limit_requests]


# --------------------------------------------------------------------------- helpers


async def first_chunk(request: web.Request) -> bytes:
    """Wait (at most ``http.body_timeout_s``) until the body starts arriving and return
    what came: a caller takes capacity only then, so connections that send headers and
    no body cannot hold it."""
    return await _bounded(request, request.content.readany())


async def read_body(request: web.Request, prefix: bytes = b"") -> bytes:
    """The whole body (after ``prefix``, what :func:`first_chunk` took), or a 408 when the
    client sends it slower than ``http.body_timeout_s`` (it would hold a request slot as
    long as it likes) and a JSON 413 when it is too large."""
    rest = await _bounded(request, request.read())
    if prefix and len(prefix) + len(rest) > request.app[SETTINGS_KEY].max_body_bytes:
        raise _body_too_large(request)
    return prefix + rest


async def _bounded(request: web.Request, reading: Awaitable[bytes]) -> bytes:
    settings = request.app[SETTINGS_KEY]
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            return await reading
    except TimeoutError:
        reason = (
            f"request body not received within {settings.body_timeout_s:g} s (http.body_timeout_s)"
        )
        raise HTTPError(408, reason, close=True) from None
    except web.HTTPRequestEntityTooLarge:
        raise _body_too_large(request) from None
    except web.RequestPayloadError as error:
        if isinstance(error.__cause__, ContentEncodingError):
            encoding = printable(request.headers.get("Content-Encoding", ""), 40)
            reason = f"the body is not valid {encoding} (Content-Encoding): send it encoded or drop the header"
            raise HTTPError(400, reason, close=True) from None
        raise _client_gone(request) from None
    except ConnectionError:
        raise _client_gone(request) from None


def _client_gone(request: web.Request) -> HTTPError:
    """The client closed the connection mid-body: nothing to answer and nobody's fault
    here, so no error log (the access log shows 499, :func:`observe` counts it)."""
    return HTTPError(499, "the client closed the connection before the whole body", close=True)


def _route(request: web.Request) -> str:
    """The route template (bounded label values), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _method(request: web.Request) -> str:
    return request.method if request.method in METHODS else "other"


def _log_access(request: web.Request, status: int, seconds: float) -> None:
    level = logging.DEBUG if request.path in QUIET_PATHS and status < 400 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    # the path only: a query string may carry user ids, and nothing of the headers is logged
    method, path, ms = printable(request.method, 20), printable(request.path), seconds * 1000.0
    fields = {"method": method, "path": path, "status": status, "duration_ms": round(ms, 3)}
    access_log.log(level, "%s %s %d %.1fms", method, path, status, ms, extra=fields)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or "" (every interface): assume reachable from outside
        return False


def check_exposure(http: HTTPConfig, environ: Mapping[str, str]) -> str:
    """The token in force; refuses an API open to the network (a non-loopback host, no token)."""
    token = http.bearer_token(environ)
    if http.enabled and not token and not is_loopback(http.host):
        raise ConfigError(
            f"http.host = {http.host!r} is not a loopback address and no http.token is set: "
            "anyone who can reach the port could send events and read the model. Set "
            'http.token (e.g. "env:FRESHRANK_TOKEN") or $FRESHRANK_TOKEN, or bind 127.0.0.1'
        )
    return token


def handler_args(settings: HTTPSettings) -> dict[str, Any]:
    """Connection settings for aiohttp's request handler."""
    return {"keepalive_timeout": settings.keepalive_timeout_s}


async def start_site(app: web.Application, http: HTTPConfig) -> web.AppRunner:
    """Serve ``app`` on ``http.host:http.port`` (no aiohttp access log: ours replaces it),
    each request's headers due within ``http.header_timeout_s`` (runtime/http_conn.py)."""
    runner = Runner(
        app,
        header_timeout_s=http.header_timeout_s,
        on_timeout=app[METRICS_KEY].header_timeouts.inc,
        access_log=None,
        handle_signals=False,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, http.host, http.port).start()
    except OSError as error:
        await runner.cleanup()
        raise PortUnavailable(
            f"cannot listen on {http.host}:{http.port}: {error.strerror or error}; "
            "choose another --port (0: any free port) or stop what uses it"
        ) from None
    return runner


class PortUnavailable(SetupError):
    """The HTTP port cannot be bound (in use, or not allowed)."""

    cli_label = "http"
