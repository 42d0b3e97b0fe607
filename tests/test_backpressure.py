"""Admission control for POST /v1/events: 429 + Retry-After past the ingest bounds.

The trainer is held at a gate (its ``handle`` waits on an asyncio.Event), so the
pipeline is saturated on purpose and deterministically: nothing is learned until
the test opens the gate.  Every test then checks that what the server accepted is
exactly what it learned.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from runtime.admission import INFLIGHT_REQUESTS, PENDING_EVENTS, Admission, Overload, Ticket
from runtime.config import Config, ConfigError
from runtime.http import make_app
from runtime.system import System


def clicks(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"user": f"u{i}", "item": f"i{i % 7}", "label": i % 2} for i in range(start, start + n)]


# --------------------------------------------------------------------------- Admission alone


class Watermark:
    """A stand-in for the trainer's learned watermark."""

    def __init__(self) -> None:
        self.value = -1

    def __call__(self) -> int:
        return self.value


def admitted(admission: Admission) -> Ticket:
    ticket = admission.enter()
    assert isinstance(ticket, Ticket), ticket
    return ticket


def test_events_stay_pending_until_their_last_batch_is_learned() -> None:
    learned = Watermark()
    admission = Admission(10, 8, retry_after_s=2, learned_seq=learned)
    with admitted(admission) as first:
        assert first.reserve(6) is None
        first.queued(seq=3, accepted=6)
    with admitted(admission) as second:
        assert second.reserve(4) is None
        second.queued(seq=5, accepted=3)  # one event was invalid: not pending
    assert admission.pending_events == 9
    learned.value = 3
    assert admission.pending_events == 3
    learned.value = 5
    assert admission.pending_events == 0
    stats = admission.statistics()
    assert (stats["admitted_requests"], stats["admitted_events"]) == (2, 10)
    assert stats["inflight_requests"] == 0 and stats["rejected_overload"] == 0


def test_a_reservation_over_the_bound_is_refused_whole_and_counted() -> None:
    admission = Admission(10, 8, retry_after_s=2, learned_seq=Watermark())
    with admitted(admission) as first:
        assert first.reserve(8) is None
        first.queued(seq=0, accepted=8)
    with admitted(admission) as second:
        overload = second.reserve(3)
        assert isinstance(overload, Overload)
        assert overload.reason == PENDING_EVENTS and overload.retry_after_s == 2
        assert "10" in overload.message  # names the limit
        assert second.reserve(2) is None  # exactly up to the bound fits
    stats = admission.statistics()
    assert stats["rejected_overload_by_reason"][PENDING_EVENTS] == 1
    assert stats["rejected_overload_events"] == 3
    assert stats["pending_events"] == 8  # the second ticket's 2 were never queued: released


def test_a_full_bound_refuses_before_the_body_is_counted() -> None:
    admission = Admission(4, 8, retry_after_s=1, learned_seq=Watermark())
    with admitted(admission) as ticket:
        assert ticket.reserve(4) is None
        ticket.queued(seq=0, accepted=4)
    overload = admission.enter()
    assert isinstance(overload, Overload) and overload.reason == PENDING_EVENTS
    assert admission.statistics()["rejected_overload_events"] == 0  # unknown: body unread
    assert admission.inflight_requests == 0


def test_inflight_requests_are_bounded_and_returned_on_exit() -> None:
    admission = Admission(100, 2, retry_after_s=1)
    first, second = admitted(admission), admitted(admission)
    overload = admission.enter()
    assert isinstance(overload, Overload) and overload.reason == INFLIGHT_REQUESTS
    first.close()
    first.close()  # idempotent: the slot is returned once
    assert admission.inflight_requests == 1
    third = admitted(admission)
    second.close()
    third.close()
    assert admission.inflight_requests == 0
    assert admission.statistics()["rejected_overload_by_reason"][INFLIGHT_REQUESTS] == 1


def test_an_error_between_reserve_and_queue_releases_the_reservation() -> None:
    admission = Admission(10, 8, retry_after_s=1, learned_seq=Watermark())
    with pytest.raises(RuntimeError), admitted(admission) as ticket:
        assert ticket.reserve(7) is None
        raise RuntimeError("the system failed while queuing")
    assert admission.pending_events == 0 and admission.inflight_requests == 0


def test_without_a_watermark_events_stop_being_pending_once_queued() -> None:
    admission = Admission(10, 8, retry_after_s=1)
    with admitted(admission) as ticket:
        assert ticket.reserve(10) is None
        assert admission.pending_events == 10
        ticket.queued(seq=12, accepted=10)
    assert admission.pending_events == 0


def test_config_refuses_a_pending_bound_below_one_request() -> None:
    with pytest.raises(ConfigError, match="max_pending_events"):
        Config.from_dict({"ingest": {"max_pending_events": 10, "max_events_per_request": 11}})
    with pytest.raises(ConfigError, match="retry_after_s"):
        Config.from_dict({"ingest": {"retry_after_s": -1}})


# --------------------------------------------------------------------------- over HTTP


class Gate:
    """Holds the trainer before each batch until ``opened`` is set."""

    def __init__(self, handle: Callable[[Any], Awaitable[None]]) -> None:
        self.opened = asyncio.Event()
        self.reached = asyncio.Event()  # the trainer holds a batch: the pipeline is busy
        self._handle = handle

    async def handle(self, message: Any) -> None:
        self.reached.set()
        await self.opened.wait()
        await self._handle(message)


