"""A Python client of the freshrank HTTP API, async (:class:`AsyncClient`, on aiohttp)
and sync (:class:`Client`, on the standard library), with the same typed methods.

A 429 (the daemon's admission control: come back later) and a 503 (a server that
cannot answer now) are retried with exponential backoff that honours the answer's
``Retry-After``; a connection that fails is retried the same way.  Every other error
answer raises :class:`ApiError` at once with the status and the server's reason,
since sending the same request again would get the same answer.  An ingest that was
sent and got no answer (a timeout, a dropped connection) is never resent, as it may have
been learned: it raises :class:`OutcomeUnknown`.  An ingest whose
every event was refused is not an error: its result lists each event's reason, as
the API's 422 does.

    async with AsyncClient("http://127.0.0.1:8080", token=None) as client:
        await client.ingest([{"user": "u1", "item": "i3"}])
        items = await client.recommend("u1", k=10)
        await client.hide_item("i3")        # also unhide_item, delete_item
        await client.forget_user("u1")      # a privacy request
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.errors import FreshrankError
from runtime.recommendations import Recommendations

if TYPE_CHECKING:  # imported on first use: the sync client and the CLI do without it
    import aiohttp

RETRIED = frozenset({429, 503})
ANSWERED = frozenset({200, 422})  # 422: an ingest whose every event was refused, with reasons


class ApiError(FreshrankError):
    """An error answer of the API that retrying would not change (or the last one of a
    retried request): ``status`` and the server's ``reason``."""

    traceback = False  # the server's reason says it all (freshrank import prints it)

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class OutcomeUnknown(FreshrankError):
    """A request that changes state (an ingest) was sent and no answer came: the daemon
    may have learned its events or not.  It is not resent, since a resent batch that was
    learned the first time would be learned twice."""

    traceback = False


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` in all; the n-th retry waits ``base_s · 2^n`` (at most ``max_s``),
    jittered by up to a quarter, or the answer's ``Retry-After`` when it says longer."""

    attempts: int = 5
    base_s: float = 0.1
    max_s: float = 10.0

    def delay(self, retry: int, retry_after: str | None, rng: random.Random) -> float:
        backoff = min(self.max_s, self.base_s * 2**retry) * (1 + rng.random() / 4)
        try:
            asked = float(retry_after) if retry_after is not None else 0.0
        except ValueError:  # an HTTP date: not sent by freshrank
            asked = 0.0
        return max(backoff, min(asked, self.max_s))


@dataclass(frozen=True)
class Call:
    """One API request: its method, path, query and JSON body."""

    method: str
    path: str
    query: dict[str, str]
    body: Any = None
    idempotent: bool = True  # sending it twice does what sending it once does

    def unanswered(self, error: Exception, timeout_s: float) -> OutcomeUnknown:
        return OutcomeUnknown(
            f"{self.method} {self.path}: no answer ({error!r}) within {timeout_s:g} s; its "
            "events may or may not be learned, so it was not resent: check /v1/stats, or "
            "raise the client's timeout_s for a daemon that is still compiling its kernels"
        )

    def url(self, base: str) -> str:
        query = f"?{urllib.parse.urlencode(self.query)}" if self.query else ""
        return f"{base.rstrip('/')}{self.path}{query}"


def _reason(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500]
    return str(body.get("error", body)) if isinstance(body, dict) else text[:500]


def _item_path(item: str, suffix: str = "") -> str:
    return f"/v1/items/{urllib.parse.quote(item, safe='')}{suffix}"


def _user_path(user: str) -> str:
    return f"/v1/users/{urllib.parse.quote(user, safe='')}"


class _Calls:
    """The API's requests, shared by both clients (which only send them)."""

    @staticmethod
    def ingest(events: Sequence[dict[str, Any]], wait: bool) -> Call:
        query = {} if wait else {"wait": "false"}
        return Call("POST", "/v1/events", query, list(events), idempotent=False)

    @staticmethod
    def recommend(
        user: str, k: int, candidates: Sequence[str] | None, context: dict[str, Any] | None,
        explain: bool, exclude: Sequence[str], item_filter: dict[str, Any] | None = None,
        variant: str | None = None,
    ) -> Call:  # fmt: skip
        query = {"user": user, "k": str(k)}
        if variant is not None:
            query["variant"] = variant
        if item_filter is not None:
            query["filter"] = json.dumps(item_filter)
        if candidates is not None:
            query["candidates"] = ",".join(candidates)
        if exclude:
            query["exclude"] = ",".join(exclude)
        if context is not None:
            query["context"] = json.dumps(context)
        if explain:
            query["explain"] = "true"
        return Call("GET", "/v1/recommend", query)

    @staticmethod
    def items(offset: int, limit: int) -> Call:
        return Call("GET", "/v1/items", {"offset": str(offset), "limit": str(limit)})

    @staticmethod
    def session(session: Sequence[str], k: int, user: str | None) -> Call:
        body: dict[str, Any] = {"session": list(session), "k": k}
        if user:
            body["user"] = user
        return Call("POST", "/v1/recommend", {}, body)


class _Settings:
    """What both clients are given: the server, the token, the timeout and the retries."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        seed: int | None = None,
    ) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.retries = 0  # requests sent again after a 429, a 503 or a failed connection
        self._rng = random.Random(seed)


class AsyncClient(_Settings):
    """The HTTP API from asyncio code; use it as ``async with`` (one connection pool)."""

    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        self._session = aiohttp.ClientSession(headers=self.headers, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ingest(self, events: Sequence[dict[str, Any]], wait: bool = True) -> dict[str, Any]:
        """Send events; the result (accepted, rejected, each refused event's reason)."""
        result: dict[str, Any] = await self._send(_Calls.ingest(events, wait))
        return result

    async def recommend(
        self, user: str, k: int = 10, candidates: Sequence[str] | None = None,
        context: dict[str, Any] | None = None, explain: bool = False, exclude: Sequence[str] = (),
        item_filter: dict[str, Any] | None = None, variant: str | None = None,
    ) -> Recommendations:  # fmt: skip
        """``exclude``: item ids never to recommend in this answer; ``item_filter``: only
        items whose features pass (the ``filter`` object of the API); ``variant``: an
        experiment variant instead of the user's.  ``.variant`` of the answer: who ranked it."""
        call = _Calls.recommend(
            user, k, candidates, context, explain, exclude, item_filter, variant
        )
        body = await self._send(call)
        return Recommendations(body["items"], body.get("variant"))

    async def recommend_session(
        self, session: Sequence[str], k: int = 10, user: str | None = None
    ) -> list[dict[str, Any]]:
        """For an anonymous visitor who just interacted with ``session`` (oldest first)."""
        items: list[dict[str, Any]] = (await self._send(_Calls.session(session, k, user)))["items"]
        return items

    async def similar(self, item: str, k: int = 10) -> list[dict[str, Any]]:
        body = await self._send(Call("GET", _item_path(item, "/similar"), {"k": str(k)}))
        similar: list[dict[str, Any]] = body["similar"]
        return similar

    async def item(self, item: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._send(Call("GET", _item_path(item), {}))
        return body

    async def items(self, offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        """A page of the catalog: ``total``, ``next_offset`` (None after the last page) and
        ``items``, each as the item upsert that recreates it."""
        body: dict[str, Any] = await self._send(_Calls.items(offset, limit))
        return body

    async def hide_item(self, item: str) -> dict[str, Any]:
        """Never recommend the item nor sample it, until :meth:`unhide_item`; its lifecycle."""
        body: dict[str, Any] = await self._send(Call("POST", _item_path(item, "/hide"), {}))
        return body

    async def unhide_item(self, item: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._send(Call("POST", _item_path(item, "/unhide"), {}))
        return body

    async def delete_item(self, item: str) -> dict[str, Any]:
        """Gone from serving and sampling until an item upsert of the same id."""
        body: dict[str, Any] = await self._send(Call("DELETE", _item_path(item), {}))
        return body

    async def forget_user(self, user: str) -> dict[str, Any]:
        """Forget everything kept of the user (a privacy request); what was removed."""
        body: dict[str, Any] = await self._send(Call("DELETE", _user_path(user), {}))
        return body

    async def health(self) -> dict[str, Any]:
        body: dict[str, Any] = await self._send(Call("GET", "/v1/healthz", {}))
        return body

    async def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = await self._send(Call("GET", "/v1/stats", {}))
        return body

    async def experiments(self) -> dict[str, Any]:
        """Per variant: HR@k, NDCG@k and click-through with 95% intervals."""
        body: dict[str, Any] = await self._send(Call("GET", "/v1/experiments", {}))
        return body

    async def _send(self, call: Call) -> Any:
        import aiohttp

        if self._session is None:
            raise RuntimeError("use the client as 'async with AsyncClient(...) as client'")
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                async with self._session.request(
                    call.method, call.url(self.base_url), json=call.body
                ) as answer:
                    text = await answer.text()
                    if answer.status in ANSWERED:
                        return json.loads(text)
                    if answer.status not in RETRIED or last:
                        raise ApiError(answer.status, _reason(text))
                    retry_after = answer.headers.get("Retry-After")
            except aiohttp.ClientConnectorError:  # never connected: nothing was sent
                if last:
                    raise
                retry_after = None
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                if not call.idempotent:
                    raise call.unanswered(error, self.timeout_s) from error
                if last:
                    raise
                retry_after = None
            self.retries += 1
            await asyncio.sleep(self.retry.delay(attempt, retry_after, self._rng))
        raise AssertionError("unreachable: the last attempt returns or raises")


class Client(_Settings):
    """The HTTP API from plain (blocking) code, with the methods of :class:`AsyncClient`."""

    def ingest(self, events: Sequence[dict[str, Any]], wait: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self._send(_Calls.ingest(events, wait))
        return result

    def recommend(
        self, user: str, k: int = 10, candidates: Sequence[str] | None = None,
        context: dict[str, Any] | None = None, explain: bool = False, exclude: Sequence[str] = (),
        item_filter: dict[str, Any] | None = None, variant: str | None = None,
    ) -> Recommendations:  # fmt: skip
        call = _Calls.recommend(
            user, k, candidates, context, explain, exclude, item_filter, variant
        )
        body = self._send(call)
        return Recommendations(body["items"], body.get("variant"))

    def recommend_session(
        self, session: Sequence[str], k: int = 10, user: str | None = None
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._send(_Calls.session(session, k, user))["items"]
        return items

    def similar(self, item: str, k: int = 10) -> list[dict[str, Any]]:
        body = self._send(Call("GET", _item_path(item, "/similar"), {"k": str(k)}))
        similar: list[dict[str, Any]] = body["similar"]
        return similar

    def item(self, item: str) -> dict[str, Any]:
        body: dict[str, Any] = self._send(Call("GET", _item_path(item), {}))
        return body

    def items(self, offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        body: dict[str, Any] = self._send(_Calls.items(offset, limit))
        return body

    def hide_item(self, item: str) -> dict[str, Any]:
        body: dict[str, Any] = self._send(Call("POST", _item_path(item, "/hide"), {}))
        return body

    def unhide_item(self, item: str) -> dict[str, Any]:
        body: dict[str, Any] = self._send(Call("POST", _item_path(item, "/unhide"), {}))
        return body

    def delete_item(self, item: str) -> dict[str, Any]:
        body: dict[str, Any] = self._send(Call("DELETE", _item_path(item), {}))
        return body

    def forget_user(self, user: str) -> dict[str, Any]:
        body: dict[str, Any] = self._send(Call("DELETE", _user_path(user), {}))
        return body

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self._send(Call("GET", "/v1/healthz", {}))
        return body

    def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = self._send(Call("GET", "/v1/stats", {}))
        return body

    def experiments(self) -> dict[str, Any]:
        body: dict[str, Any] = self._send(Call("GET", "/v1/experiments", {}))
        return body

    def _send(self, call: Call) -> Any:
        data = json.dumps(call.body).encode() if call.body is not None else None
        headers = {**self.headers, "Content-Type": "application/json"}
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            request = urllib.request.Request(
                call.url(self.base_url), data=data, method=call.method, headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                    return json.loads(answer.read())
            except urllib.error.HTTPError as error:
                text = error.read().decode(errors="replace")
                if error.code in ANSWERED:
                    return json.loads(text)
                if error.code not in RETRIED or last:
                    raise ApiError(error.code, _reason(text)) from None
                retry_after = error.headers.get("Retry-After")
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                reason = getattr(error, "reason", error)
                if not call.idempotent and not isinstance(reason, ConnectionRefusedError):
                    raise call.unanswered(error, self.timeout_s) from error
                if last:
                    raise
                retry_after = None
            self.retries += 1
            time.sleep(self.retry.delay(attempt, retry_after, self._rng))
        raise AssertionError("unreachable: the last attempt returns or raises")
