"""The actor base: one inbox, one ``handle()``, owned tasks, crashes that propagate.

Modelled on aiokafka's owned background tasks and trio's rule that exceptions
always propagate: every task an actor starts is tracked, cancelled and awaited
on ``stop()``, and an exception in one is reported to the system (which fails
loudly) instead of dying silently in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from runtime.transport import Channel

CrashHandler = Callable[["Actor", BaseException], None]


class Actor:
    """Reads messages from ``inbox`` one at a time and passes each to ``handle``."""

    def __init__(self, name: str, inbox: Channel | None = None) -> None:
        self.name = name
        self.inbox = inbox
        self.handled = 0
        self.on_crash: CrashHandler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._busy = False

    async def start(self) -> None:
        """Start the inbox loop (idempotent)."""
        if self._started:
            return
        self._started = True
        if self.inbox is not None:
            self.spawn(self._inbox_loop(), "inbox")

    async def stop(self) -> None:
        """Cancel and await every owned task (idempotent)."""
        if not self._started:
            return
        self._started = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def handle(self, message: Any) -> None:
        raise NotImplementedError

    @property
    def idle(self) -> bool:
        """No message in the inbox and none being handled."""
        return not self._busy and (self.inbox is None or self.inbox.qsize() == 0)

    def statistics(self) -> dict[str, Any]:
        return {"handled": self.handled, "inbox": self.inbox.qsize() if self.inbox else 0}

    def spawn(self, coro: Coroutine[Any, Any, Any], label: str) -> asyncio.Task[Any]:
        """Start a task this actor owns; its exception reaches ``on_crash``."""
        task = asyncio.create_task(coro, name=f"{self.name}:{label}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self.on_crash is not None:
            self.on_crash(self, error)

    async def _inbox_loop(self) -> None:
        assert self.inbox is not None
        while True:
            message = await self.inbox.recv()
            self._busy = True
            try:
                await self.handle(message)
            finally:
                self._busy = False
            self.handled += 1
