"""The error tree of runtime/errors.py: every error class is in it, and the HTTP layer and
the CLI answer each error by its class's policy."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import actors
import runtime
from actors.events import InvalidEvent
from actors.exploration import ExplorationError, ExplorationUnavailable
from actors.ranker import UnknownCandidates
from runtime.cli import main, report_error
from runtime.codec import CodecError, CodecTypeError
from runtime.config import ConfigError, HTTPConfig
from runtime.errors import FreshrankError
from runtime.http_middleware import (
    METRICS_KEY,
    MIDDLEWARES,
    SETTINGS_KEY,
    HTTPError,
    HTTPSettings,
    handler_args,
)
from runtime.kafka import BrokerUnavailable, TopicLayoutError
from runtime.launch import SupervisorFailed
from runtime.prometheus import HTTPMetrics
from runtime.system import SnapshotError, SystemFailed

KNOWN = {
    "InvalidEvent",
    "ExplorationError",
    "ExplorationUnavailable",
    "UnknownCandidates",
    "CodecError",
    "CodecTypeError",
    "SystemFailed",
    "StateError",
    "ComponentError",
    "ConfigError",
    "HTTPError",
    "BrokerUnavailable",
    "TopicLayoutError",
    "SupervisorFailed",
}


def freshrank_modules() -> Iterator[str]:
    for package in (actors, runtime):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not module.name.endswith("__main__"):  # running it would run the CLI
                yield module.name


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined (not just imported) in actors/ and runtime/."""
    found: dict[str, type[BaseException]] = {}
    for name in freshrank_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                found[f"{name}.{value.__qualname__}"] = value
    return found


def test_every_exception_class_is_a_freshrank_error_with_a_policy() -> None:
    classes = exception_classes()
    assert KNOWN <= {cls.__name__ for cls in classes.values()}  # the walk found them
    for qualified, cls in classes.items():
        assert issubclass(cls, FreshrankError), qualified
        assert isinstance(cls.http_status, int) and 400 <= cls.http_status <= 599, qualified
        assert isinstance(cls.exit_code, int) and cls.exit_code > 0, qualified
        assert isinstance(cls.public, bool) and isinstance(cls.traceback, bool), qualified


def test_the_builtin_bases_callers_catch_are_kept() -> None:
    for cls in (InvalidEvent, ExplorationError, UnknownCandidates, CodecError, ConfigError):
        assert issubclass(cls, ValueError), cls
    for cls in (SystemFailed, SnapshotError, BrokerUnavailable, TopicLayoutError):
        assert issubclass(cls, RuntimeError), cls
    assert issubclass(SupervisorFailed, RuntimeError)
    assert issubclass(CodecTypeError, TypeError) and issubclass(CodecTypeError, CodecError)
    assert issubclass(ExplorationUnavailable, ExplorationError)


def test_policies_of_the_families() -> None:
    assert (InvalidEvent.http_status, InvalidEvent.exit_code, InvalidEvent.public) == (400, 2, True)
    assert (SystemFailed.http_status, SystemFailed.exit_code) == (503, 1)
    assert (ConfigError.exit_code, ConfigError.traceback, ConfigError.public) == (2, False, False)
    assert (CodecTypeError.http_status, CodecTypeError.public) == (500, False)
    assert HTTPError(418, "teapot").http_status == 418


# --------------------------------------------------------------------------- HTTP mapping


Raiser = Callable[[BaseException], Any]


@pytest.fixture
async def raising() -> AsyncIterator[Raiser]:
    """A client of an app with the real middlewares whose one handler raises ``error``."""
    clients: list[TestClient] = []

    async def start(error: BaseException) -> TestClient:
        settings = HTTPSettings.from_config(HTTPConfig(), 1 << 20, {})
        app = web.Application(middlewares=MIDDLEWARES, handler_args=handler_args(settings))
        app[SETTINGS_KEY] = settings
        app[METRICS_KEY] = HTTPMetrics(dict)

        async def fail(request: web.Request) -> web.Response:
            raise error

        app.router.add_get("/fail", fail)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownCandidates("none of the candidate items is in the catalog"), 400),
        (ExplorationUnavailable("thompson needs n"), 400),
        (SystemFailed("an actor crashed: RuntimeError('boom')"), 503),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
async def test_a_public_error_is_answered_with_its_status_and_message(
    raising: Raiser, error: FreshrankError, status: int
) -> None:
    client = await raising(error)
    response = await client.get("/fail")
    assert response.status == status
    assert await response.json() == {"error": str(error)}
    assert response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    "error",
    [SnapshotError("secret path /var/x"), CodecTypeError("secret type"), KeyError("secret")],
    ids=lambda value: type(value).__name__,
)
async def test_a_private_error_is_an_internal_error_without_its_message(
    raising: Raiser, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    client = await raising(error)
    response = await client.get("/fail")
    assert response.status == 500
    body = await response.json()
    assert body["error"].startswith("internal error (request ") and "secret" not in body["error"]
    assert any(record.exc_info and record.exc_info[1] is error for record in caplog.records)


# --------------------------------------------------------------------------- CLI mapping


def test_cli_exits_with_the_config_error_code_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text("")
    missing = tmp_path / "missing.toml"
    code = main(["tune", str(log), "--format", "jsonl", "--space", str(missing)])
    assert code == ConfigError.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"freshrank: config error: search space {missing}")
    assert "Traceback" not in err


def test_cli_prints_the_traceback_of_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        raise SupervisorFailed("the supervisor crashed: OSError()")
    except SupervisorFailed as error:
        code = report_error(error)
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "SupervisorFailed: the supervisor crashed" in err
