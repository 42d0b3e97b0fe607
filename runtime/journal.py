"""The event journal: a durable append-only log of the events the embedded System accepted.

Every accepted request is one record, appended (``write(2)`` to the OS) before the
request is answered; learning consumes what was appended, a snapshot records the last
record it covers, and a restart replays the records after it.  So a ``kill -9`` loses
nothing that was answered: a completed ``write`` survives the process.  An OS crash or
a power cut loses what was not yet ``fsync``-ed; the policy decides how much:

* ``always``: the answer waits for an ``fsync`` covering its record.  Concurrent
  requests share one ``fsync`` (group commit, in a worker thread, so the event loop
  keeps running).
* ``interval``: a background thread ``fsync``-s every ``fsync_interval_ms`` when
  something was written; at most that long of answered events can be lost on a crash
  of the machine (not of the process).

On disk: ``DIR/<first seq, 20 digits>.journal`` segments, each an 8-byte header
(``b"FRJL"``, format version u32) and then records::

    payload length (u32) | crc32 of seq and payload (u32) | seq (u64) | payload

Sequence numbers increase by one within a segment; a new segment starts when the
current one passes ``segment_bytes``.  Opening for append checks every record: a torn
or damaged tail of the last segment is cut off; damage inside an earlier segment stops
the log there (what follows is renamed ``*.corrupt`` for inspection, never read).
CRC-32 is zlib's (C speed, in the standard library): the records guard against torn
writes and bit rot, not against an adversary.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from actors.state import STATE_LIMITS
from runtime.codec import CodecError, decode, encode
from runtime.config import FSYNC_POLICIES
from runtime.errors import SetupError, Unavailable

log = logging.getLogger("freshrank.journal")

MAGIC = b"FRJL"
FORMAT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<4sI")
RECORD_HEADER = struct.Struct("<IIQ")
SEQ = struct.Struct("<Q")
MAX_RECORD_BYTES = 1 << 30
SUFFIX = ".journal"


class JournalError(SetupError, RuntimeError):
    """A journal directory that cannot be used (unreadable, foreign files)."""


class JournalUnavailable(Unavailable):
    """An append failed (disk full, file-size limit, I/O error): the request was not
    accepted, nothing before it is lost; retry later."""

    retry_after_s = 1


@dataclass
class Record:
    seq: int
    payload: bytes


@dataclass
class SegmentScan:
    """What reading one segment found: its good records and where they end."""

    path: Path
    first: int
    records: list[Record] = field(default_factory=list)
    good_end: int = SEGMENT_HEADER.size
    size: int = 0
    problem: str | None = None  # why reading stopped before the end of the file


def frame(seq: int, payload: bytes) -> bytes:
    """One record's bytes."""
    crc = zlib.crc32(payload, zlib.crc32(SEQ.pack(seq)))
    return RECORD_HEADER.pack(len(payload), crc, seq) + payload


def segment_name(first: int) -> str:
    return f"{first:020d}{SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segments of a journal directory, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        stem = path.name.removesuffix(SUFFIX)
        if path.name.endswith(SUFFIX) and stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


def scan_segment(path: Path, first: int) -> SegmentScan:
    """Read and check every record of a segment, stopping at the first bad one."""
    data = path.read_bytes()
    scan = SegmentScan(path, first, size=len(data))
    if len(data) < SEGMENT_HEADER.size:
        scan.good_end = 0
        scan.problem = f"segment header torn ({len(data)} bytes)"
        return scan
    magic, version = SEGMENT_HEADER.unpack_from(data)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise JournalError(f"{path}: not a freshrank journal segment (format {version})")
    offset, expected = SEGMENT_HEADER.size, first
    view = memoryview(data)
    while offset < len(data):
        problem = _check_record(view, offset, expected)
        if problem is not None:
            scan.problem = f"{problem} at offset {offset} (record {expected})"
            break
        length, _, seq = RECORD_HEADER.unpack_from(view, offset)
        start = offset + RECORD_HEADER.size
        scan.records.append(Record(seq, bytes(view[start : start + length])))
        offset = start + length
        expected = seq + 1
    scan.good_end = offset
    return scan


def _check_record(view: memoryview, offset: int, expected: int) -> str | None:
    if offset + RECORD_HEADER.size > len(view):
        return "torn record header"
    length, crc, seq = RECORD_HEADER.unpack_from(view, offset)
    start = offset + RECORD_HEADER.size
    if length > MAX_RECORD_BYTES or start + length > len(view):
        return "torn record"
    if zlib.crc32(view[start : start + length], zlib.crc32(SEQ.pack(seq))) != crc:
        return "checksum mismatch"
    if seq != expected:
        return f"sequence {seq} where {expected} was expected"
    return None


