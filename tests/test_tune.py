"""`freshrank tune`: random search with successive halving over replays, in worker processes."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from runtime.config import Config, ConfigError, ModelConfig
from runtime.replay import open_log, replay
from runtime.system import System
from runtime.tune import (
    TrialJob,
    TrialOutcome,
    TrialRun,
    TuneOptions,
    TuneReport,
    WorkerSlots,
    build_space,
    choose_metric,
    default_space,
    format_table,
    load_space,
    parse_set,
    run_tune,
    rung_fractions,
    sample_settings,
    sort_trials,
    write_best_config,
)

ROOT = Path(__file__).resolve().parents[1]
GENRES = ["war", "comedy", "drama", "horror"]
BASE_TOML = "[model]\nbits = 16\n"
SPACE = {
    "ftrl.alpha": [0.05, 0.2, 0.5],
    "ftrl.l2": [0.0, -1.0],  # -1 is invalid: those trials must fail with the ConfigError text
    "training.negatives": [1, 4],
}


def write_genre_log(path: Path, events: int, seed: int = 0) -> Path:
    """Implicit interactions of users who mostly pick items of their favourite genre."""
    rng = random.Random(seed)
    items = [f"i{k}" for k in range(200)]
    lines = [
        {"item": item, "item_features": {"genre": [GENRES[k % 4]]}} for k, item in enumerate(items)
    ]
    for _ in range(events):
        user = rng.randrange(40)
        liked = [item for k, item in enumerate(items) if k % 4 == user % 4]
        item = rng.choice(liked if rng.random() < 0.8 else items)
        lines.append({"user": f"u{user}", "item": item, "user_features": {"age": str(user % 3)}})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[TuneReport, Path, Path]:
    """One tune on a small log with two worker processes, shared by the tests below."""
    folder = tmp_path_factory.mktemp("tune")
    log = write_genre_log(folder / "events.jsonl", 800)
    base = Config.from_dict({"model": {"bits": 16}})
    options = TuneOptions(
        str(log), "jsonl", base, dict(SPACE), trials=8, seed=1, jobs=2, min_fraction=0.5
    )
    report = run_tune(options)
    out = write_best_config(folder / "best.toml", report, str(log))
    return report, log, out


async def fresh_replay(config: Config, log: Path, folder: Path) -> dict[str, Any]:
    config.state.restore = False
    config.ingest.dead_letter_path = str(folder / "dead_letters.jsonl")
    async with System(config) as system:
        return await replay(system, open_log(log, "jsonl", config.training.batch_size))


async def test_best_config_loads_and_reproduces_its_metric(
    tuned: tuple[TuneReport, Path, Path], tmp_path: Path
) -> None:
    report, log, out = tuned
    assert report.metric == "hr@10" and report.best is not None
    config = Config.load(out)
    assert config == Config.from_dict(report.best.config or {})
    result = await fresh_replay(config, log, tmp_path)
    timing = {"seconds", "events_per_s"}
    assert result["hr@10"] == report.best.metric("hr@10")
    assert {k: v for k, v in result.items() if k not in timing} == {
        k: v for k, v in report.best.summary.items() if k not in timing
    }


def test_best_trial_is_the_best_of_the_table(tuned: tuple[TuneReport, Path, Path]) -> None:
    report, _, _ = tuned
    assert report.best is report.trials[0]
    full = [t for t in report.trials if t.ok and t.fraction == 1.0]
    assert report.base in full  # the base config always runs on the whole log
    assert report.best.metric("hr@10") == max(t.metric("hr@10") or 0.0 for t in full)
    ok = [t for t in report.trials if t.ok]
    # successive halving: the best 1/3 of the first rung (and the base) finished the log
    assert len(full) <= math.ceil(len(ok) / 3) + 1 < len(ok)
    assert report.trials == sort_trials(report.trials, "hr@10")
    table = format_table(report).splitlines()
    assert len(table) == len(report.trials) + 1 and table[1].split()[1] == str(report.best.number)


def test_invalid_value_is_a_failed_trial_with_the_config_error(
    tuned: tuple[TuneReport, Path, Path],
) -> None:
    report, _, _ = tuned
    failed = [t for t in report.trials if not t.ok]
    assert failed and all(t.settings["ftrl.l2"] == -1.0 for t in failed)
    assert all("ftrl.l2 must be >= 0, got -1.0" in (t.error or "") for t in failed)
    assert report.trials[-len(failed) :] == failed  # listed last, the tune went on
    assert all(t.settings.get("ftrl.l2") != -1.0 for t in report.trials if t.ok)
    rows = json.loads(json.dumps(report.to_dict()))["trials"]
    assert sum(row["status"] == "failed" for row in rows) == len(failed)


def test_space_file_and_set_flags(tmp_path: Path) -> None:
    (tmp_path / "space.toml").write_text("[ftrl]\nalpha = [0.1, 0.3]\n[model]\nbits = [18]\n")
    (tmp_path / "space.json").write_text('{"ftrl.beta": [1, 2], "training": {"negatives": [2]}}')
    assert load_space(tmp_path / "space.toml") == {"ftrl.alpha": [0.1, 0.3], "model.bits": [18]}
    assert load_space(tmp_path / "space.json") == {"ftrl.beta": [1, 2], "training.negatives": [2]}
    assert parse_set("ftrl.alpha=0.05, 0.1,1") == ("ftrl.alpha", [0.05, 0.1, 1])
    assert parse_set('model.crosses=[[], [["user", "i.genre"]]]') == (
        "model.crosses",
        [[], [["user", "i.genre"]]],
    )
    assert parse_set("ftrl.alpha=fast") == ("ftrl.alpha", ["fast"])  # a failed trial later
    space = build_space(Config(), str(tmp_path / "space.toml"), ["ftrl.alpha=0.7"])
    assert space["ftrl.alpha"] == [0.7] and space["model.bits"] == [18]
    assert space["ftrl.l2"] == default_space(Config())["ftrl.l2"]
    with pytest.raises(ConfigError, match=r"unknown key ftrl\.alfa"):
        build_space(Config(), None, ["ftrl.alfa=0.1"])
    with pytest.raises(ConfigError, match="key=v1,v2"):
        parse_set("ftrl.alpha")
    (tmp_path / "twice.json").write_text('{"ftrl.beta": [1], "ftrl.beta": [2]}')
    with pytest.raises(ConfigError, match=r"not valid JSON: duplicate key 'ftrl\.beta'"):
        load_space(tmp_path / "twice.json")


def test_default_space_has_factors_only_when_the_model_has_them() -> None:
    has_factors = "factors" in {f.name for f in fields(ModelConfig)}
    assert ("model.factors" in default_space(Config())) == has_factors
    assert Config().model.crosses in default_space(Config())["model.crosses"]


def test_sampling_is_seeded_distinct_and_skips_the_base() -> None:
    base = Config().to_dict()
    space = {"ftrl.alpha": [0.05, 0.1, 0.2], "training.negatives": [1, 8]}
    picked = sample_settings(space, 10, seed=3, base=base)
    assert picked == sample_settings(space, 10, seed=3, base=base)
    assert len(picked) == 5  # all 6 combinations but the base's own (0.1, 8)
    assert {"ftrl.alpha": 0.1, "training.negatives": 8} not in picked
    assert sample_settings(space, 0, seed=3, base=base) == []  # --trials 1: the base alone
    big = default_space(Config())
    assert len({json.dumps(s, sort_keys=True) for s in sample_settings(big, 50, 0, base)}) == 50
    assert rung_fractions(1 / 3, 3) == [1 / 3, 1.0] and rung_fractions(1.0, 3) == [1.0]
    assert rung_fractions(0.1, 3) == pytest.approx([0.1, 0.3, 0.9, 1.0])


def test_metric_is_chosen_from_the_data_and_ranked_in_its_direction() -> None:
    ranked = {"hr@10": 0.2, "ndcg@10": 0.1, "rank_evaluated": 5}
    labelled = {"logloss": 0.4, "auc": 0.7, "labelled": 9}
    assert choose_metric([labelled, ranked], None, 10) == "hr@10"
    assert choose_metric([labelled], None, 10) == "logloss"
    assert choose_metric([{"events": 0}], None, 10) is None
    assert choose_metric([ranked], "auc", 10) == "auc"
    low, high = ({"logloss": v, "auc": v} for v in (0.3, 0.6))
    trials = [TrialOutcome(n, {}, {}, 1.0, summary) for n, summary in enumerate((high, low))]
    trials.append(TrialOutcome(2, {}, {}, 1 / 3, {"logloss": 0.1}))  # on a prefix only
    trials.append(TrialOutcome(3, {}, None, error="ConfigError: x"))
    assert [t.number for t in sort_trials(trials, "logloss")] == [1, 0, 2, 3]
    assert [t.number for t in sort_trials(trials, "auc")] == [0, 1, 2, 3]


def crash_on_odd_trials(job: TrialJob) -> TrialRun:
    """A worker target that kills its own process, as a segfault or the OOM killer would."""
    if job.number % 2:
        os._exit(7)
    return TrialRun({"trial": job.number, "pid": os.getpid()}, 0.0)


def test_a_dead_worker_fails_only_its_own_trial() -> None:
    jobs = [TrialJob(n, Config(), "unused", "jsonl", None) for n in range(3)]
    seen: list[int] = []
    with WorkerSlots(2) as slots:
        runs = slots.run(jobs, lambda job, run: seen.append(job.number), crash_on_odd_trials)
    assert sorted(seen) == [0, 1, 2]  # trial 2 ran in the process that replaced trial 1's
    assert [runs[n].summary["trial"] for n in (0, 2)] == [0, 2]  # type: ignore[index]
    assert runs[1].summary is None and "worker process died" in (runs[1].error or "")


def run_cli(tmp_path: Path, *args: str, **popen: Any) -> subprocess.Popen[str]:
    (tmp_path / "base.toml").write_text(BASE_TOML)
    command = [sys.executable, "-m", "runtime", "tune", *args, "--config", "base.toml"]
    return subprocess.Popen(command, cwd=tmp_path, text=True, **popen)


def test_cli_tune_writes_a_loadable_config(tmp_path: Path) -> None:
    log = write_genre_log(tmp_path / "events.jsonl", 600)
    args = [str(log), "--format", "jsonl", "--trials", "2", "--jobs", "2", "--min-fraction", "1"]
    args += ["--no-defaults", "--set", "ftrl.alpha=0.05,0.3", "--set", "training.negatives=1,4"]
    args += ["--out", "best.toml", "--json", "result.json", "--quiet"]
    proc = run_cli(tmp_path, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["metric"] == "hr@10" and len(result["trials"]) == 2
    best = Config.load(tmp_path / "best.toml")
    assert best.model.bits == 16  # the base config's settings carry over
    changed = result["best"]["changed"]
    assert best.ftrl.alpha == changed.get("ftrl.alpha", 0.1)
    assert "wrote best.toml" in stdout and stdout.splitlines()[0].startswith("rank")


def _group_alive(group: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields_after_name = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields_after_name[2]) == group and fields_after_name[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def _interruptible() -> None:
    """In the child before exec: Ctrl-C as in a terminal.  A test run started in the
    background by a non-interactive shell has SIGINT ignored, which exec passes on, and
    Python then never raises KeyboardInterrupt: the search ran to its end (exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_every_worker_and_writes_nothing(tmp_path: Path) -> None:
    log = write_genre_log(tmp_path / "events.jsonl", 800)
    args = [str(log), "--format", "jsonl", "--trials", "40", "--jobs", "2", "--min-fraction", "1"]
    args += ["--no-defaults", "--set", "ftrl.alpha=0.05,0.1,0.2,0.3,0.5"]
    args += ["--set", "training.negatives=1,2,4,8"]
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = run_cli(
        tmp_path,
        *args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        env={**os.environ, "TMPDIR": str(temp)},
        preexec_fn=_interruptible,
    )
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        assert proc.stderr is not None
        first = _first_progress_line(proc.stderr)
        assert first.startswith("tune: trial"), first
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        stderr = proc.stderr.read()
        assert proc.wait() == 130, stderr[-3000:]
    finally:
        watchdog.cancel()
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "freshrank-tuned.toml").exists()
    assert not list(temp.iterdir())  # the trials' temporary directory is gone
    _wait_until_group_empty(proc.pid)


def _first_progress_line(stream: Any) -> str:
    lines: Iterator[str] = iter(stream.readline, "")
    return next((line for line in lines if line.startswith("tune:")), "")


def _wait_until_group_empty(group: int) -> None:
    # the workers were terminated and joined before exit; multiprocessing's resource
    # tracker leaves when it reads end-of-file on its pipe, which may take a moment
    deadline = threading.Event()
    timer = threading.Timer(30, deadline.set)
    timer.start()
    try:
        while _group_alive(group) and not deadline.is_set():
            deadline.wait(0.05)
    finally:
        timer.cancel()
    assert not _group_alive(group)
