"""Connection-level limits aiohttp does not have: a deadline on reading request headers.

aiohttp closes a connection only when it stays idle for ``keepalive_timeout`` (75 s
here), and a client that sends its headers one byte at a time holds a file descriptor
and a handler for all that time; hundreds of them exhaust the process's descriptors.
Here every request's headers must be complete within ``http.header_timeout_s`` of the
connection opening (first request) or of their first byte (the next ones on a kept-alive
connection); past it the client gets a 408 with the reason and the connection is closed.

aiohttp builds its protocol objects inside its ``Server`` and offers no option for the
class, so :class:`Runner` gives the server it makes a subclass that only adds the
protocol class; the deadline reads three fields of aiohttp's ``RequestHandler``
(``_request_count``, ``_messages``, ``_current_request``), which tests/test_hostile.py
covers on the installed aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("freshrank.http")
LINGER_S = 1.0  # after a 408, how long the peer has to read it before the socket closes


class HeaderDeadline(RequestHandler):
    """A RequestHandler that closes the connection when a request's headers are late."""

    def __init__(
        self, *args: Any, header_timeout_s: float, on_timeout: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._on_timeout = on_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._heads_seen = 0  # _request_count when the deadline was armed
        self._expired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._expired:
            return  # the 408 is sent: what the client still sends is dropped unread
        if self._deadline is None and data and self._idle():
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self._deadline is not None and self._request_count != self._heads_seen:
            self._disarm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        # no request parsed and waiting, none being handled: bytes now start a new head
        return not self._messages and self._current_request is None

    def _arm(self) -> None:
        self._heads_seen = self._request_count
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None or self._request_count != self._heads_seen or not self._idle():
            return  # a request arrived (its body has its own timeout) or the peer left
        self._on_timeout()
        self._expired = True
        log.debug("request headers not complete within %g s: closed", self._header_timeout_s)
        transport.write(_timeout_response(self._header_timeout_s))
        # half-close and keep reading (discarding) a moment: closing a socket with unread
        # bytes sends a reset, and the client would lose the 408 that says why
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, self.force_close)


def _timeout_response(seconds: float) -> bytes:
    reason = f"request headers not received within {seconds:g} s (http.header_timeout_s)"
    body = json.dumps({"error": reason}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _DeadlineServer(web.Server):
    header_timeout_s: float
    on_timeout: Callable[[], None]

    def __call__(self) -> RequestHandler:
        return HeaderDeadline(
            self,
            loop=self._loop,
            header_timeout_s=self.header_timeout_s,
            on_timeout=self.on_timeout,
            **self._kwargs,
        )


class Runner(web.AppRunner):
    """An AppRunner whose connections get a request-header deadline."""

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout_s: float,
        on_timeout: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._on_timeout = on_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # the same object with one method more: aiohttp made it (app startup, handler
        # arguments) and has no hook for the protocol class
        server.__class__ = _DeadlineServer
        assert isinstance(server, _DeadlineServer)
        server.header_timeout_s = self._header_timeout_s
        server.on_timeout = self._on_timeout
        return server
