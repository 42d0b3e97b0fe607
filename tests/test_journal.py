"""The event journal on its own: append and read, torn tails, damaged records,
segment rotation and deletion, group commit, JSONL export."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from runtime.journal import (
    RECORD_HEADER,
    SEGMENT_HEADER,
    Journal,
    JournalError,
    JournalUnavailable,
    decode_entry,
    encode_entry,
    export_jsonl,
    list_segments,
    read_records,
)


def opened(directory: Path, **kwargs: object) -> Journal:
    journal = Journal(directory, **kwargs)  # type: ignore[arg-type]
    journal.open()
    return journal


def payloads(directory: Path, after: int = 0) -> list[tuple[int, bytes]]:
    return [(r.seq, r.payload) for r in read_records(directory, after)]


def test_append_and_read_back_in_order(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    seqs = [journal.append(f"record {i}".encode()) for i in range(5)]
    journal.close()
    assert seqs == [1, 2, 3, 4, 5]
    assert payloads(tmp_path) == [(i + 1, f"record {i}".encode()) for i in range(5)]
    assert [seq for seq, _ in payloads(tmp_path, after=3)] == [4, 5]
    again = opened(tmp_path)  # reopening continues the numbering
    assert again.append(b"six") == 6
    again.close()
    assert payloads(tmp_path)[-1] == (6, b"six")


def test_a_torn_tail_is_cut_on_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = opened(tmp_path)
    for i in range(3):
        journal.append(b"x" * 100 + bytes([i]))
    journal.close()
    ((_, segment),) = list_segments(tmp_path)
    whole = segment.stat().st_size
    with segment.open("r+b") as out:  # the last record half written, as by a crash
        out.truncate(whole - 40)
    assert [seq for seq, _ in payloads(tmp_path)] == [1, 2]  # a reader stops before it
    with caplog.at_level(logging.WARNING, "freshrank.journal"):
        reopened = opened(tmp_path)
    assert reopened.last_seq == 2
    assert "torn record" in caplog.text and "dropped" in caplog.text
    assert segment.stat().st_size == whole - (RECORD_HEADER.size + 101)
    assert reopened.append(b"after") == 3  # appended where the good records end
    reopened.close()
    assert payloads(tmp_path)[-1] == (3, b"after")
    assert reopened.statistics()["truncated_bytes"] == RECORD_HEADER.size + 101 - 40


def test_a_checksum_mismatch_stops_the_log_and_keeps_what_is_before(tmp_path: Path) -> None:
    journal = opened(tmp_path, segment_bytes=4096)
    for i in range(60):  # ~ 5 segments
        journal.append(bytes([i]) * 300)
    journal.close()
    segments = list_segments(tmp_path)
    assert len(segments) >= 4
    first, second = segments[1]
    with second.open("r+b") as out:  # one flipped byte inside the second record
        out.seek(SEGMENT_HEADER.size + (RECORD_HEADER.size + 300) + RECORD_HEADER.size + 7)
        byte = out.read(1)
        out.seek(-1, 1)
        out.write(bytes([byte[0] ^ 0xFF]))
    assert [seq for seq, _ in payloads(tmp_path)][-1] == first  # readers stop at it
    reopened = opened(tmp_path)
    assert reopened.last_seq == first
    assert "checksum mismatch" in str(reopened.statistics()["damage"])
    assert len(list(tmp_path.glob("*.corrupt"))) == len(segments) - 2  # set aside, not read
    assert reopened.append(b"next") == first + 1
    reopened.close()
    assert payloads(tmp_path)[-1] == (first + 1, b"next")


def test_segments_rotate_and_old_ones_are_deleted(tmp_path: Path) -> None:
    journal = opened(tmp_path, segment_bytes=4096)
    for i in range(40):
        journal.append(bytes([i]) * 500)
    firsts = [first for first, _ in list_segments(tmp_path)]
    assert len(firsts) >= 4 and firsts[0] == 1
    assert journal.drop_before(firsts[2]) == 2  # the first two hold only records < firsts[2]
    assert [first for first, _ in list_segments(tmp_path)] == firsts[2:]
    assert journal.drop_before(10**9) == len(firsts) - 3  # never the segment being written
    journal.close()
    assert [seq for seq, _ in payloads(tmp_path)] == list(range(firsts[-1], 41))


def test_numbering_continues_after_a_snapshot_position(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    journal.append(b"a")
    journal.skip_to(10)  # a snapshot covered records this journal lost
    assert journal.append(b"b") == 11
    journal.close()
    assert payloads(tmp_path) == [(1, b"a"), (11, b"b")]
    assert opened(tmp_path).last_seq == 11


async def test_always_waits_for_one_shared_fsync(tmp_path: Path) -> None:
    journal = opened(tmp_path, fsync="always")
    seqs = [journal.append(b"r") for _ in range(20)]
    await journal.durable(seqs[-1])
    assert journal.synced_seq == 20
    assert journal.counters["fsyncs"] == 1  # the 20 appends share one fsync
    await journal.durable(seqs[0])  # already durable: no new fsync
    assert journal.counters["fsyncs"] == 1
    journal.close()


def test_a_failed_write_is_unavailable_and_leaves_no_partial_record(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    journal.append(b"kept")
    good = journal._fd
    journal._fd = -1  # a write that fails (EBADF here, ENOSPC or EFBIG on a full disk)
    with pytest.raises(JournalUnavailable, match="retry later"):
        journal.append(b"lost")
    journal._fd = good
    assert journal.append(b"next") == 2
    journal.close()
    assert payloads(tmp_path) == [(1, b"kept"), (2, b"next")]


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / f"{1:020d}.journal").write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(JournalError, match="not a freshrank journal segment"):
        opened(tmp_path)


def test_export_writes_every_event_as_a_json_line(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    journal.append(encode_entry(1000.5, "http", [{"item": "i1"}, {"user": "u", "item": "i1"}]))
    journal.append(encode_entry(1001.0, "http", [{"user": "u", "item": "i2", "ts": 7.0}]))
    journal.append(encode_entry(1002.0, "http", [{"item": "i3", "ts": 10**30}]))
    journal.close()
    out = io.StringIO()
    assert export_jsonl(tmp_path, out) == 4
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines == [
        {"item": "i1", "ts": 1000.5},  # untimed: its arrival time
        {"user": "u", "item": "i1", "ts": 1000.5},
        {"user": "u", "item": "i2", "ts": 7.0},
        {"item": "i3", "ts": 1e30},  # past 64 bits: kept as the float validation saw
    ]
    assert decode_entry(encode_entry(1.0, "api", []))["source"] == "api"


def test_the_cli_exports_a_state_directory(tmp_path: Path) -> None:
    from runtime.cli import main

    journal = opened(tmp_path / "journal")
    journal.append(encode_entry(5.0, "http", [{"item": "i1"}, {"user": "u", "item": "i1"}]))
    journal.close()
    out = tmp_path / "events.jsonl"
    assert main(["journal", "export", "--state", str(tmp_path), "--output", str(out)]) == 0
    assert [json.loads(line)["item"] for line in out.read_text().splitlines()] == ["i1", "i1"]
    assert main(["journal", "export", "--state", str(tmp_path / "nowhere")]) == 2
