"""The process supervisor behind ``freshrank launch``, with small stand-in child scripts.

Deterministic: every step waits for something a child printed (``ready <pid>``),
an exit code or a process disappearing — never for a sleep.  The timeouts
below are only safety nets that turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import textwrap
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.launch import (
    Backoff,
    ClusterPlan,
    ProcessSpec,
    Supervisor,
    SupervisorFailed,
    describe_exit,
    plan,
)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 20.0  # safety net only

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    mode = sys.argv[1]
    pid = os.getpid()
    if mode == "crash":  # crash (exit 3) on the first N runs, counted in a file
        counter, crashes = Path(sys.argv[2]), int(sys.argv[3])
        runs = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(runs + 1))
        if runs < crashes:
            print(f"crashing {pid}", flush=True)
            sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def on_term(signum, frame):
            print(f"term {pid}", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
    print("to stderr", file=sys.stderr, flush=True)
    print(f"ready {pid} {os.environ.get('STANDIN_TAG', '-')}", flush=True)
    while True:
        signal.pause()
    """
)


@pytest.fixture
def child(tmp_path: Path) -> Path:
    path = tmp_path / "standin.py"
    path.write_text(CHILD, encoding="utf-8")
    return path


class Lines:
    """An output sink that queues each child's lines, to wait for them."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[tuple[str, str]]] = defaultdict(asyncio.Queue)
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, name: str, stream: str, line: str) -> None:
        self.seen.append((name, stream, line))
        self.queues[name].put_nowait((stream, line))

    async def expect(self, name: str, prefix: str) -> str:
        """The next stdout line of ``name`` that starts with ``prefix``."""

        async def scan() -> str:
            while True:
                stream, line = await self.queues[name].get()
                if stream == "stdout" and line.startswith(prefix):
                    return line

        return await asyncio.wait_for(scan(), TIMEOUT)

    async def ready(self, name: str) -> int:
        return int((await self.expect(name, "ready ")).split()[1])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
async def supervise() -> AsyncIterator[Callable[..., tuple[Supervisor, Lines]]]:
    made: list[Supervisor] = []

    def make(specs: list[ProcessSpec], **kwargs: Any) -> tuple[Supervisor, Lines]:
        lines = Lines()
        kwargs.setdefault("backoff_initial", 0.01)
        kwargs.setdefault("backoff_max", 0.04)
        kwargs.setdefault("stop_timeout", 5.0)
        supervisor = Supervisor(specs, output=lines, **kwargs)
        made.append(supervisor)
        return supervisor, lines

    try:
        yield make
    finally:
        for supervisor in made:
            try:
                await supervisor.stop()
            except SupervisorFailed:
                pass  # the test that caused it has already checked it


def spec(name: str, child: Path, *args: str, **env: str) -> ProcessSpec:
    return ProcessSpec(name=name, argv=[sys.executable, str(child), *args], env=dict(env))


# -- plan and backoff: pure ---------------------------------------------------


def test_plan_names_every_process(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    specs = plan(config, ClusterPlan(shards=4, trainers=2, rankers=1))
    path = str(config.resolve())
    expected = [
        *(("shard", k) for k in range(4)),
        *(("trainer", i) for i in range(2)),
        ("ranker", 0),
    ]
    assert [s.name for s in specs] == [f"{role}-{k}" for role, k in expected]
    assert [s.argv for s in specs] == [
        [sys.executable, "-m", "runtime", role, "--id", str(k), "--config", path]
        for role, k in expected
    ]
    assert all(s.env == {} for s in specs)


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one shard"):
        ClusterPlan(0, 1, 1)
    with pytest.raises(ValueError, match="trainers"):
        ClusterPlan(1, -1, 1)


def test_backoff_doubles_caps_and_resets() -> None:
    backoff = Backoff(0.5, 30.0, 60.0)
    delays = [backoff.next(ran_for=1.0) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.next(ran_for=60.0) == 0.5  # a run that lasted long enough resets it
    assert backoff.next(ran_for=1.0) == 1.0
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0, 1.0)


def test_describe_exit() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "signal SIGKILL"


# -- the supervisor, with real child processes ---------------------------------


async def test_all_processes_start_report_and_stop(supervise: Any, child: Path) -> None:
    specs = [spec(f"p-{i}", child, "steady", STANDIN_TAG=f"tag{i}") for i in range(3)]
    supervisor, lines = supervise(specs)
    await supervisor.start()
    await supervisor.start()  # idempotent
    pids = {}
    for i in range(3):
        line = await lines.expect(f"p-{i}", "ready ")
        assert line.split()[2] == f"tag{i}"  # ProcessSpec.env reaches the child
        pids[f"p-{i}"] = int(line.split()[1])
    stats = supervisor.statistics()
    assert set(stats) == {"p-0", "p-1", "p-2"}
    for name, pid in pids.items():
        assert stats[name]["pid"] == pid
        assert stats[name]["running"] is True
        assert stats[name]["restarts"] == 0
        assert stats[name]["last_exit"] is None
        assert stats[name]["uptime"] >= 0.0
    await supervisor.stop()
    stats = supervisor.statistics()
    for name, pid in pids.items():
        assert gone(pid)
        assert stats[name]["running"] is False
        assert stats[name]["last_exit"] == 0  # its SIGTERM handler ran: a clean exit
        assert (name, "stdout", f"term {pid}") in lines.seen
        assert (name, "stderr", "to stderr") in lines.seen
    await supervisor.stop()  # idempotent


async def test_crashed_process_is_restarted_with_backoff(
    supervise: Any, child: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    supervisor, lines = supervise(
        [spec("crashy", child, "crash", str(counter), "1"), spec("steady", child, "steady")]
    )
    await supervisor.start()
    first = int((await lines.expect("crashy", "crashing ")).split()[1])
    second = await lines.ready("crashy")
    assert second != first
    stats = supervisor.statistics()
    assert stats["crashy"]["restarts"] == 1
    assert stats["crashy"]["last_exit"] == 3
    assert stats["crashy"]["backoff"] == 0.01
    assert stats["crashy"]["pid"] == second and stats["crashy"]["running"]
    await lines.ready("steady")
    assert supervisor.statistics()["steady"]["restarts"] == 0  # the others are untouched


async def test_repeated_crashes_back_off_exponentially(
    supervise: Any, child: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="freshrank.launch")
    counter = tmp_path / "runs"
    supervisor, lines = supervise(
        [spec("crashy", child, "crash", str(counter), "4")],
        backoff_initial=0.01,
        backoff_max=0.03,
    )
    await supervisor.start()
    await lines.ready("crashy")
    stats = supervisor.statistics()["crashy"]
    assert stats["restarts"] == 4
    assert stats["last_exit"] == 3
    assert stats["backoff"] == 0.03
    restarts = [r.getMessage() for r in caplog.records if "exited unexpectedly" in r.getMessage()]
    assert len(restarts) == 4
    assert all("crashy" in m and "exit code 3" in m for m in restarts)
    delays = [m.rsplit("restarting in ", 1)[1] for m in restarts]
    assert delays == ["0.01 s", "0.02 s", "0.03 s", "0.03 s"]


async def test_kill_9_is_restarted_with_a_new_pid(supervise: Any, child: Path) -> None:
    supervisor, lines = supervise([spec("victim", child, "steady"), spec("other", child, "steady")])
    await supervisor.start()
    first = await lines.ready("victim")
    other = await lines.ready("other")
    os.kill(first, signal.SIGKILL)
    second = await lines.ready("victim")
    assert second != first and gone(first)
    stats = supervisor.statistics()
    assert stats["victim"]["restarts"] == 1
    assert stats["victim"]["last_exit"] == -signal.SIGKILL
    assert stats["victim"]["pid"] == second
    assert stats["other"]["restarts"] == 0 and stats["other"]["pid"] == other


async def test_stop_kills_a_process_that_ignores_sigterm(supervise: Any, child: Path) -> None:
    supervisor, lines = supervise(
        [spec("polite", child, "steady"), spec("stubborn", child, "stubborn")], stop_timeout=0.5
    )
    await supervisor.start()
    polite = await lines.ready("polite")
    stubborn = await lines.ready("stubborn")
    await asyncio.wait_for(supervisor.stop(), TIMEOUT)
    stats = supervisor.statistics()
    assert stats["polite"]["last_exit"] == 0
    assert stats["stubborn"]["last_exit"] == -signal.SIGKILL
    assert gone(polite) and gone(stubborn)
    assert stats["polite"]["restarts"] == stats["stubborn"]["restarts"] == 0


async def test_concurrent_stops_are_safe(supervise: Any, child: Path) -> None:
    supervisor, lines = supervise([spec("a", child, "steady")])
    await supervisor.start()
    pid = await lines.ready("a")
    await asyncio.gather(supervisor.stop(), supervisor.stop())
    assert gone(pid) and supervisor.statistics()["a"]["last_exit"] == 0


async def test_stop_does_not_wait_for_a_pending_backoff(
    supervise: Any, child: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    supervisor, lines = supervise(
        [spec("crashy", child, "crash", str(counter), "1000")],
        backoff_initial=600.0,
        backoff_max=600.0,
    )
    await supervisor.start()
    await lines.expect("crashy", "crashing ")
    await asyncio.wait_for(supervisor.stop(), TIMEOUT)  # not 600 s
    stats = supervisor.statistics()["crashy"]
    assert stats["restarts"] == 0 and not stats["running"]


async def test_start_fails_loudly_and_cleans_up_when_a_command_cannot_run(
    supervise: Any, child: Path, tmp_path: Path
) -> None:
    missing = ProcessSpec("missing", [str(tmp_path / "no-such-binary")], {})
    supervisor, _ = supervise([spec("first", child, "steady"), missing])
    with pytest.raises(FileNotFoundError):
        await supervisor.start()
    pid = supervisor.statistics()["first"]["pid"]
    assert pid is not None and gone(pid)


async def test_a_crash_inside_the_supervisor_propagates(child: Path) -> None:
    class Boom(Exception):
        pass

    lines = Lines()

    def sink(name: str, stream: str, line: str) -> None:
        lines(name, stream, line)
        if line.startswith("ready "):
            raise Boom(line)

    supervisor = Supervisor(
        [spec("a", child, "steady")], output=sink, backoff_initial=0.01, stop_timeout=5.0
    )
    try:
        await supervisor.start()
        error = await asyncio.wait_for(supervisor.wait_failed(), TIMEOUT)
        assert isinstance(error, Boom)
    finally:
        with pytest.raises(SupervisorFailed) as failed:
            await supervisor.stop()
    assert isinstance(failed.value.__cause__, Boom)
    ready = [line for name, _, line in lines.seen if line.startswith("ready ")]
    pid = int(ready[0].split()[1])
    assert gone(pid)


def test_supervisor_rejects_duplicate_names(child: Path) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Supervisor([spec("a", child, "steady"), spec("a", child, "steady")])


# -- run_launch end to end, as its own OS process -------------------------------

LAUNCHER = textwrap.dedent(
    """
    import asyncio, sys
    from runtime import launch

    child = sys.argv[1]
    specs = [
        launch.ProcessSpec(f"x-{i}", [sys.executable, child, "steady"], {}) for i in range(3)
    ]
    launch.plan = lambda path, cluster: specs  # stand-ins for the shard/trainer/ranker roles
    sys.exit(asyncio.run(launch.run_launch("cluster.toml", launch.ClusterPlan(1, 1, 1))))
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_launch_stops_cleanly_on_a_signal(
    child: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(launcher),
        str(child),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    assert proc.stdout is not None
    pids: dict[str, int] = {}
    output: list[str] = []
    try:

        async def until_ready() -> None:
            while len(pids) < 3 or "freshrank launch: started 3 processes" not in output:
                raw = await proc.stdout.readline()  # type: ignore[union-attr]
                assert raw, f"launcher exited early: {output}"
                line = raw.decode().rstrip("\n")
                output.append(line)
                name, _, rest = line.partition(" | ")
                if rest.startswith("ready "):
                    pids[name] = int(rest.split()[1])

        await asyncio.wait_for(until_ready(), TIMEOUT)
        assert sorted(pids) == ["x-0", "x-1", "x-2"]
        proc.send_signal(sig)
        rest, errors = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        assert proc.returncode == 0, errors.decode()
        lines = output + rest.decode().splitlines()
        for name, pid in pids.items():
            assert gone(pid)
            assert f"{name} | term {pid}" in lines  # each child got SIGTERM and exited 0
        assert lines[-1] == "freshrank launch: stopped cleanly"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in pids.values():
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
