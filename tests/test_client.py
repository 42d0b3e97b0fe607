"""runtime/client.py: the async and sync clients against a real System behind a loopback
server (every method), and their retries against a server that answers 429 and 503."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from runtime.client import ApiError, AsyncClient, Client, OutcomeUnknown, RetryPolicy
from runtime.config import Config
from runtime.http import make_app
from runtime.system import System

FAST = RetryPolicy(attempts=4, base_s=0.001, max_s=0.01)
ITEMS = [{"item": f"{g}-{k}", "item_features": {"genre": [g]}} for g in ("war", "noir") for k in range(6)]  # fmt: skip
CLICKS = [{"user": u, "item": f"war-{k}"} for u in ("ann", "bob") for k in range(3)]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    config = Config.from_dict({"state": {"restore": False}, "ingest": {"dead_letter_path": ""}})
    async with System(config) as system:
        server = TestServer(make_app(system), host="127.0.0.1", port=0)
        await server.start_server()
        try:
            yield str(server.make_url("")).rstrip("/")
        finally:
            await server.close()


async def test_the_async_client_calls_every_route(url: str) -> None:
    async with AsyncClient(url, retry=FAST) as client:
        assert (await client.ingest(ITEMS))["accepted"] == 12
        result = await client.ingest([*CLICKS, {"user": "ann"}])
        assert (result["accepted"], result["rejected"], result["learned"]) == (6, 1, True)
        refused = await client.ingest([{"item": ""}])  # the API's 422: every event refused
        assert refused["accepted"] == 0 and refused["errors"][0]["index"] == 0
        items = await client.recommend("ann", k=4, explain=True)
        assert len(items) == 4 and not {"war-0", "war-1", "war-2"} & {i["item"] for i in items}
        assert all("explanation" in i for i in items)
        picked = await client.recommend("ann", k=2, candidates=["noir-1", "war-4"])
        assert {i["item"] for i in picked} == {"noir-1", "war-4"}
        assert len(await client.recommend_session(["war-1", "war-2"], k=3)) == 3
        assert all("item" in s for s in await client.similar("war-0", k=3))
        assert (await client.item("war-0"))["item"] == "war-0"
        assert (await client.health())["status"] == "ok"
        assert (await client.stats())["trainer"]["events"] == 6
        with pytest.raises(ApiError) as refused_k:
            await client.recommend("ann", k=0)
        assert refused_k.value.status == 400 and "'k'" in refused_k.value.reason
    assert client.retries == 0


async def test_the_sync_client_answers_as_the_async_one(url: str) -> None:
    def calls() -> tuple[Any, ...]:
        client = Client(url, retry=FAST)
        client.ingest(ITEMS)
        client.ingest(CLICKS)
        with pytest.raises(ApiError) as missing:
            client.recommend("", k=3)
        return (
            client.recommend("bob", k=3), client.recommend_session(["noir-0"], k=2),
            client.similar("war-1", k=2), client.item("noir-0"), client.health(),
            client.stats(), missing.value,
        )  # fmt: skip

    mine, session, similar, item, health, stats, missing = await asyncio.to_thread(calls)
    async with AsyncClient(url) as client:
        assert mine == await client.recommend("bob", k=3)
    assert len(session) == 2 and len(similar) <= 2 and item["item"] == "noir-0"
    assert health["status"] == "ok" and stats["trainer"]["events"] == 6
    assert missing.status == 400


class Flaky:
    """A server that answers ``status`` (with Retry-After: 0) ``times`` times, then 200."""

    def __init__(self, status: int, times: int) -> None:
        self.status, self.left, self.seen = status, times, 0

    async def handle(self, request: web.Request) -> web.Response:
        self.seen += 1
        if self.left > 0:
            self.left -= 1
            return web.json_response(
                {"error": "come back later"}, status=self.status, headers={"Retry-After": "0"}
            )
        return web.json_response({"items": [{"item": "x", "score": 0.5}]})


async def serve(flaky: Flaky) -> TestServer:
    app = web.Application()
    app.router.add_get("/v1/recommend", flaky.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server


@pytest.mark.parametrize("status", [429, 503])
async def test_429_and_503_are_retried_until_an_answer(status: int) -> None:
    flaky = Flaky(status, 2)
    server = await serve(flaky)
    try:
        base = str(server.make_url("")).rstrip("/")
        async with AsyncClient(base, retry=FAST) as client:
            assert await client.recommend("u") == [{"item": "x", "score": 0.5}]
        assert (client.retries, flaky.seen) == (2, 3)
        flaky.left = 2
        sync = Client(base, retry=FAST)
        assert await asyncio.to_thread(sync.recommend, "u") == [{"item": "x", "score": 0.5}]
        assert sync.retries == 2
    finally:
        await server.close()


async def test_retries_end_with_the_last_answer() -> None:
    flaky = Flaky(503, 100)
    server = await serve(flaky)
    try:
        async with AsyncClient(str(server.make_url("")).rstrip("/"), retry=FAST) as client:
            with pytest.raises(ApiError) as error:
                await client.recommend("u")
        assert (error.value.status, error.value.reason) == (503, "come back later")
        assert flaky.seen == FAST.attempts and client.retries == FAST.attempts - 1
    finally:
        await server.close()


async def test_a_refused_connection_is_retried_then_raised() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    async with AsyncClient(f"http://127.0.0.1:{port}", retry=FAST) as client:
        with pytest.raises(OSError):
            await client.recommend("u")
    assert client.retries == FAST.attempts - 1
    sync = Client(f"http://127.0.0.1:{port}", retry=FAST)
    with pytest.raises(OSError):
        await asyncio.to_thread(sync.recommend, "u")
    assert sync.retries == FAST.attempts - 1


def test_the_backoff_doubles_is_capped_and_honours_retry_after() -> None:
    import random

    policy = RetryPolicy(attempts=8, base_s=0.1, max_s=2.0)
    rng = random.Random(1)
    delays = [policy.delay(n, None, rng) for n in range(6)]
    for n, delay in enumerate(delays):
        assert min(2.0, 0.1 * 2**n) <= delay <= min(2.0, 0.1 * 2**n) * 1.25
    assert policy.delay(0, "1.5", rng) == 1.5  # the server asked for longer
    assert policy.delay(0, "60", rng) == 2.0  # but never past max_s
    assert policy.delay(0, "Wed, 21 Oct 2015 07:28:00 GMT", rng) < 0.2


async def test_an_unanswered_ingest_is_not_resent_but_a_recommend_is() -> None:
    """A resent ingest that the daemon learned the first time would be learned twice
    (a first start compiling its kernels once took longer than the client's timeout)."""
    received: dict[str, int] = {"/v1/events": 0, "/v1/recommend": 0}
    never = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        received[request.path] += 1
        await never.wait()  # the answer that does not come in time
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/events", silent)
    app.router.add_get("/v1/recommend", silent)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        url = str(server.make_url("")).rstrip("/")
        async with AsyncClient(url, retry=FAST, timeout_s=0.2) as client:
            with pytest.raises(OutcomeUnknown) as unknown:
                await client.ingest(CLICKS)
            assert "may or may not be learned, so it was not resent" in str(unknown.value)
            with pytest.raises(TimeoutError):
                await client.recommend("ann")

        def sync_ingest() -> None:
            Client(url, retry=FAST, timeout_s=0.2).ingest(CLICKS)

        with pytest.raises(OutcomeUnknown):
            await asyncio.to_thread(sync_ingest)
        never.set()
    assert received == {"/v1/events": 2, "/v1/recommend": FAST.attempts}
