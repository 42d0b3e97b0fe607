"""The actor base: one inbox, one ``handle()``, tasks owned by the process's supervisor.

Every task an actor starts runs in its :class:`~runtime.supervisor.Supervisor`'s task
group, so an exception in one fails the whole system loudly (logged once, every
other task cancelled, every waiter failed) instead of dying in the background; the
actor also tracks its own tasks so that ``stop()`` cancels and awaits them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from runtime.transport import Channel, Envelope

if TYPE_CHECKING:
    from runtime.supervisor import Supervisor


class Actor:
    """Reads messages from ``inbox`` one at a time and passes each to ``handle``."""

    def __init__(self, name: str, inbox: Channel | None = None) -> None:
        self.name = name
        self.inbox = inbox
        self.handled = 0
        self.supervisor: Supervisor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._busy = False

    def attach(self, supervisor: Supervisor) -> None:
        """The supervisor that owns this actor's tasks (before ``start``)."""
        self.supervisor = supervisor

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

    async def handle_envelope(self, envelope: Envelope) -> None:
        """Handle a received message; actors that need its log position override this."""
        await self.handle(envelope.message)

    @property
    def idle(self) -> bool:
        """No message in the inbox and none being handled."""
        return not self._busy and (self.inbox is None or self.inbox.qsize() == 0)

    def statistics(self) -> dict[str, Any]:
        return {"handled": self.handled, "inbox": self.inbox.qsize() if self.inbox else 0}

    def spawn(self, coro: Coroutine[Any, Any, Any], label: str) -> asyncio.Task[Any]:
        """Start a task in the supervisor's group: its exception fails the system."""
        if self.supervisor is None:
            coro.close()
            raise RuntimeError(f"{self.name}: started without a supervisor")
        task = self.supervisor.spawn(coro, f"{self.name}:{label}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _inbox_loop(self) -> None:
        assert self.inbox is not None
        while True:
            envelope = await self.inbox.receive()
            self._busy = True
            try:
                await self.handle_envelope(envelope)
            finally:
                self._busy = False
            self.handled += 1
