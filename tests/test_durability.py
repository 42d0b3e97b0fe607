"""Durable state of the embedded System (``state.dir``): the journal replayed after the
newest valid snapshot, fallbacks for every damaged snapshot, and the real daemon killed
with SIGKILL losing nothing it acknowledged."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from actors.model import model_settings
from actors.simulator import Simulator, SimulatorConfig
from actors.state import StateError, decode_state, encode_state
from runtime import snapshots
from runtime.config import Config
from runtime.durability import SnapshotStore
from runtime.journal import decode_entry, read_records
from runtime.system import System

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0


def durable_config(state: Path, **sections: dict[str, Any]) -> Config:
    return Config.from_dict(
        {"state": {"dir": str(state)}, "ingest": {"dead_letter_path": ""}, **sections}
    )


NO_DLQ: dict[str, Any] = {"ingest": {"dead_letter_path": ""}}


def stream(n: int = 900) -> list[dict[str, Any]]:
    sim = Simulator(SimulatorConfig(seed=11, n_users=40, n_items=60))
    return sim.items() + sim.next_batch(n)


def counts(system: System) -> tuple[int, int, int]:
    stats = system.statistics()
    return stats["trainer"]["events"], stats["users"], stats["catalog_items"]


async def three_snapshots_and_a_tail(state: Path) -> tuple[list[Path], tuple[int, int, int]]:
    """Ingest in four parts with a snapshot after each of the first three, then end
    without a final snapshot (as a crash would); the snapshots and the counts reached."""
    events = stream()
    parts = [events[:300], events[300:500], events[500:700], events[700:]]
    system = System(durable_config(state))
    await system.start()
    written = []
    for part in parts[:3]:
        await system.ingest(part)
        path = await system.snapshot()
        assert path is not None
        written.append(path)
    await system.ingest(parts[3])
    reached = counts(system)
    await system.stop(drain=False)  # no snapshot on the way out
    return written, reached


async def restarted(state: Path) -> tuple[System, dict[str, Any]]:
    system = System(durable_config(state))
    await system.start()
    return system, system.statistics()


def edit_document(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change a snapshot's document and write it back with a valid checksum (damage the
    checksum cannot see)."""
    document = decode_state(path.read_bytes())
    edit(document)
    path.write_bytes(encode_state(document))


def flip_inside_arrays(path: Path) -> None:
    """Five bytes in the middle of the z array's data."""
    z = decode_state(path.read_bytes())["parts"]["weights"]["state"]["z"]
    data = bytearray(path.read_bytes())
    at = data.find(z.tobytes()) + z.nbytes // 2
    assert at > z.nbytes // 2, "the z array's bytes are not in the file"
    data[at : at + 5] = bytes(b ^ 0x5A for b in data[at : at + 5])
    path.write_bytes(bytes(data))


def wrong_version(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4] = 99  # the format version in the header
    path.write_bytes(bytes(data))


def other_config(document: dict[str, Any]) -> None:
    """What another config writes: its settings, with its arrays."""
    document["settings"] = model_settings(durable_config(Path("other"), model={"bits": 18}))


# each fault of a snapshot file, and the reason the start reports it with
FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]), "truncated"),
    "empty": (lambda p: p.write_bytes(b""), "truncated (0 bytes)"),
    "flipped bytes inside the arrays": (flip_inside_arrays, "checksum mismatch"),
    "wrong format version": (wrong_version, "format version 99, this build reads"),
    "wrong part version": (
        lambda p: edit_document(p, lambda d: d["parts"]["weights"].update(version=99)),
        "part 'weights': version 99, this process reads",
    ),
    "a part missing": (
        lambda p: edit_document(p, lambda d: d["parts"].pop("weights")),
        "part 'weights': version None",
    ),
    "a key missing": (
        lambda p: edit_document(p, lambda d: d["parts"]["weights"]["state"].pop("z")),
        "KeyError: 'z'",
    ),
    "no journal position": (
        lambda p: edit_document(p, lambda d: d.pop("journal")),
        "no journal position",
    ),
    "another config's snapshot": (
        lambda p: edit_document(p, other_config),
        "model settings differ",
    ),
}


