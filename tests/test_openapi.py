"""The OpenAPI document at /v1/openapi.json: complete (every route), and true (schemathesis
fuzzes a live server against it: no 5xx, every status documented, every body and header
as documented)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, rule
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.stateful.state_machine import APIStateMachine, StepInput, StepOutput
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runtime.codec import encode
from runtime.config import Config
from runtime.http import make_app
from runtime.http_middleware import start_site
from runtime.openapi import JSON, MSGPACK, NDJSON, build_openapi
from runtime.system import System

TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZ_EXAMPLES = 25  # per operation: ~10 operations in well under a minute on 2 busy cores
STATEFUL_EXAMPLES = 50  # sequences of calls that follow the document's links
STATEFUL_STEPS = 10  # calls per sequence at most
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def fuzz_config(tmp: Path) -> Config:
    return Config.from_dict(
        {
            "state": {"restore": False, "snapshot_path": ""},
            "ingest": {
                "dead_letter_path": str(tmp / "dlq.jsonl"),
                "max_events_per_request": 50,
                "max_pending_events": 1000,
            },
            "model": {"bits": 12},
            "training": {"negatives": 1},
            "http": {"token": TOKEN, "port": 0, "max_k": 50, "max_candidates": 20},
        }
    )


# --------------------------------------------------------------------------- completeness


def _documented(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item}


def _routed(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds HEAD next to every GET
            continue
        canonical = route.resource.canonical if route.resource else ""
        if isinstance(route.resource, web.StaticResource):
            canonical = canonical.rstrip("/") + "/{file}"
        out.add((route.method, canonical))
    return out


async def test_every_route_is_documented(tmp_path: Path) -> None:
    config = fuzz_config(tmp_path)
    app = make_app(System(config))
    routed = _routed(app)
    assert ("POST", "/v1/events") in routed and ("GET", "/metrics") in routed
    assert routed <= _documented(build_openapi(config)), routed - _documented(build_openapi(config))


async def test_every_operation_documents_auth_and_errors_as_json(tmp_path: Path) -> None:
    spec = build_openapi(fuzz_config(tmp_path))
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            public = operation.get("security") == []
            assert ("401" in operation["responses"]) != public, (method, path)
            for status, response in operation["responses"].items():
                assert "X-Request-ID" in response["headers"], (method, path, status)
                if int(status) >= 400 and path != "/static/{file}":
                    assert "application/json" in response["content"], (method, path, status)


async def test_served_document_is_the_config_s(tmp_path: Path) -> None:
    config = fuzz_config(tmp_path)
    async with System(config) as system, TestClient(TestServer(make_app(system))) as client:
        resp = await client.get("/v1/openapi.json", headers=AUTH)
        assert resp.status == 200
        served = await resp.json()
    assert served == build_openapi(config)
    k = next(p for p in served["paths"]["/v1/recommend"]["get"]["parameters"] if p["name"] == "k")
    assert k["schema"]["maximum"] == 50  # the limits stated are the ones in force


# --------------------------------------------------------------------------- fuzzing


class LiveServer:
    """A System and its HTTP API on a loopback port, in a thread with its own event loop
    (schemathesis calls the API synchronously)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-server")
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(120)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()

    async def _start(self) -> str:
        self.system = System(self.config)
        await self.system.start()
        # a catalog and histories, so rankings and explanations have something to show
        items = [{"item": f"m{n}", "item_features": {"genre": f"g{n % 3}"}} for n in range(12)]
        clicks = [{"user": f"u{n % 7}", "item": f"m{n % 5}"} for n in range(40)]
        result = await self.system.ingest(items + clicks)
        assert result.rejected == 0
        self.runner = await start_site(make_app(self.system), self.config.http)
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _stop(self) -> None:
        await self.runner.cleanup()
        await self.system.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    config = fuzz_config(tmp_path_factory.mktemp("fuzz"))
    with LiveServer(config) as server:
        yield server


