"""One supervisor per process (runtime/supervisor.py): services start in order and stop
in reverse, the first crash cancels the rest and fails every waiter, and an HTTP
request that waits on learning gets a 503 with the reason instead of a hang."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from runtime import Config, System, SystemFailed
from runtime.http import make_app
from runtime.supervisor import Supervisor


class Recorder:
    def __init__(self, name: str, log: list[str], crash: bool = False) -> None:
        self.name, self.log, self.crash = name, log, crash
        self.supervisor: Supervisor | None = None

    def attach(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        assert self.supervisor is not None
        self.supervisor.spawn(self._run(), self.name)

    async def _run(self) -> None:
        try:
            if self.crash:
                raise RuntimeError(f"{self.name} broke")
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.log.append(f"cancelled {self.name}")
            raise

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


async def test_services_start_in_order_and_stop_in_reverse() -> None:
    log: list[str] = []
    supervisor = Supervisor("test")
    await supervisor.start([Recorder("a", log), Recorder("b", log)])
    await supervisor.stop()
    assert log[:4] == ["start a", "start b", "stop b", "stop a"]
    assert supervisor.failure is None


async def test_the_first_crash_cancels_the_rest_and_fails_waiters() -> None:
    log: list[str] = []
    supervisor = Supervisor("test")
    failed: list[BaseException] = []
    supervisor.on_failure(failed.append)
    await supervisor.start([Recorder("a", log), Recorder("b", log, crash=True)])
    error = await asyncio.wait_for(supervisor.wait_failed(), 10)
    assert isinstance(error, RuntimeError) and failed == [error]
    assert "cancelled a" in log
    with pytest.raises(SystemFailed, match="b broke"):
        supervisor.check()
    with pytest.raises(SystemFailed, match="b broke"):
        await supervisor.guard(asyncio.Event().wait())  # would hang without the guard
    await supervisor.stop()


async def test_a_crash_fails_a_pending_guarded_wait_and_leaves_its_task_usable() -> None:
    supervisor = Supervisor("test")
    crash = asyncio.Event()

    class Crasher(Recorder):
        async def _run(self) -> None:
            await crash.wait()
            raise RuntimeError("late crash")

    await supervisor.start([Crasher("c", [])])
    assert await supervisor.guard(asyncio.sleep(0, "done")) == "done"
    outcome: list[str] = []

    async def waiter() -> None:
        try:  # guarded twice, as a guarded call that itself guards
            await supervisor.guard(supervisor.guard(asyncio.Event().wait()))
        except SystemFailed as error:
            outcome.append(str(error))
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the crash's cancel taken back
        await asyncio.sleep(0)  # and not delivered later
        outcome.append("still running")

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    crash.set()
    await asyncio.wait_for(task, 10)
    assert len(outcome) == 2 and "late crash" in outcome[0] and outcome[1] == "still running"
    await supervisor.stop()


async def test_an_ingest_waiting_on_learning_gets_a_503_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = Config.from_dict({"state": {"restore": False}, "ingest": {"dead_letter_path": ""}})
    with pytest.raises(SystemFailed):
        async with System(config) as system:
            await system.ingest([{"user": "a", "item": "x"}])

            def explode(batch: Any) -> Any:
                raise RuntimeError("trainer lost its mind")

            monkeypatch.setattr(system.trainer, "train_steps", explode)
            async with TestClient(TestServer(make_app(system))) as client:
                resp = await asyncio.wait_for(
                    client.post("/v1/events", json=[{"user": "a", "item": "y"}]), 30
                )
                body = await resp.json()
                assert resp.status == 503 and "trainer lost its mind" in body["error"]
                health = await client.get("/v1/healthz")
                assert health.status == 503