@dataclass
class Daemon:
    system: System
    client: TestClient
    gate: Gate

    async def post(self, events: Any, wait: bool = False) -> ClientResponse:
        query = "" if wait else "?wait=false"
        return await self.client.post(
            "/v1/events" + query,
            data=json.dumps(events),
            headers={"Content-Type": "application/json"},
        )

    async def accepted(self, events: Any, wait: bool = False) -> int:
        resp = await self.post(events, wait)
        assert resp.status == 200, await resp.text()
        count: int = (await resp.json())["accepted"]
        return count

    def stats(self) -> dict[str, Any]:
        return self.system.statistics()


Start = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    """``await start(max_pending_events=..)``: a System with a gated trainer behind a server."""
    async with AsyncExitStack() as stack:

        async def _start(**ingest: Any) -> Daemon:
            config = Config.from_dict(
                {
                    "state": {"restore": False},
                    "training": {"batch_size": 4},
                    "ingest": {"dead_letter_path": str(tmp_path / "dlq.jsonl"), **ingest},
                }
            )
            system = await stack.enter_async_context(System(config))
            gate = Gate(system.trainer.handle)
            monkeypatch.setattr(system.trainer, "handle", gate.handle)
            stack.callback(gate.opened.set)  # runs before the system drains on exit
            server = TestServer(make_app(system), host="127.0.0.1", port=0)
            client = await stack.enter_async_context(TestClient(server))
            return Daemon(system, client, gate)

        yield _start


async def test_past_max_pending_events_ingest_gets_429_then_everything_accepted_is_learned(
    start: Start,
) -> None:
    d = await start(max_pending_events=10, max_events_per_request=10, retry_after_s=3)
    accepted = await d.accepted(clicks(6)) + await d.accepted(clicks(4, start=6))
    assert accepted == 10
    seq_before = d.stats()["seq"]

    resp = await d.post(clicks(1, start=10))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"
    body = await resp.json()
    assert body["reason"] == PENDING_EVENTS and body["retry_after_s"] == 3
    assert "retry" in body["error"]
    stats = d.stats()
    assert stats["seq"] == seq_before  # nothing of the refused request was queued
    assert stats["trainer"]["events"] == 0  # the gate holds the trainer
    assert stats["admission"]["pending_events"] == 10
    assert stats["admission"]["rejected_overload"] == 1

    d.gate.opened.set()
    await d.system.drain()
    stats = d.stats()
    assert stats["trainer"]["events"] == accepted
    assert stats["admission"]["pending_events"] == 0  # released once learned, wait=false too
    assert stats["admission"]["admitted_events"] == accepted
    assert await d.accepted(clicks(10, start=20), wait=True) == 10


async def test_a_full_bound_refuses_before_reading_the_body(start: Start) -> None:
    d = await start(max_pending_events=5, max_events_per_request=5)
    assert await d.accepted(clicks(5)) == 5
    resp = await d.client.post(
        "/v1/events", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 429  # not 400: the body was never parsed
    assert "Retry-After" in resp.headers
    d.gate.opened.set()
    await d.system.drain()
    stats = d.stats()
    assert stats["dead_letters"]["records"] == 0  # and so it is no bad input either
    assert stats["trainer"]["events"] == 5


async def test_past_max_inflight_requests_ingest_gets_429(start: Start) -> None:
    d = await start(max_inflight_requests=1)
    waiting = asyncio.ensure_future(d.accepted(clicks(3), wait=True))
    await d.gate.reached.wait()  # the first request is queued and waits to be learned
    resp = await d.post(clicks(2, start=3))
    assert resp.status == 429
    assert (await resp.json())["reason"] == INFLIGHT_REQUESTS
    assert d.stats()["admission"]["inflight_requests"] == 1
    d.gate.opened.set()
    assert await waiting == 3
    assert await d.accepted(clicks(2, start=3), wait=True) == 2
    stats = d.stats()
    assert stats["trainer"]["events"] == 5
    assert stats["admission"]["rejected_overload_by_reason"][INFLIGHT_REQUESTS] == 1


async def test_concurrent_overload_loses_no_accepted_event(start: Start) -> None:
    d = await start(max_pending_events=30, max_events_per_request=3, max_inflight_requests=64)
    responses = await asyncio.gather(*(d.post(clicks(3, start=3 * i)) for i in range(25)))
    statuses = sorted(r.status for r in responses)
    accepted = sum([(await r.json())["accepted"] for r in responses if r.status == 200])
    assert accepted == 30 and statuses.count(200) == 10
    assert statuses.count(429) == 15
    assert all("Retry-After" in r.headers for r in responses if r.status == 429)
    d.gate.opened.set()
    await d.system.drain()
    stats = d.stats()
    assert stats["trainer"]["events"] == accepted
    assert stats["admission"]["rejected_overload"] == 15
    assert stats["admission"]["pending_events"] == 0


async def test_invalid_events_do_not_hold_capacity(start: Start) -> None:
    d = await start(max_pending_events=4, max_events_per_request=4)
    resp = await d.post(
        [*clicks(2), {"item": "x", "label": 7}, {"user": "u", "item": "i", "bogus": 1}]
    )
    assert resp.status == 200
    assert (await resp.json())["accepted"] == 2
    assert d.stats()["admission"]["pending_events"] == 2  # the 2 rejected are not pending
    assert await d.accepted(clicks(2, start=2)) == 2
    d.gate.opened.set()
    await d.system.drain()
    assert d.stats()["trainer"]["events"] == 4
