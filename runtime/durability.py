"""Durable state of the embedded System: the event journal plus snapshots of journal
positions, so a restart is "the newest valid snapshot, then the journal after it".

:class:`SnapshotStore` keeps the last K snapshot files (``snapshot-<position>.msgpack``,
the file format of ``actors/state.py``); :class:`Durability` owns the journal, the
store, their counters and the order of the steps when a snapshot is written (journal
synced, file written atomically, older files and the journal segments no kept snapshot
needs deleted).  :class:`SnapshotTimer` takes periodic snapshots.  :class:`Persistence`
is what the System holds: restore on start (a snapshot file, or the newest valid
snapshot of ``state.dir`` and the journal after it), the journal of ingest, and taking
a consistent copy of the model for a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actors.forget import UnknownUser, forget_user, knows_user
from actors.model import Model, build_model
from actors.state import StateError, compose, restore, state_pieces
from actors.trainer import Watermark
from runtime import snapshots
from runtime.codec import CodecError
from runtime.config import Config
from runtime.errors import FreshrankError
from runtime.front import IngestResult, SplitEvents
from runtime.gcpause import gc_paused
from runtime.gilshare import loop_first
from runtime.journal import (
    Journal,
    Record,
    decode_entry,
    encode_entry,
    forgotten_users,
    read_records,
)
from runtime.snapshots import write_atomically
from runtime.supervisor import Service, Supervisor

log = logging.getLogger("freshrank.state")

PREFIX, SUFFIX = "snapshot-", ".msgpack"
SNAPSHOT = "snapshot"  # the kind of document a snapshot file holds


class SnapshotStore:
    """The snapshot files of a state directory, named by the journal position they cover."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep

    def paths(self) -> list[tuple[int, Path]]:
        """(position, file), newest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            stem = path.name.removeprefix(PREFIX).removesuffix(SUFFIX)
            if path.name.startswith(PREFIX) and path.name.endswith(SUFFIX) and stem.isdigit():
                found.append((int(stem), path))
        return sorted(found, reverse=True)

    def write(self, data: bytes | Sequence[bytes | memoryview], position: int) -> Path:
        """Write atomically, then delete all but the newest ``keep``."""
        path = self.directory / f"{PREFIX}{position:020d}{SUFFIX}"
        write_atomically(path, data)
        for _, old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return path


class Durability:
    """The journal and the snapshots of one state directory."""

    def __init__(self, config: Config) -> None:
        state, journal = config.state, config.journal
        root = Path(state.dir)
        self.journal = Journal(
            root / "journal", journal.fsync, journal.fsync_interval_ms, journal.segment_bytes
        )
        self.store = SnapshotStore(root / "snapshots", state.keep_snapshots)
        self.every_events = state.snapshot_every_events
        self.every_s = state.snapshot_every_s
        self.since_snapshot = 0  # events accepted since the last snapshot's copy
        self.restored_from: str | None = None
        self.counters = dict.fromkeys(
            ("snapshots_written", "snapshot_errors", "snapshots_rejected",
             "replayed_records", "replayed_events", "replay_refused", "replayed_forgets"),
            0,
        )  # fmt: skip
        self.last: dict[str, Any] = {}
        self.rejections: list[tuple[Path, str]] = []  # the snapshots refused at start
        self.due = asyncio.Event()

    def accepted(self, events: int) -> None:
        self.since_snapshot += events
        if self.since_snapshot >= self.every_events:
            self.due.set()

    def rejected(self, path: Path, reason: str) -> None:
        self.counters["snapshots_rejected"] += 1
        self.rejections.append((path, reason))
        log.warning("snapshot %s is unusable (%s); falling back to the previous one", path, reason)

    def write(self, document: dict[str, Any], position: int, paused_s: float) -> Path:
        """Encode and write a frozen snapshot (in a worker thread), then prune."""
        started = time.perf_counter()
        self.journal.sync()  # the snapshot never covers records the journal could lose
        path = self.store.write(state_pieces(document), position)
        kept = self.store.paths()
        self.journal.drop_before(kept[-1][0] + 1)
        self.counters["snapshots_written"] += 1
        self.last = {"path": str(path), "position": position, "paused_ms": round(paused_s * 1e3, 3),
                     "write_ms": round((time.perf_counter() - started) * 1e3, 3)}  # fmt: skip
        return path

    def statistics(self) -> dict[str, Any]:
        return {
            "journal": self.journal.statistics(),
            "snapshots": {
                "kept": len(self.store.paths()),
                "restored_from": self.restored_from,
                "since_last": self.since_snapshot,
                "last": self.last or None,
                **self.counters,
            },
        }


def freeze(value: Any) -> Any:
    """A copy of a composed document that later learning cannot change (arrays, dicts
    and lists copied; everything else in a document is immutable)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: freeze(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [freeze(v) for v in value]
    return value


class SnapshotTimer:
    """Takes a snapshot every ``every_events`` accepted events or ``every_s`` seconds
    (when something was accepted since the last one)."""

    name = "snapshots"

    def __init__(self, durability: Durability, take: Callable[[], Awaitable[Any]]) -> None:
        self.durability = durability
        self._take = take
        self._supervisor: Supervisor | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def attach(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    async def start(self) -> None:
        assert self._supervisor is not None
        self._stop.clear()
        self._task = self._supervisor.spawn(self._loop(), "snapshots:timer")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        self.durability.due.set()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _loop(self) -> None:
        d = self.durability
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(d.every_s):  # wait_for may swallow a cancel (3.11)
                    await d.due.wait()
            d.due.clear()
            if not self._stop.is_set() and d.since_snapshot > 0:
                await self._take()


Replay = Callable[[list[Any], float], Awaitable[tuple[IngestResult, int | None]]]


class Persistence:
    """The saved state of the embedded System's model.

    Without ``state.dir``: one snapshot file (``state.snapshot_path``), restored on start
    when configured and written on request.  With it: the journal (ingest appends every
    accepted request before answering it), the newest valid snapshot of the directory
    (older ones are the fallbacks) and the journal records after it, replayed once the
    services run; snapshots are taken on request, by :class:`SnapshotTimer` and at a
    draining stop.
    """

    def __init__(
        self,
        model: Model,
        learned: Watermark,
        ingest_lock: asyncio.Lock,
        clock: Callable[[], float],
        restored: Callable[[], None] = lambda: None,
    ) -> None:
        self.model = model
        self.config = model.config
        self.learned = learned
        # the owner's ingest lock: a snapshot copies the model between two requests
        self._ingest_lock = ingest_lock
        self.clock = clock
        self._restored = restored  # the owner's counts over the restored state
        self.durability = Durability(self.config) if self.config.state.dir else None
        self.position = 0  # the journal position the restored state covers
        # set unless a start's journal replay is under way: a snapshot taken in the middle
        # would record the journal's end as covered while the model learned only part of it
        self._not_replaying = asyncio.Event()
        self._not_replaying.set()

    def services(self) -> list[Service]:
        return [] if self.durability is None else [SnapshotTimer(self.durability, self.snapshot)]

    # -- start and stop ----------------------------------------------------

    def open(self) -> None:
        """Restore what the configuration asks for, before any service starts."""
        self.position = self._open_durable() if self.durability else self._restore_configured()

    async def recover(self, replay: Replay) -> None:
        """Learn the journal's records after the restored snapshot, in order, as when they
        came (with ``state.dir``; the services must be running)."""
        d = self.durability
        if d is None:
            return
        last = None
        self._not_replaying.clear()
        try:
            for record in read_records(d.journal.directory, self.position):
                last = await self._replay_record(record, replay) or last
            if last is not None:
                await self.learned.wait_for(last)
        finally:
            self._not_replaying.set()
        records, events = d.counters["replayed_records"], d.counters["replayed_events"]
        if records:
            log.info(
                "replayed %d journal records (%d events) after position %d",
                records, events, self.position,
            )  # fmt: skip

    async def _replay_record(self, record: Record, replay: Replay) -> int | None:
        assert self.durability is not None
        d = self.durability
        try:
            entry = decode_entry(record.payload)
        except CodecError as error:  # checksummed, so only a foreign writer gets here
            log.warning("journal record %d is not an entry (%s); skipped", record.seq, error)
            return None
        if users := forgotten_users(entry):
            async with self._ingest_lock:
                await self.learned.wait_for(self.model.stream.seq)
                for user in users:
                    forget_user(self.model, user)
                self._restored()
            d.counters["replayed_records"] += 1
            d.counters["replayed_forgets"] += len(users)
            return None
        result, last = await replay(entry["events"], float(entry.get("t", self.clock())))
        d.counters["replayed_records"] += 1
        d.counters["replayed_events"] += result.accepted
        d.counters["replay_refused"] += result.rejected
        d.accepted(result.accepted + result.rejected)
        return last

    def close(self) -> None:
        if self.durability is not None:
            self.durability.journal.close()

    # -- the journal of ingest ----------------------------------------------

    def append(self, events: list[Any], split: SplitEvents, source: str, now: float) -> int | None:
        """Append a request's valid events to the journal; its record (None: not journaled)."""
        if self.durability is None:
            return None
        refused = {index for index, _, _ in split.refused}
        accepted = [obj for i, obj in enumerate(events) if i not in refused]
        if not accepted:
            return None
        position = self.durability.journal.append(encode_entry(now, source, accepted))
        self.durability.accepted(len(accepted))
        return position

    async def durable(self, position: int | None) -> None:
        """Return once the record at ``position`` is as durable as ``journal.fsync`` says."""
        if position is not None and self.durability is not None:
            await self.durability.journal.durable(position)

    async def forget_user(self, user: str) -> dict[str, Any]:
        """Forget ``user`` (:func:`actors.forget.forget_user`) between two requests, once
        everything accepted before is learned, and record it in the journal (with
        ``state.dir``) before answering, so a replay forgets them at the same point of
        the stream; what was removed.  UnknownUser when the model keeps nothing of them."""
        async with self._ingest_lock:
            await self.learned.wait_for(self.model.stream.seq)
            if not knows_user(self.model, user):
                raise UnknownUser(f"unknown user {user[:64]!r}")
            position = None
            if self.durability is not None:
                entry = encode_entry(self.clock(), "forget", [], forget=[user])
                position = self.durability.journal.append(entry)
                self.durability.accepted(1)  # a change: the next periodic snapshot covers it
            removed = forget_user(self.model, user)
            self._restored()  # the learners' counts of learned weights
        await self.durable(position)
        return removed

    # -- one snapshot file ---------------------------------------------------

    def write_snapshot(self, path: str | Path | None = None) -> Path:
        """Write the model's parts atomically: never half-written (it blocks for as long as
        it takes: on a running loop use :meth:`save_snapshot`)."""
        target = Path(path or self.config.state.snapshot_path)
        return snapshots.save(target, SNAPSHOT, self.model.settings(), self.model.parts())

    async def save_snapshot(self, path: str | Path | None = None) -> Path:
        """:meth:`write_snapshot` without stalling the event loop: ingest pauses while the
        model is copied, and the copy, encoding and writing run in worker threads."""
        target = Path(path or self.config.state.snapshot_path)
        # a full collection in the worker thread would hold the GIL; the worker's Python
        # code hands it to the loop every 0.5 ms, not 5
        with gc_paused(), loop_first():
            async with self._ingest_lock:
                document = await self._frozen_document()
            return await asyncio.to_thread(snapshots.write_document, target, document)

    async def _frozen_document(self) -> dict[str, Any]:
        """A copy of the model once every queued event is learned (the caller holds the
        ingest lock, so nothing changes it meanwhile; it is copied in a worker thread:
        the copy of a 2^22-slot model took the loop 40 ms)."""
        await self.learned.wait_for(self.model.stream.seq)
        parts = self.model.parts()

        def copy() -> dict[str, Any]:
            document: dict[str, Any] = freeze(compose(SNAPSHOT, self.model.settings(), parts))
            return document

        return await asyncio.to_thread(copy)

    def restore(self, path: str | Path) -> None:
        """Load a snapshot written by :meth:`write_snapshot` (same model settings required)."""
        snapshots.load(Path(path), SNAPSHOT, self.model.settings(), self.model.parts())
        self.learned.advance(self.model.stream.seq)
        self._restored()

    def _restore_configured(self) -> int:
        """A first start has no snapshot; later starts continue from it."""
        state = self.config.state
        if state.restore and state.snapshot_path and Path(state.snapshot_path).exists():
            try:
                self.restore(state.snapshot_path)
            except StateError as error:
                raise StateError(
                    f"{error}; start with the config it was written with, move the file "
                    "away, or set state.restore = false to start empty"
                ) from None
        return 0

    # -- a state directory: journal + snapshots -------------------------------

    def _open_durable(self) -> int:
        """Open the journal and load the newest valid snapshot; the journal position it covers
        (the records after it are replayed once the services run).  A start that would lose
        learned state (the journal does not reach back to the snapshot it can restore)
        refuses with a StateError naming the reason and the fix."""
        assert self.durability is not None
        journal = self.durability.journal
        journal.open()
        if not self.config.state.restore:
            return journal.last_seq
        position = self._load_newest_snapshot()
        refusal = start_refusal(
            position, journal.statistics()["first_segment"], self.durability.rejections
        )
        if refusal is not None:
            journal.close()
            raise StateError(refusal)
        journal.skip_to(position)
        return position

    def _load_newest_snapshot(self) -> int:
        """Newest first: a damaged, foreign or otherwise unloadable snapshot is reported in
        one line and the previous one is tried; none: an empty model (position 0)."""
        assert self.durability is not None
        touched = False
        for _, path in self.durability.store.paths():
            touched = True
            try:
                position = load_snapshot(path, self.model)
            # a part's load_state meeting a malformed state raises whatever it meets
            # (KeyError, ValueError, ...): any of them only means "not this snapshot"
            except Exception as error:
                self.durability.rejected(path, reason(error))
                continue
            self.durability.restored_from = str(path)
            self.learned.advance(self.model.stream.seq)
            self._restored()
            log.info("restored %s (journal position %d)", path, position)
            return position
        if touched:  # a failed load may have changed some parts: back to an empty model
            empty = build_model(self.config, self.clock)
            document = compose(SNAPSHOT, empty.settings(), empty.parts())
            restore(document, SNAPSHOT, self.model.settings(), self.model.parts())
        return 0

    async def snapshot(self) -> Path | None:
        """Write a snapshot of the journal position learned so far (with ``state.dir``).

        Ingest pauses only while the model is copied; copying, encoding and writing run in
        worker threads.  A failed write is logged and counted: the journal still has the events."""
        d = self.durability
        if d is None:
            return None
        await self._not_replaying.wait()  # the journal's last position is not learned yet
        started = time.perf_counter()
        with gc_paused(), loop_first():  # as in save_snapshot
            async with self._ingest_lock:
                document = await self._frozen_document()
                position = d.journal.last_seq
                document["journal"] = {"position": position}
                d.since_snapshot = 0
            paused = time.perf_counter() - started
            try:
                return await asyncio.to_thread(d.write, document, position, paused)
            except (OSError, FreshrankError) as error:
                d.counters["snapshot_errors"] += 1
                log.error("snapshot at journal position %d failed: %s", position, reason(error))
                return None

    def statistics(self) -> dict[str, Any]:
        return self.durability.statistics() if self.durability is not None else {}


def load_snapshot(path: Path, model: Model) -> int:
    """Restore one snapshot file of a state directory into ``model``'s parts; the journal
    position it covers.  Any exception means "not this snapshot" (:func:`reason` says why):
    this is the whole check a start makes, shared with ``freshrank state verify``."""
    document = snapshots.read(path)
    position = snapshot_position(document)
    restore(document, SNAPSHOT, model.settings(), model.parts())
    return position


def start_refusal(
    position: int, first_record: int | None, rejections: list[tuple[Path, str]]
) -> str | None:
    """Why a start restoring ``position`` must not go on (None: it may): the journal, which
    starts at ``first_record`` (None: empty), lost records right after that position, so
    learning would continue without their events, and the next snapshots would replace the
    refused ones that still hold them."""
    if first_record is None or first_record <= position + 1:
        return None
    if position > 0:
        found = f"the newest usable snapshot covers journal position {position}"
    elif rejections:
        path, why = rejections[0]
        found = f"no usable snapshot (the newest: {why if str(path) in why else f'{path}: {why}'})"
    else:
        found = "no snapshot"
    return (
        f"{found}, and the journal starts at record {first_record}: a start would lose the "
        f"events of records {position + 1}..{first_record - 1}. Fix: start with the config "
        "the snapshots were written with, or put back a good snapshot from a backup of the "
        "state directory; or, giving those events up, start over in a new state directory "
        "and post it the rest (freshrank journal export)"
    )


def snapshot_position(document: Any) -> int:
    journal = document.get("journal") if isinstance(document, dict) else None
    position = journal.get("position") if isinstance(journal, dict) else None
    if not isinstance(position, int) or position < 0:
        raise StateError("no journal position (not a snapshot of a state directory)")
    return position


def reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, FreshrankError) else f"{type(error).__name__}: {text}"
