"""``freshrank launch CONFIG``: start every process of a deploy config and supervise it.

A local cluster is a handful of OS processes (learner shards, trainers,
rankers) that only talk to each other through Kafka.  Something has to start
them, notice when one dies and bring it back, and stop them all together.  On
a real deployment that is systemd (``Restart=on-failure``) or Kubernetes (a
pod's restart policy); this module is the same policy in a few hundred lines
of asyncio, so a developer gets it with one command and no other tool:

* every process runs in **its own process group**: a Ctrl-C in the terminal
  (SIGINT to the foreground group) reaches only the supervisor, which then
  stops the children in order with SIGTERM instead of them all dying at once
  mid-write; and a signal the supervisor sends to a child reaches the child's
  own helpers too (``killpg``), like systemd's ``KillMode=control-group``;
* a process that exits while the supervisor is not stopping (any exit code,
  or a signal such as ``kill -9``) is logged and **restarted after an
  exponential backoff** (``backoff_initial`` doubling up to ``backoff_max``,
  back to ``backoff_initial`` once a run lasted ``backoff_reset_after``
  seconds): a crash loop (bad config, broker down) costs a restart every
  ``backoff_max`` seconds instead of a busy loop, while a process that ran for
  a while and then crashed comes back almost at once — systemd's
  ``RestartSec`` with ``RestartSteps``/``RestartMaxDelaySec``;
* ``stop()`` sends SIGTERM to every process, waits up to ``stop_timeout`` for
  each (a shard uses that time to write its checkpoint), then SIGKILLs the
  stragglers — systemd's ``TimeoutStopSec``;
* every task the supervisor starts is owned and awaited; an exception in one
  (a bug in the supervisor itself, not a child's exit) is never swallowed:
  :meth:`Supervisor.wait_failed` returns it and :meth:`Supervisor.stop`
  raises it after the clean-up.

Output: the children's stdout and stderr are pipes that the supervisor reads;
each line is written to the supervisor's own stdout (resp. stderr) prefixed
with the process name (``shard-2 | ...``), so the interleaved output of seven
processes stays readable.  Pass ``output=`` to send the lines elsewhere (the
tests use it to synchronise on what a child printed).  A child's stdin is
``/dev/null``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import FreshrankError

__all__ = [
    "Backoff",
    "ClusterPlan",
    "ProcessSpec",
    "Supervisor",
    "SupervisorFailed",
    "describe_exit",
    "plan",
    "run_launch",
]

LOG = logging.getLogger("freshrank.launch")

#: ``output(process_name, stream, line)``: stream is ``"stdout"`` or ``"stderr"``,
#: line has no trailing newline.
OutputSink = Callable[[str, str, str], None]

_READ_CHUNK = 65536
_MAX_LINE = 65536  # a longer "line" is passed on in pieces of this size


@dataclass
class ProcessSpec:
    """One supervised process: its name (``shard-0``), command line and extra environment.

    ``env`` is added to the supervisor's own environment (it does not replace it),
    so ``PATH``, ``KAFKA_*`` secrets and the virtualenv reach every child.
    """

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class ClusterPlan:
    """How many processes of each role a deploy config asks for."""

    shards: int
    trainers: int
    rankers: int

    def __post_init__(self) -> None:
        for role in ("shards", "trainers", "rankers"):
            value = getattr(self, role)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ClusterPlan.{role} must be an integer >= 0, got {value!r}")
        if self.shards < 1:
            raise ValueError("a cluster needs at least one shard")


def plan(config_path: str | Path, cluster: ClusterPlan) -> list[ProcessSpec]:
    """Every process the deploy config names, as ``python -m runtime ROLE --id K --config PATH``.

    ``sys.executable -m runtime`` rather than the ``freshrank`` script: the
    children then run in exactly the interpreter and virtualenv of the launcher,
    whether or not the console script is on ``PATH``.  The config path is made
    absolute so the children do not depend on the launcher's working directory.
    """
    path = str(Path(config_path).resolve())
    specs: list[ProcessSpec] = []
    for role, count in (
        ("shard", cluster.shards),
        ("trainer", cluster.trainers),
        ("ranker", cluster.rankers),
    ):
        for k in range(count):
            argv = [sys.executable, "-m", "runtime", role, "--id", str(k), "--config", path]
            specs.append(ProcessSpec(name=f"{role}-{k}", argv=argv, env={}))
    return specs


class Backoff:
    """The restart delay: doubles after every crash, resets after a long enough run.

    Pure (no clock of its own): :meth:`next` is given how long the run that just
    ended lasted, so it is unit-tested without any process or timer.
    """

    def __init__(self, initial: float, maximum: float, reset_after: float) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < backoff_initial <= backoff_max, got {initial}, {maximum}")
        self.initial = initial
        self.maximum = maximum
        self.reset_after = reset_after
        self._next = initial

    def next(self, ran_for: float) -> float:
        """The delay before restarting a process whose last run lasted ``ran_for`` seconds."""
        if ran_for >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self.maximum, max(delay * 2, self.initial))
        return delay


class SupervisorFailed(FreshrankError, RuntimeError):
    """The supervisor itself failed (not a child: a child's exit is handled by restarting it)."""


@dataclass
class _Child:
    spec: ProcessSpec
    process: asyncio.subprocess.Process | None = None
    started_at: float | None = None  # loop.time() of the current run, None when not running
    restarts: int = 0
    last_exit: int | None = None  # returncode: >= 0 exit code, < 0 killed by that signal
    last_backoff: float | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


def describe_exit(returncode: int) -> str:
    """``exit code 3`` / ``signal SIGKILL``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"signal {name}"
    return f"exit code {returncode}"


def _default_output(name: str, stream: str, line: str) -> None:
    target = sys.stderr if stream == "stderr" else sys.stdout
    target.write(f"{name} | {line}\n")
    target.flush()


class Supervisor:
    """Start, watch, restart (with backoff) and stop a set of processes.

    ``start()`` starts every process (and raises if one cannot even be
    executed); ``stop()`` terminates them all (SIGTERM, then SIGKILL after
    ``stop_timeout``) and is idempotent; ``statistics()`` reports each
    process.  Owned watcher tasks: one per process.
    """

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        backoff_reset_after: float = 60.0,
        stop_timeout: float = 30.0,
        log: logging.Logger = LOG,
        output: OutputSink | None = None,
    ) -> None:
        names = [spec.name for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate process names: {duplicates}")
        Backoff(backoff_initial, backoff_max, backoff_reset_after)  # validate early
        self._children = {spec.name: _Child(spec) for spec in specs}
        self._backoff = (backoff_initial, backoff_max, backoff_reset_after)
        self.stop_timeout = stop_timeout
        self.log = log
        self.output = output or _default_output
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._stopping = asyncio.Event()
        self._failed = asyncio.Event()
        self._failure: BaseException | None = None
        self._stop_task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start every process, then one watcher task per process (idempotent).

        If a process cannot be executed at all (``OSError``: missing binary,
        no permission), the ones already started are stopped and the error is
        raised: that is a configuration error, not a crash worth retrying.
        """
        if self._started:
            return
        self._started = True
        try:
            for child in self._children.values():
                await self._spawn(child)
        except BaseException:
            await self.stop()
            raise
        for name, child in self._children.items():
            task = asyncio.create_task(self._watch(child), name=f"supervisor:{name}")
            task.add_done_callback(self._task_done)
            self._watchers[name] = task

    async def stop(self) -> None:
        """Terminate every process and await every watcher (idempotent, safe to call concurrently).

        Raises :class:`SupervisorFailed` (after the clean-up) if a watcher task
        crashed at any point.
        """
        if not self._started:
            return
        self._stopping.set()
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._shutdown(), name="supervisor:stop")
        await asyncio.shield(self._stop_task)
        if self._failure is not None:
            raise SupervisorFailed(f"the supervisor crashed: {self._failure!r}") from self._failure

    async def wait_failed(self) -> BaseException:
        """Return the first crash of a watcher task (never returns while all is well)."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def statistics(self) -> dict[str, dict[str, Any]]:
        """Per process: pid, restarts, last exit code (negative: signal), running, uptime (s)."""
        now = asyncio.get_running_loop().time() if self._started else None
        stats: dict[str, dict[str, Any]] = {}
        for name, child in self._children.items():
            running = (
                child.process is not None
                and child.process.returncode is None
                and child.started_at is not None
            )
            stats[name] = {
                "pid": child.process.pid if child.process is not None else None,
                "restarts": child.restarts,
                "last_exit": child.last_exit,
                "running": running,
                "uptime": (now - child.started_at)
                if running and now is not None and child.started_at is not None
                else 0.0,
                "backoff": child.last_backoff,
            }
        return stats

    # -- internals -------------------------------------------------------------

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """Record the first crash of an owned task (watcher or output pump) at once."""
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self._failure is None:
            self._failure = error
            self.log.error("supervisor task %s crashed: %r", task.get_name(), error)
            self._failed.set()

    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = {**os.environ, **spec.env}
        process = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            process_group=0,  # its own group: terminal signals don't leak, killpg reaches helpers
        )
        child.process = process
        child.started_at = asyncio.get_running_loop().time()
        assert process.stdout is not None and process.stderr is not None
        child.pumps = [
            asyncio.create_task(
                self._pump(spec.name, "stdout", process.stdout), name=f"supervisor:{spec.name}:out"
            ),
            asyncio.create_task(
                self._pump(spec.name, "stderr", process.stderr), name=f"supervisor:{spec.name}:err"
            ),
        ]
        for pump in child.pumps:
            pump.add_done_callback(self._task_done)
        self.log.info("started %s (pid %d)", spec.name, process.pid)

    async def _pump(self, name: str, stream: str, reader: asyncio.StreamReader) -> None:
        """Copy a child's output line by line to ``self.output``."""
        buffer = b""
        while chunk := await reader.read(_READ_CHUNK):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self.output(name, stream, line.decode("utf-8", "replace").rstrip("\r"))
            while len(buffer) >= _MAX_LINE:
                piece, buffer = buffer[:_MAX_LINE], buffer[_MAX_LINE:]
                self.output(name, stream, piece.decode("utf-8", "replace"))
        if buffer:
            self.output(name, stream, buffer.decode("utf-8", "replace"))

    async def _watch(self, child: _Child) -> None:
        """Wait for the process to exit; restart it (with backoff) unless stopping."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(*self._backoff)
        while True:
            process = child.process
            assert process is not None and child.started_at is not None
            if not await self._exited_or_stopping(process):
                await self._terminate(child)
                return
            returncode = await self._reap(child)
            ran_for = loop.time() - child.started_at
            child.started_at = None
            if self._stopping.is_set():
                return
            delay = backoff.next(ran_for)
            child.last_backoff = delay
            self.log.warning(
                "%s (pid %d) exited unexpectedly with %s after %.1f s; restarting in %.2f s",
                child.spec.name,
                process.pid,
                describe_exit(returncode),
                ran_for,
                delay,
            )
            # The backoff delay is a real timer; stop() interrupts it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            if self._stopping.is_set():
                return
            child.restarts += 1
            await self._spawn(child)

    async def _exited_or_stopping(self, process: asyncio.subprocess.Process) -> bool:
        """True when the process exited on its own, False when stop() was requested first."""
        if self._stopping.is_set():
            return process.returncode is not None
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (exited, stopping):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        return exited.done() and not exited.cancelled() and not self._stopping.is_set()

    async def _reap(self, child: _Child) -> int:
        """After the leader exited: kill what is left of its group, drain its output."""
        process = child.process
        assert process is not None
        returncode = await process.wait()
        child.last_exit = returncode
        # Leftover helpers in the child's group would keep the pipes open (and outlive
        # it): systemd's KillMode=control-group does the same.
        _killpg(process.pid, signal.SIGKILL)
        pumps, child.pumps = child.pumps, []
        results = await asyncio.gather(*pumps, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # a supervisor bug (e.g. in the output sink): it propagates
        return returncode

    async def _terminate(self, child: _Child) -> None:
        """SIGTERM, wait up to stop_timeout, then SIGKILL; always reaps the process."""
        process = child.process
        assert process is not None
        if process.returncode is None:
            _killpg(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.stop_timeout):  # never drops a cancel
                    await process.wait()
            except TimeoutError:
                self.log.warning(
                    "%s (pid %d) did not stop within %.1f s of SIGTERM; sending SIGKILL",
                    child.spec.name,
                    process.pid,
                    self.stop_timeout,
                )
                _killpg(process.pid, signal.SIGKILL)
        returncode = await self._reap(child)
        child.started_at = None
        self.log.info("stopped %s (%s)", child.spec.name, describe_exit(returncode))

    async def _shutdown(self) -> None:
        """Stop every process: through its watcher, or directly if the watcher is gone."""
        watchers = list(self._watchers.values())
        # Watchers see _stopping and terminate their own process (so a watcher that is
        # just spawning a restart cannot leave it running).  Processes without a live
        # watcher (start() failed half-way, or a watcher crashed) are terminated here.
        orphans = [
            child
            for name, child in self._children.items()
            if child.process is not None
            and (name not in self._watchers or self._watchers[name].done())
            and (child.process.returncode is None or child.pumps)
        ]
        results = await asyncio.gather(
            *watchers, *(self._terminate(child) for child in orphans), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and self._failure is None:
                if isinstance(result, asyncio.CancelledError):
                    continue
                self._failure = result
                self._failed.set()


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def run_launch(config_path: str | Path, cluster: ClusterPlan) -> int:
    """Run every process of ``plan(config_path, cluster)`` until SIGTERM/SIGINT, then stop them.

    Returns 0 after a clean stop.  A crash of the supervisor itself stops the
    children and raises :class:`SupervisorFailed` (the process exits non-zero
    with the traceback), rather than leaving unsupervised processes behind.
    """
    # Same log format as the daemon; a no-op when the embedding app configured logging.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    supervisor = Supervisor(plan(config_path, cluster))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.start()
        count = len(supervisor.statistics())
        print(f"freshrank launch: started {count} processes", flush=True)
        stopping = asyncio.ensure_future(stop.wait())
        failing = asyncio.ensure_future(supervisor.wait_failed())
        try:
            await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, failing):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await supervisor.stop()  # raises SupervisorFailed if a watcher crashed
        for sig in signals:
            loop.remove_signal_handler(sig)
    print("freshrank launch: stopped cleanly", flush=True)
    return 0