def read_records(directory: Path, after: int = 0) -> Iterator[Record]:
    """The good records with ``seq > after``, oldest first (read-only: a reader of a live
    journal stops quietly at a tail being written)."""
    segments = list_segments(directory)
    for k, (first, path) in enumerate(segments):
        following = segments[k + 1][0] if k + 1 < len(segments) else None
        if following is not None and following - 1 <= after:
            continue
        scan = scan_segment(path, first)
        yield from (r for r in scan.records if r.seq > after)
        if scan.problem is not None and following is not None:
            return  # damage inside the log: nothing after it is trusted


class Journal:
    """The append side (one writer: the System); see the module docstring."""

    def __init__(
        self,
        directory: str | Path,
        fsync: str = "always",
        fsync_interval_ms: float = 100.0,
        segment_bytes: int = 64 << 20,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise JournalError(f"journal.fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.directory = Path(directory)
        self.policy = fsync
        self.interval_s = fsync_interval_ms / 1000.0
        self.segment_bytes = segment_bytes
        self.last_seq = 0  # the newest record appended
        self.synced_seq = 0  # the newest record known to be on stable storage
        self.counters = dict.fromkeys(
            ("appends", "bytes", "fsyncs", "append_errors", "truncated_bytes", "segments_deleted"),
            0,
        )
        self.problem: str | None = None  # damage found on open (reported in stats)
        self._fd = -1
        self._size = 0
        self._first = 1
        self._lock = threading.Lock()  # the fd against a concurrent fsync while rotating
        self._syncing: asyncio.Future[None] | None = None
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- opening -----------------------------------------------------------------

    def open(self) -> None:
        """Check the log, cut a torn tail, and open the last segment for appending."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            segments = list_segments(self.directory)
            for k, (first, path) in enumerate(segments):
                scan = scan_segment(path, first)
                self.last_seq = (
                    scan.records[-1].seq if scan.records else max(self.last_seq, first - 1)
                )
                if scan.problem is not None:
                    self._cut(scan, segments[k + 1 :])
                    segments = segments[: k + 1]
                    break
            self.synced_seq = self.last_seq
            self._open_last(segments)
        except OSError as error:
            raise JournalError(f"journal {self.directory}: {error}") from error
        if self.policy == "interval":
            self._flusher = threading.Thread(target=self._flush_loop, name="journal-fsync")
            self._flusher.daemon = True
            self._flusher.start()

    def _open_last(self, segments: list[tuple[int, Path]]) -> None:
        """Append to the last segment if it has room (and an intact header), else start one."""
        if segments:
            first, path = segments[-1]
            size = path.stat().st_size
            if SEGMENT_HEADER.size <= size < self.segment_bytes:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                self._first, self._size = first, size
                return
            if size < SEGMENT_HEADER.size:
                path.unlink()
        self._open_segment(self.last_seq + 1)

    def _cut(self, scan: SegmentScan, later: list[tuple[int, Path]]) -> None:
        """Keep the good records before a damaged one; set the rest aside."""
        dropped = scan.size - scan.good_end
        where = "tail" if not later else "inside the log"
        self.problem = f"{scan.path}: {scan.problem}"
        log.warning(
            "journal: damaged %s in %s: %s; kept records up to %d, dropped %d bytes%s",
            where, scan.path, scan.problem, self.last_seq, dropped,
            f", set {len(later)} later segment(s) aside as *.corrupt" if later else "",
        )  # fmt: skip
        self.counters["truncated_bytes"] += dropped
        with scan.path.open("r+b") as out:
            out.truncate(scan.good_end)
            out.flush()
            os.fsync(out.fileno())
        for _, path in later:
            path.rename(path.with_name(path.name + ".corrupt"))

    def _open_segment(self, first: int) -> None:
        path = self.directory / segment_name(first)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        os.write(self._fd, SEGMENT_HEADER.pack(MAGIC, FORMAT_VERSION))
        os.fsync(self._fd)
        _fsync_directory(self.directory)
        self._first, self._size = first, SEGMENT_HEADER.size

    def skip_to(self, seq: int) -> None:
        """Continue numbering after ``seq`` (a snapshot covers records the log lost)."""
        if seq > self.last_seq:
            self._rotate(seq + 1)
            self.last_seq = self.synced_seq = seq

    # -- appending ---------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Write one record to the OS; its sequence number (JournalUnavailable: not written)."""
        if self._size >= self.segment_bytes:
            self._rotate(self.last_seq + 1)
        seq = self.last_seq + 1
        data = frame(seq, payload)
        try:
            _write_all(self._fd, data)
        except OSError as error:
            self.counters["append_errors"] += 1
            self._undo_partial()
            raise JournalUnavailable(
                f"the event journal cannot be written ({error.strerror}); nothing of this "
                "request was accepted, retry later"
            ) from error
        self.last_seq = seq
        self._size += len(data)
        self.counters["appends"] += 1
        self.counters["bytes"] += len(data)
        return seq

    def _undo_partial(self) -> None:
        """A failed write may leave part of a record: cut it, so the next append is clean."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:  # the torn tail is cut on the next open instead
            pass

    def _rotate(self, first: int) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self.synced_seq = self.last_seq
            self._fd = -1
            self._open_segment(first)

    async def durable(self, seq: int) -> None:
        """Return once record ``seq`` is on stable storage (policy ``always``; otherwise at
        once: the interval thread syncs it within ``fsync_interval_ms``)."""
        if self.policy != "always":
            return
        while self.synced_seq < seq:
            if self._syncing is None:
                self._syncing = asyncio.ensure_future(self._sync_in_thread())
            await asyncio.shield(self._syncing)

    async def _sync_in_thread(self) -> None:
        try:
            await asyncio.to_thread(self.sync)
        finally:
            self._syncing = None

    def sync(self) -> None:
        """fsync everything appended so far (blocking)."""
        target = self.last_seq
        if target <= self.synced_seq:
            return
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.fsync(self._fd)
            except OSError as error:
                raise JournalUnavailable(f"journal fsync failed: {error.strerror}") from error
        self.counters["fsyncs"] += 1
        self.synced_seq = max(self.synced_seq, target)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except JournalUnavailable as error:
                log.error("journal: %s", error)

    # -- pruning and closing -----------------------------------------------------

    def drop_before(self, seq: int) -> int:
        """Delete the segments whose records all precede ``seq``; how many were deleted."""
        segments = list_segments(self.directory)
        deleted = 0
        for (_, path), (following, _) in itertools.pairwise(segments):
            if following <= seq:
                path.unlink(missing_ok=True)
                deleted += 1
        self.counters["segments_deleted"] += deleted
        return deleted

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
        self.synced_seq = self.last_seq

    def statistics(self) -> dict[str, Any]:
        segments = list_segments(self.directory)
        return {
            "fsync": self.policy,
            "fsync_interval_ms": round(self.interval_s * 1000, 3),
            "last_seq": self.last_seq,
            "synced_seq": self.synced_seq,
            "segments": len(segments),
            "first_segment": segments[0][0] if segments else None,
            "damage": self.problem,
            **self.counters,
        }


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_entry(
    arrived: float, source: str, events: list[Any], forget: list[str] | None = None
) -> bytes:
    """A record's payload: the accepted events of one request, as they were sent, with
    their arrival time (untimed events happened then, also on replay); or, with
    ``forget``, the users forgotten at that point of the stream (and no events)."""
    entry: dict[str, Any] = {"t": arrived, "source": source, "events": events}
    if forget:
        entry["forget"] = list(forget)
    try:
        return encode(entry)
    except CodecError:  # an int past 64 bits passed validation as a float: store it so
        entry["events"] = [_fit_ints(event) for event in events]
        return encode(entry)


def decode_entry(payload: bytes) -> dict[str, Any]:
    entry = decode(payload, STATE_LIMITS)
    if not isinstance(entry, dict) or not isinstance(entry.get("events"), list):
        raise CodecError("not a journal entry")
    return entry


def _fit_ints(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _fit_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fit_ints(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


def forgotten_users(entry: dict[str, Any]) -> list[str]:
    """The users a journal entry forgets (none: an entry of events)."""
    users = entry.get("forget")
    return [u for u in users if isinstance(u, str)] if isinstance(users, list) else []


def export_jsonl(directory: Path, out: TextIO) -> int:
    """Write every event of the journal as one JSON line, as it was sent, with ``ts`` set
    to its arrival time when it had none (so posting the lines to ``POST /v1/events`` as
    NDJSON teaches another daemon the same stream); the number of events.  The events of
    a user the journal later forgets (``DELETE /v1/users/{user}``) are left out."""
    forgotten: dict[str, int] = {}  # user -> the last record that forgets them
    for record in read_records(directory):
        for user in forgotten_users(decode_entry(record.payload)):
            forgotten[user] = record.seq
    count = 0
    for record in read_records(directory):
        entry = decode_entry(record.payload)
        arrived = entry.get("t")
        for event in entry["events"]:
            author = event.get("user") if isinstance(event, dict) else None
            if author is not None and record.seq < forgotten.get(str(author), -1):
                continue
            if isinstance(event, dict) and event.get("ts") is None and arrived is not None:
                event = {**event, "ts": arrived}
            out.write(json.dumps(event, ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count
