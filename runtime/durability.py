"""Durable state of the embedded System: the event journal plus snapshots of journal
positions, so a restart is "the newest valid snapshot, then the journal after it".

:class:`SnapshotStore` keeps the last K snapshot files (``snapshot-<position>.msgpack``,
the file format of ``actors/state.py``); :class:`Durability` owns the journal, the
store, their counters and the order of the steps when a snapshot is written (journal
synced, file written atomically, older files and the journal segments no kept snapshot
needs deleted).  :class:`SnapshotTimer` takes periodic snapshots.  The System supplies
the consistent copy of the model (``runtime/system.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from actors.state import encode_state
from runtime.config import Config
from runtime.journal import Journal
from runtime.snapshots import write_atomically
from runtime.supervisor import Supervisor

log = logging.getLogger("freshrank.state")

PREFIX, SUFFIX = "snapshot-", ".msgpack"


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

    def write(self, data: bytes, position: int) -> Path:
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
             "replayed_records", "replayed_events", "replay_refused"),
            0,
        )  # fmt: skip
        self.last: dict[str, Any] = {}
        self.due = asyncio.Event()

    def accepted(self, events: int) -> None:
        self.since_snapshot += events
        if self.since_snapshot >= self.every_events:
            self.due.set()

    def rejected(self, path: Path, reason: str) -> None:
        self.counters["snapshots_rejected"] += 1
        log.warning("snapshot %s is unusable (%s); falling back to the previous one", path, reason)

    def write(self, document: dict[str, Any], position: int, paused_s: float) -> Path:
        """Encode and write a frozen snapshot (in a worker thread), then prune."""
        started = time.perf_counter()
        self.journal.sync()  # the snapshot never covers records the journal could lose
        path = self.store.write(encode_state(document), position)
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
                await asyncio.wait_for(d.due.wait(), d.every_s)
            d.due.clear()
            if not self._stop.is_set() and d.since_snapshot > 0:
                await self._take()
