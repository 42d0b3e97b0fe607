"""WorkerSlots.terminate ends a running worker through the pid the worker recorded
(runtime/tune_workers.py), without reaching into the executor."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from runtime.config import Config
from runtime.tune_trial import TrialJob, TrialRun
from runtime.tune_workers import WorkerSlots


def record_pid_then_hang(job: TrialJob) -> TrialRun:
    """A worker target that says who it is, then runs far longer than the test waits."""
    Path(job.log).write_text(str(os.getpid()))
    time.sleep(120)
    return TrialRun({}, 120.0)


def _wait_for(path: Path, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"the worker never wrote {path}"
        time.sleep(0.02)
    return path.read_text()


def test_terminate_ends_a_running_worker(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    job = TrialJob(0, Config(), str(pid_file), "jsonl", None)
    runs: dict[int, TrialRun] = {}
    slots = WorkerSlots(1)
    runner = threading.Thread(
        target=lambda: runs.update(slots.run([job], lambda j, r: None, record_pid_then_hang))
    )
    runner.start()
    worker = int(_wait_for(pid_file, 60))
    assert worker != os.getpid()
    started = time.monotonic()
    slots.terminate()
    runner.join(60)
    assert not runner.is_alive() and time.monotonic() - started < 60
    assert runs[0].summary is None and "worker process died" in (runs[0].error or "")
    try:
        os.kill(worker, 0)
    except ProcessLookupError:
        pass  # ended and reaped
    else:
        raise AssertionError(f"worker {worker} is still running")
