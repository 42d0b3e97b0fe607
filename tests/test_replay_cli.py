"""`freshrank replay` end to end, as a user runs it, on the real data sets and on JSONL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def replay(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    config = tmp_path / "replay.toml"
    config.write_text(f'[ingest]\ndead_letter_path = "{tmp_path / "dlq.jsonl"}"\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "replay",
            *args,
            "--config",
            str(config),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result
    return result


def test_movielens_replay_beats_global_popularity(tmp_path: Path, ml100k: Path) -> None:
    result = replay(tmp_path, str(ml100k), "--format", "movielens", "--no-progress")
    assert result["events"] == 100_000 and result["rejected"] == 0
    assert result["rank_evaluated"] == 4000  # every 20th of the last 80,000
    assert result["events_per_s"] > 0 and result["seconds"] > 0
    assert result["hr@10"] > result["baseline_popularity_hr@10"], result
    assert 0 < result["ndcg@10"] < result["hr@10"]


def test_criteo_replay_beats_running_mean_ctr(tmp_path: Path, criteo_train: Path) -> None:
    result = replay(tmp_path, str(criteo_train), "--format", "criteo", "--no-progress")
    assert result["events"] == 7200 and result["labelled"] == 7200
    assert result["logloss"] < result["baseline_mean_ctr_logloss"], result
    assert result["auc"] > 0.6


def test_jsonl_replay_dead_letters_bad_lines(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    lines = [
        json.dumps({"item": f"i{k}", "item_features": {"genre": ["a", "b"][k % 2]}})
        for k in range(10)
    ]
    lines += [
        json.dumps({"user": f"u{k % 5}", "item": f"i{k % 10}", "label": k % 2}) for k in range(200)
    ]
    lines.insert(50, "{not json")
    lines.insert(80, json.dumps({"user": "u1", "item": "i1", "label": 7}))
    lines.insert(120, '{"user": "u1", "item": "i1", "label": 0, "label": 1}')
    log.write_text("\n".join(lines) + "\n")
    result = replay(tmp_path, str(log), "--format", "jsonl", "--no-progress")
    assert result["events"] == 200 and result["rejected"] == 3
    assert result["labelled"] == 200
    records = [json.loads(line) for line in (tmp_path / "dlq.jsonl").read_text().splitlines()]
    reasons = sorted(r["reason"] for r in records)
    assert len(records) == 3
    assert reasons[0] == "line 121: duplicate key 'label'"
    assert reasons[1].startswith("line 51:") and "label" in reasons[2]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "replay",
            str(tmp_path / "nope.tsv"),
            "--format",
            "criteo",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_tsv_with_user_and_item_columns(tmp_path: Path) -> None:
    log = tmp_path / "clicks.tsv"
    rows = ["label\tuser\titem\tdevice"]
    rows += [f"{k % 3 == 0:d}\tu{k % 7}\ti{k % 11}\t{['tv', 'mobile'][k % 2]}" for k in range(300)]
    rows.insert(40, "1\tu1\ti1")  # a row with a missing field
    rows.insert(90, "2\tu1\ti1\ttv")  # a label that is not 0/1
    log.write_text("\n".join(rows) + "\n")
    result = replay(tmp_path, str(log), "--format", "tsv", "--no-progress")
    assert result["events"] == 300 and result["labelled"] == 300
    assert result["rejected"] == 2
    reasons = [
        json.loads(line)["reason"] for line in (tmp_path / "dlq.jsonl").read_text().splitlines()
    ]
    assert any("expected 4 fields" in r for r in reasons) and any("label" in r for r in reasons)


def test_version_and_a_replay_that_learns_nothing(tmp_path: Path) -> None:
    version = subprocess.run(
        [sys.executable, "-m", "runtime", "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.startswith("freshrank ")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\nnot json\n', encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "runtime", "replay", str(bad), "--format", "jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "every one of the 2 records was rejected" in proc.stderr
    assert "Traceback" not in proc.stderr
