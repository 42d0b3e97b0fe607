"""The worker processes of ``freshrank tune``: one single-process executor per slot, so a
worker that dies (a crash, the OOM killer) fails only the trial it was running.

Ctrl-C reaches the whole process group; the parent alone handles it: workers ignore
SIGINT, and :meth:`WorkerSlots.terminate` ends them by the pid each one records when
it starts (its executor offers no public way to reach its processes before Python
3.14).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from runtime.tune_trial import TrialJob, TrialRun, run_trial

WORKER_START_S = 10.0
"""How long :meth:`WorkerSlots.terminate` waits for a just-spawned worker to record its pid."""


def _start_worker(pid: ctypes.c_int) -> None:
    """Worker initializer: record the pid for the parent, leave Ctrl-C to the parent (it
    ends us)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pid.value = os.getpid()


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C while a worker is spawned: the parent's executor is never interrupted
    half-way (a worker started but not yet known would be orphaned), and the worker (or
    the fork server it is forked from) inherits SIGINT blocked: never interrupted, even
    before its initializer runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; it owns Ctrl-C
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def _worker_context() -> Any:
    """forkserver where there is fork: a worker is a fork of a single-threaded server that
    imported the trial code once (a fast start, never a fork of a threaded parent); else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, run_trial.__module__])
    return context


@dataclass
class _Slot:
    """One slot's executor and the pid its worker recorded (0 until it has started)."""

    executor: ProcessPoolExecutor
    pid: ctypes.c_int
    spawned: bool = False

    def end_worker(self) -> None:
        """SIGTERM the worker, if one was spawned and has not been reaped yet."""
        if not self.spawned:
            return
        deadline = time.monotonic() + WORKER_START_S
        while self.pid.value == 0 and time.monotonic() < deadline:
            time.sleep(0.005)  # spawned, its initializer has not run yet
        # a reaped worker is no longer a child: never a signal to a pid reused since
        for child in multiprocessing.active_children():
            if self.pid.value and child.pid == self.pid.value:
                child.terminate()


class WorkerSlots:
    """``size`` single-process executors: a worker that dies takes down only its own trial,
    and is replaced.  Workers are reused across trials (imports and JIT load once)."""

    def __init__(self, size: int) -> None:
        self._context = _worker_context()
        self._slots: list[_Slot | None] = [None] * size

    def __enter__(self) -> WorkerSlots:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.terminate()

    def _slot(self, number: int) -> _Slot:
        slot = self._slots[number]
        if slot is None:
            pid = self._context.RawValue(ctypes.c_int, 0)
            executor = ProcessPoolExecutor(
                1, self._context, initializer=_start_worker, initargs=(pid,)
            )
            slot = self._slots[number] = _Slot(executor, pid)
        return slot

    def _discard(self, number: int) -> None:
        slot = self._slots[number]
        self._slots[number] = None
        if slot is not None:
            slot.executor.shutdown(wait=True)

    def run(
        self,
        jobs: Sequence[TrialJob],
        on_done: Callable[[TrialJob, TrialRun], None],
        target: Callable[[TrialJob], TrialRun] = run_trial,
    ) -> dict[int, TrialRun]:
        """Run ``target`` on every job (a picklable module-level function), at most one per
        slot at a time; results by trial number."""
        pending = deque(jobs)
        free = list(range(len(self._slots)))
        running: dict[Future[TrialRun], tuple[int, TrialJob]] = {}
        runs: dict[int, TrialRun] = {}
        while pending or running:
            while pending and free:
                slot, job = free.pop(), pending.popleft()
                # built outside: its queues start multiprocessing's resource tracker, which
                # unblocks SIGINT once it is spawned
                worker = self._slot(slot)
                with _sigint_deferred():  # the first submit spawns the slot's worker
                    running[worker.executor.submit(target, job)] = (slot, job)
                    worker.spawned = True
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                slot, job = running.pop(future)
                run = self._outcome(future, slot)
                free.append(slot)
                runs[job.number] = run
                on_done(job, run)
        return runs

    def _outcome(self, future: Future[TrialRun], slot: int) -> TrialRun:
        try:
            return future.result()
        except BrokenProcessPool:
            self._discard(slot)
            error = "the worker process died (crash, signal or out of memory)"
        except Exception as failure:  # e.g. a result that cannot be pickled
            error = f"{type(failure).__name__}: {failure}"
        return TrialRun(None, 0.0, error)

    def close(self) -> None:
        for slot in range(len(self._slots)):
            self._discard(slot)

    def terminate(self) -> None:
        """End every worker now (Ctrl-C): queued trials are cancelled, running ones killed."""
        slots = [slot for slot in self._slots if slot is not None]
        self._slots = [None] * len(self._slots)
        for slot in slots:
            slot.end_worker()
        for slot in slots:
            slot.executor.shutdown(wait=True, cancel_futures=True)
