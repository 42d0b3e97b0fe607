"""One supervisor per process: it owns every actor and background task.

Built on :class:`asyncio.TaskGroup` (the scope owns its tasks; the first error
cancels the rest), with faust-style ordered services (dependencies start in order
and stop in reverse)::

    start(children)                       stop()
      ├─ enter the TaskGroup                ├─ stop children, last first
      ├─ child[0].start() … child[n].start()└─ leave the TaskGroup
      └─ running ── a task raises ─► log once (with traceback), cancel every other
                                     task, fail every waiter, remember the cause

After a crash :meth:`check` (and so every System call) raises :class:`SystemFailed`
with the cause, :meth:`guard` turns a pending await into that error instead of a
hang, and the owner re-raises it when its scope ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from runtime.errors import Unavailable

log = logging.getLogger("freshrank.supervisor")
T = TypeVar("T")


class SystemFailed(Unavailable, RuntimeError):
    """A task of the system crashed, or the system is not running: it accepts no work."""


class Service(Protocol):
    """What the supervisor starts and stops: actors and other owned workers."""

    name: str

    def attach(self, supervisor: Supervisor) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Supervisor:
    """Starts services in order, owns their tasks, stops them in reverse."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._children: list[Service] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_failure: list[Callable[[BaseException], None]] = []
        self._guarded: dict[asyncio.Task[Any], int] = {}  # tasks in guard(), how deep
        self._failed_waiters: set[asyncio.Task[Any]] = set()

    @property
    def running(self) -> bool:
        return self._group is not None and self.failure is None

    async def start(self, children: Sequence[Service]) -> None:
        """Enter the task group, then start ``children`` in order (each may spawn tasks)."""
        entered = asyncio.get_running_loop().create_future()
        self._stopping.clear()
        self._runner = asyncio.create_task(self._run(entered), name=f"{self.name}:supervisor")
        await entered
        for child in children:
            child.attach(self)
            await child.start()
            self._children.append(child)

    async def stop(self) -> None:
        """Stop every child, last started first, then close the task group."""
        for child in reversed(self._children):
            await child.stop()
        self._children.clear()
        for task in list(self._tasks):  # a task its service left running ends with the group
            task.cancel()
        self._stopping.set()
        if self._runner is not None:
            await self._runner
            self._runner = None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task owned by the group: if it raises, the whole system fails with its error."""
        if self._group is None:
            coro.close()
            raise SystemFailed(f"{self.name}: not running, cannot start {name}")
        task = self._group.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def on_failure(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback`` with the cause when the system fails (fail waiters with it)."""
        self._on_failure.append(callback)
        if self.failure is not None:
            callback(self.failure)

    def check(self) -> None:
        if self.failure is not None:
            raise SystemFailed(f"{self.name}: a task crashed: {self.failure!r}") from self.failure
        if self._group is None:
            raise SystemFailed(f"{self.name}: not running (use 'async with' or start())")

    async def guard(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, but raise SystemFailed at once if the system fails meanwhile.

        The caller's own task awaits it (no task per call: this is on every batch's path);
        a crash cancels the guarded tasks, and the cancellation turns into the error."""
        try:
            self.check()
        except SystemFailed:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise
        waiter = asyncio.current_task()
        if waiter is None:
            raise RuntimeError("guard() must be awaited from a task")
        self._guarded[waiter] = self._guarded.get(waiter, 0) + 1
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if self._forget_cancel(waiter):
                self.check()  # raises: the system failed
            raise
        finally:
            depth = self._guarded.pop(waiter) - 1
            if depth:
                self._guarded[waiter] = depth
        self._forget_cancel(waiter)  # the crash's cancel, if the awaitable finished anyway
        self.check()
        return result

    def _forget_cancel(self, waiter: asyncio.Task[Any]) -> bool:
        """Take back the cancel a crash sent ``waiter``; whether there was one."""
        if waiter not in self._failed_waiters:
            return False
        self._failed_waiters.discard(waiter)
        waiter.uncancel()
        return True

    async def wait_failed(self) -> BaseException:
        """The first crash (for a daemon's main loop)."""
        await self.failed.wait()
        assert self.failure is not None
        return self.failure

    async def _run(self, entered: asyncio.Future[None]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                entered.set_result(None)
                await self._stopping.wait()
        except BaseExceptionGroup as errors:
            self._crashed(_first_cause(errors))
        finally:
            self._group = None

    def _crashed(self, error: BaseException) -> None:
        if self.failure is not None:
            return
        self.failure = error
        log.error("%s: crashed: %r", self.name, error, exc_info=error)
        self.failed.set()
        for waiter in self._guarded:
            self._failed_waiters.add(waiter)
            waiter.cancel()
        for callback in self._on_failure:
            callback(error)


def _first_cause(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    first = errors.exceptions[0]
    return _first_cause(first) if isinstance(first, BaseExceptionGroup) else first