@schemathesis.serializer(NDJSON)
def ndjson_body(ctx: Any, value: Any) -> bytes:
    """The document gives NDJSON as text: send generated text as it is."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


@schemathesis.serializer(MSGPACK)
def msgpack_body(ctx: Any, value: Any) -> bytes:
    """Generated binary as it is (mostly not msgpack: the 400 path), else a real encoding."""
    return value if isinstance(value, bytes) else encode(value)


# the document of the server under test (its limits); the path of dead letters plays no part
schema = schemathesis.openapi.from_dict(build_openapi(fuzz_config(Path("unused"))))


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_document(case: schemathesis.Case, live: LiveServer) -> None:
    case.call_and_validate(base_url=live.url, headers=AUTH, checks=CHECKS)


def linked_workflow(config: Config, followed: Counter[str]) -> type[APIStateMachine]:
    """Schemathesis' state machine over the document's links, with the checks of the
    stateless fuzz; ``followed`` counts the links whose values it sent.

    Each sequence runs against a new server: hypothesis replays the start of a sequence to
    explore what may follow it, and needs the same answers then (a server that learned from
    earlier sequences answers otherwise, and hypothesis fails as inconsistent)."""
    stateful = schemathesis.openapi.from_dict(build_openapi(config))
    # valid requests only, and JSON events only (the links read ids back from the request):
    # bad requests and the other media types are the stateless fuzz's, and here would
    # spend the steps on sequences that end at their first call
    stateful.config.generation.update(modes=[GenerationMode.POSITIVE])
    # learned before the answer, so what follows sees it, every time
    events = stateful["/v1/events"]["POST"].as_strategy(query={"wait": "true"})
    json_events = events.filter(lambda case: case.media_type == JSON)

    class Workflow(stateful.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            self.server = LiveServer(config).__enter__()

        def teardown(self) -> None:
            self.server.__exit__()
            super().teardown()

        # schemathesis starts sequences only at operations it expects to succeed with
        # generated data, and doubts ingest (an outcome's impression_id names an impression
        # nothing returns); ingest is where every client's sequence starts
        @rule(target=Bundle("catch_all"), case=json_events)
        def ingest(self, case: schemathesis.Case) -> StepOutput:
            self.recorder.record_case(case=case)
            return self.step(StepInput.initial(case))

        def step(self, input: StepInput) -> StepOutput:
            output = super().step(input)
            if input.transition is not None and input.is_applied:
                followed[input.transition.id] += 1
            return output

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": self.server.url, "headers": AUTH}

        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, recorder=self.recorder)

    return Workflow


def test_linked_calls_conform_to_the_document(tmp_path: Path) -> None:
    """Sequences that feed one answer into the next request (ingest, then rank for its
    user, inspect its item, its neighbours, ...) reach states random ids never do."""
    followed: Counter[str] = Counter()
    linked_workflow(fuzz_config(tmp_path), followed).run(
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
    )
    sources = {link.split(" -> ")[0] for link in followed}
    # from the ids a request sent, and from the ids an answer holds
    assert {"POST /v1/events", "GET /v1/recommend"} <= sources, followed


@pytest.mark.parametrize(
    "event",
    [
        {"user": "u", "item": "a", "label": 1, "weight": 1e300},
        {"user": "u", "item": "a", "label": 1, "context": {"x": 1e300}},
        {"item": "a", "item_features": {"x": 1e300}},
    ],
    ids=["weight", "context", "item_features"],
)
async def test_huge_numbers_do_not_crash_the_pipeline(
    tmp_path: Path, event: dict[str, Any]
) -> None:
    config = fuzz_config(tmp_path)
    async with System(config) as system:
        await system.ingest([{"item": "a"}, {"item": "b"}])
        result = await system.ingest([event, {"user": "v", "item": "b", "label": 0}])
        assert (result.accepted, result.rejected) == (1, 1)
        assert "1e+300" in result.errors[0]["reason"]
        await system.ingest([{"user": "w", "item": "a", "label": 1}])
        assert system.statistics()["failed"] is None