async def test_a_restart_replays_the_journal_after_the_newest_snapshot(tmp_path: Path) -> None:
    written, reached = await three_snapshots_and_a_tail(tmp_path)
    system, stats = await restarted(tmp_path)
    try:
        assert counts(system) == reached
        assert stats["snapshots"]["restored_from"] == str(written[-1])
        assert stats["snapshots"]["replayed_records"] == 1  # only the tail
        assert stats["snapshots"]["snapshots_rejected"] == 0
    finally:
        await system.stop()


async def test_no_snapshot_taken_while_the_journal_is_replayed_claims_more_than_it_learned(
    tmp_path: Path,
) -> None:
    """A periodic snapshot due during a start's journal replay waits for the replay's end:
    one taken in the middle recorded the journal's last position as covered while the
    model had learned only part of it, so a crash after it lost the rest."""
    events = stream()
    quiet = {"snapshot_every_events": 1_000_000, "snapshot_every_s": 3600.0}
    first = System(Config.from_dict({"state": {"dir": str(tmp_path), **quiet}, **NO_DLQ}))
    await first.start()
    for lo in range(0, len(events), 60):
        await first.ingest(events[lo : lo + 60])
    reached = counts(first)
    await first.stop(drain=False)  # a crash: 16 journal records, no snapshot
    eager = {"snapshot_every_events": 1, "snapshot_every_s": 3600.0}
    replaying = System(Config.from_dict({"state": {"dir": str(tmp_path), **eager}, **NO_DLQ}))
    await replaying.start()  # every replayed record makes a snapshot due
    assert counts(replaying) == reached
    await replaying.stop(drain=False)  # a crash again, after whatever it snapshotted
    system, _ = await restarted(tmp_path)
    try:
        assert counts(system) == reached
    finally:
        await system.stop()


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one(
    tmp_path: Path, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    written, reached = await three_snapshots_and_a_tail(tmp_path)
    assert len(written) == 3
    damage, why = FAULTS[fault]
    damage(written[-1])
    with caplog.at_level(logging.WARNING, "freshrank.state"):
        system, stats = await restarted(tmp_path)
    try:
        assert counts(system) == reached  # nothing lost: a longer journal replay
        assert stats["snapshots"]["restored_from"] == str(written[-2])
        assert stats["snapshots"]["snapshots_rejected"] == 1
        assert stats["snapshots"]["replayed_records"] == 2
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [w.getMessage() for w in warnings]
        message = warnings[0].getMessage()
        assert str(written[-1]) in message and why in message
        assert "falling back to the previous one" in message
    finally:
        await system.stop()


async def test_another_configs_snapshot_is_refused(tmp_path: Path) -> None:
    await three_snapshots_and_a_tail(tmp_path)
    other = durable_config(tmp_path, model={"bits": 18})
    system = System(other)
    await system.start()
    try:
        stats = system.statistics()
        assert stats["snapshots"]["snapshots_rejected"] == 3
        assert stats["snapshots"]["restored_from"] is None
        assert stats["snapshots"]["replayed_records"] == 4  # the whole journal, relearned
    finally:
        await system.stop(drain=False)


async def test_a_lone_truncated_snapshot_starts_cleanly_from_the_journal(tmp_path: Path) -> None:
    events = stream()
    system = System(durable_config(tmp_path))
    await system.start()
    await system.ingest(events)
    path = await system.snapshot()
    reached = counts(system)
    await system.stop(drain=False)
    assert path is not None
    path.write_bytes(path.read_bytes()[:100])
    system, stats = await restarted(tmp_path)
    try:
        assert stats["snapshots"]["snapshots_rejected"] == 1
        assert stats["snapshots"]["restored_from"] is None
        assert counts(system) == reached  # an empty model, then the whole journal
    finally:
        await system.stop()


def one_kept_config(state: Path) -> Config:
    return Config.from_dict({
        "state": {"dir": str(state), "keep_snapshots": 1},
        "journal": {"segment_bytes": 4096}, "ingest": {"dead_letter_path": ""},
    })  # fmt: skip


async def one_snapshot_and_a_pruned_journal(state: Path) -> Path:
    """A state directory whose only snapshot covers records the journal no longer has."""
    events = stream()
    async with System(one_kept_config(state)) as system:
        for lo in range(0, len(events), 100):
            await system.ingest(events[lo : lo + 100])
    (path,) = SnapshotStore(state / "snapshots", 1).paths()
    first = int(min((state / "journal").glob("*.journal")).name.split(".")[0])
    assert first > 1
    return path[1]


async def test_no_usable_snapshot_and_a_pruned_journal_refuses_to_start(tmp_path: Path) -> None:
    """Starting empty would learn on without the snapshot's events, and the next snapshot
    would replace the one that still holds them: a clear refusal instead."""
    path = await one_snapshot_and_a_pruned_journal(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    system = System(one_kept_config(tmp_path))
    with pytest.raises(
        StateError, match=r"no usable snapshot \(the newest: .*snapshot-.*truncated"
    ):
        await system.start()
    log = tmp_path / "daemon.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as stderr:  # noqa: ASYNC230 - a local file, opened once
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime", "run", "--port", "0", "--state", str(tmp_path),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        assert await asyncio.wait_for(proc.wait(), START_TIMEOUT) == 2
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    last = text_of(log).splitlines()[-1]
    assert last.startswith("freshrank: no usable snapshot") and "Fix: " in last, text_of(log)
    assert path.exists()  # nothing was overwritten


async def test_a_clean_stop_snapshots_and_prunes_to_the_kept_ones(tmp_path: Path) -> None:
    config = Config.from_dict({
        "state": {"dir": str(tmp_path), "keep_snapshots": 2},
        "journal": {"segment_bytes": 4096}, "ingest": {"dead_letter_path": ""},
    })  # fmt: skip
    events = stream()
    async with System(config) as system:
        for lo in range(0, len(events), 100):
            await system.ingest(events[lo : lo + 100])
            await system.snapshot()
        reached = counts(system)
    kept = sorted((tmp_path / "snapshots").glob("snapshot-*.msgpack"))
    assert len(kept) == 2
    segments = sorted((tmp_path / "journal").glob("*.journal"))
    oldest_kept = int(kept[0].name.split("-")[1].split(".")[0])
    assert int(segments[0].name.split(".")[0]) <= oldest_kept + 1  # still replayable
    assert len(segments) < len(events) // 100  # the older segments were deleted
    async with System(config) as system:
        assert counts(system) == reached
        assert system.statistics()["snapshots"]["replayed_records"] == 0


# --------------------------------------------------------------------------- the real daemon


def text_of(log: Path) -> str:
    return log.read_text(errors="replace")


async def start_daemon(
    state: Path, log: Path, config: Path | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the worktree's code, not an installed one
    extra = ["--config", str(config)] if config is not None else []
    with open(log, "ab") as stderr:  # noqa: ASYNC230 - a local file, opened once
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime", "run", "--port", "0", "--state", str(state), *extra,
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
    if not line.startswith("freshrank ready http://"):
        proc.kill()
        await proc.wait()
        raise AssertionError(line + text_of(log))
    return proc, line.split()[2]


async def test_kill_9_loses_nothing_the_daemon_acknowledged(tmp_path: Path) -> None:
    events = stream(1500)
    interactions = sum(1 for e in events if "user" in e)
    users = len({e["user"] for e in events if "user" in e})
    items = len({e["item"] for e in events})
    log = tmp_path / "daemon.log"
    proc, url = await start_daemon(tmp_path / "state", log)
    try:
        async with aiohttp.ClientSession() as http:
            for lo in range(0, len(events), 250):
                body = events[lo : lo + 250]
                async with http.post(f"{url}/v1/events", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["accepted"] == len(body)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    proc, url = await start_daemon(tmp_path / "state", log)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/stats") as resp:
            stats = await resp.json()
        assert stats["trainer"]["events"] == interactions
        assert stats["users"] == users
        assert stats["catalog_items"] == items
        assert stats["snapshots"]["replayed_events"] == len(events)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), START_TIMEOUT)
    assert proc.returncode == 0, text_of(log)


async def test_a_journal_that_cannot_be_written_answers_503_and_accepts_nothing(
    tmp_path: Path,
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from runtime.http import make_app

    async with System(durable_config(tmp_path)) as system:
        async with TestClient(TestServer(make_app(system))) as client:
            resp = await client.post("/v1/events", json=[{"item": "i1"}])
            assert resp.status == 200
            journal = system.durability.journal  # type: ignore[union-attr]
            writable = journal._fd
            journal._fd = os.open(tmp_path / "journal", os.O_RDONLY)  # every write fails
            try:
                resp = await client.post("/v1/events", json=[{"item": "i2"}])
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert "journal cannot be written" in (await resp.json())["error"]
            finally:
                os.close(journal._fd)
                journal._fd = writable
            assert "i2" not in system.catalog.rows  # not accepted, so not learned
            resp = await client.post("/v1/events", json=[{"item": "i3"}])
            assert resp.status == 200
        assert system.statistics()["journal"]["append_errors"] == 1
    system = System(durable_config(tmp_path))
    await system.start()
    try:
        assert sorted(system.catalog.rows) == ["i1", "i3"]
    finally:
        await system.stop()


# kill -9 at random moments (issue 11's acceptance): a small model, so that eleven starts
# and the reference run fit in well under a minute; a snapshot every few requests and
# a segment per record or two, so kills also meet snapshots, rotations and pruning
KILL_CONFIG = """
[model]
bits = 16

[state]
snapshot_every_events = 150
keep_snapshots = 2

[journal]
segment_bytes = 4096
"""
KILLS = 10
BATCH = 40


@dataclass
class Sent:
    """One request of the kill test and what became of it."""

    events: list[dict[str, Any]]
    answered: bool = False
    killed: str = ""  # how a kill met it while it had no answer
    journaled: bool = False  # seen in the journal


async def post_raw(
    address: str, body: bytes, fraction: float = 1.0, deadline: float | None = None
) -> dict[str, Any] | None:
    """POST /v1/events over a plain socket (a client library sends no half body): send
    ``fraction`` of the body, and when it is all sent wait for the answer (at most
    ``deadline`` seconds, None: until it comes); its JSON if it came."""
    host, port = address.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = (
            f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body[: int(len(body) * fraction)])
        await writer.drain()
        if fraction < 1.0:
            return None
        try:
            answer = await asyncio.wait_for(reader.read(), deadline)
        except TimeoutError:
            return None
        status, _, rest = answer.partition(b"\r\n")
        assert status.split()[1] == b"200", answer.decode(errors="replace")
        document: dict[str, Any] = json.loads(rest.partition(b"\r\n\r\n")[2])
        return document
    finally:
        writer.close()


async def kill_9(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL


def observe_journal(directory: Path, sent: list[Sent], seen: dict[int, int]) -> None:
    """Note the requests the journal holds, read after a kill and before the restart (so
    the request in flight, at the tail, is not pruned yet); ``seen``: record -> request,
    over every read, since older records go with pruned segments."""
    index = {json.dumps(s.events): k for k, s in enumerate(sent)}
    for record in read_records(directory):
        k = index[json.dumps(decode_entry(record.payload)["events"])]
        assert seen.setdefault(record.seq, k) == k, f"record {record.seq} changed"
        sent[k].journaled = True
    requests = [k for _, k in sorted(seen.items())]
    assert requests == sorted(set(requests)), "a request journaled twice or out of order"
    assert not any(s.journaled and s.killed == "half sent" for s in sent), "half a body"


def learned_requests(sent: list[Sent]) -> list[int]:
    """What must be learned, once: every acknowledged request, and one without an answer
    exactly when the journal has it."""
    return [k for k, s in enumerate(sent) if s.answered or s.journaled]


async def assert_learned_once(url: str, sent: list[Sent]) -> None:
    """The daemon learned exactly the interactions it must: none lost, none twice."""
    learned = [event for k in learned_requests(sent) for event in sent[k].events]
    interactions = [e for e in learned if "user" in e]
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/stats") as resp:
        stats = await resp.json()
    assert stats["trainer"]["events"] == len(interactions)  # none lost, none learned twice
    assert stats["users"] == len({e["user"] for e in interactions})
    assert stats["catalog_items"] == len({e["item"] for e in learned})


def timed_stream(n: int) -> list[dict[str, Any]]:
    """Every event with its time, so that learning never depends on the arrival clock."""
    return [{"ts": 1_700_000_000.0, **event} for event in stream(n)]


async def test_kill_9_at_random_moments_learns_every_acknowledged_event_exactly_once(
    tmp_path: Path,
) -> None:
    rng = random.Random(20261207)
    config_path = tmp_path / "daemon.toml"
    config_path.write_text(KILL_CONFIG, encoding="utf-8")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    events = timed_stream(BATCH * 6 * (KILLS + 1))
    batches = [events[lo : lo + BATCH] for lo in range(0, len(events), BATCH)]
    sent: list[Sent] = []
    seen: dict[int, int] = {}
    moments = []
    for _ in range(KILLS):
        # requests answered before the kill, and how the kill meets the next one:
        # between requests, with half its body sent, or at a random time after all of it
        moments.append((rng.randint(1, 6), rng.choice(["between", "half sent", "sent"])))
    for answered_before, how in moments:
        proc, url = await start_daemon(state, log, config_path)
        try:
            await assert_learned_once(url, sent)
            for _ in range(answered_before):
                sent.append(Sent(batches[len(sent)]))
                answer = await post_raw(url, json.dumps(sent[-1].events).encode(), deadline=60)
                assert answer is not None and answer["accepted"] == BATCH
                sent[-1].answered = True
            if how != "between":
                sent.append(Sent(batches[len(sent)]))
                body = json.dumps(sent[-1].events).encode()
                fraction, deadline = (
                    (0.5, None) if how == "half sent" else (1.0, rng.uniform(0, 0.03))
                )
                answer = await post_raw(url, body, fraction, deadline)
                sent[-1].answered = answer is not None
                sent[-1].killed = "" if sent[-1].answered else how
        finally:
            await kill_9(proc)
        observe_journal(state / "journal", sent, seen)
    assert any(s.killed for s in sent), "no kill met a request in flight"
    proc, url = await start_daemon(state, log, config_path)
    try:
        await assert_learned_once(url, sent)
        for batch in batches[len(sent) : len(sent) + 2]:  # the restarted daemon learns on
            sent.append(Sent(batch))
            assert await post_raw(url, json.dumps(batch).encode(), deadline=60) is not None
            sent[-1].answered = True
        await assert_learned_once(url, sent)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), START_TIMEOUT)
    assert proc.returncode == 0, text_of(log)

    # the final weights: those of one uninterrupted run over the journaled requests

    reference = System(Config.from_dict({
        "model": {"bits": 16}, "state": {"snapshot_path": ""}, "ingest": {"dead_letter_path": ""},
    }))  # fmt: skip
    async with reference:
        for k in learned_requests(sent):
            await reference.ingest(sent[k].events)
    final = snapshots.read(SnapshotStore(state / "snapshots", 2).paths()[0][1])["parts"]
    for part, model in (("weights", reference.model.store), ("factors", reference.model.factors)):
        assert model is not None
        saved, expected = final[part]["state"], model.to_state()
        assert saved.keys() == expected.keys()
        for key in expected:
            np.testing.assert_allclose(saved[key], expected[key], rtol=0, atol=1e-9, err_msg=part)


# --------------------------------------------------------------------------- state verify


def state_verify(state: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    from runtime.cli import main

    code = main(["state", "verify", str(state)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def files_of(state: Path) -> dict[str, bytes]:
    return {str(p.relative_to(state)): p.read_bytes() for p in state.rglob("*") if p.is_file()}


async def test_state_verify_reports_a_good_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written, _ = await three_snapshots_and_a_tail(tmp_path)
    code, lines, err = state_verify(tmp_path, capsys)
    assert (code, err) == (0, "")
    assert lines[:3] == [
        f"snapshot {p.name}: position {k}, {p.stat().st_size} bytes, valid"
        for k, p in reversed(list(enumerate(written, 1)))
    ]
    assert lines[3] == "journal: 1 segment(s), 4 records, positions 1..4"
    assert (
        lines[4]
        == f"start: would restore {written[-1].name} (position 3) and replay 1 journal records"
    )


async def test_state_verify_reports_damage_as_the_start_then_meets_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written, _ = await three_snapshots_and_a_tail(tmp_path)
    size = written[-1].stat().st_size
    written[-1].write_bytes(written[-1].read_bytes()[:1000])
    (segment,) = (tmp_path / "journal").glob("*.journal")
    segment.write_bytes(segment.read_bytes()[:-7])  # the last record torn
    before = files_of(tmp_path)
    code, lines, err = state_verify(tmp_path, capsys)
    assert (code, err) == (0, "")
    assert files_of(tmp_path) == before  # verify repairs nothing
    assert lines[0] == (
        f"snapshot {written[-1].name}: position 3, 1000 bytes, "
        f"refused: truncated or padded (1000 bytes, expected {size})"
    )
    assert lines[3].startswith("journal: 1 segment(s), 3 records, positions 1..3; damaged tail in ")
    assert "torn record at offset" in lines[3] and "(record 4); a start cuts the" in lines[3]
    assert (
        lines[4]
        == f"start: would restore {written[-2].name} (position 2) and replay 1 journal records"
    )
    system, stats = await restarted(tmp_path)  # the start does what verify said
    try:
        assert stats["snapshots"]["restored_from"] == str(written[-2])
        assert stats["snapshots"]["replayed_records"] == 1
    finally:
        await system.stop(drain=False)


async def test_state_verify_exits_2_when_no_start_would_succeed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = await one_snapshot_and_a_pruned_journal(tmp_path)
    path.write_bytes(b"")
    code, lines, err = state_verify(tmp_path, capsys)
    assert code == 2
    assert lines[0] == f"snapshot {path.name}: position 10, 0 bytes, refused: truncated (0 bytes)"
    assert err.count("\n") == 1 and err.startswith("freshrank state verify: a start would fail: ")
    assert "journal starts at record 10" in err and "Fix: " in err
    with pytest.raises(StateError, match="journal starts at record 10"):
        await System(one_kept_config(tmp_path)).start()


async def test_state_verify_reports_a_checksum_mismatch_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await three_snapshots_and_a_tail(tmp_path)
    (segment,) = (tmp_path / "journal").glob("*.journal")
    records = list(read_records(tmp_path / "journal"))
    data = bytearray(segment.read_bytes())
    at = data.find(records[2].payload) + 10  # inside record 3
    data[at] ^= 0xFF
    segment.write_bytes(bytes(data))
    code, lines, _ = state_verify(tmp_path, capsys)
    assert code == 0
    assert lines[3].startswith("journal: 1 segment(s), 2 records, positions 1..2; damaged tail")
    assert "checksum mismatch at offset" in lines[3] and "(record 3)" in lines[3]
    # the newest snapshot covers record 3, so nothing it needs is lost
    assert lines[4].endswith("(position 3) and replay 0 journal records")
