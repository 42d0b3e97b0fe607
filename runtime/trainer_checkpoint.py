"""A cluster trainer's user histories and item statistics, checkpointed (issue 10, cluster).

The weights live in the shards; what a trainer keeps beside them (the catalog, the
user histories, the item-to-item statistics, trending counts and content profiles,
the extra components, and the stream position its sampled negatives are drawn by)
lived only in its memory, so a restarted trainer rebuilt them
from the events topic's start (``rebuild_history``): a start-up that grew with the
cluster's age.  A trainer now writes them to ``cluster.checkpoint_dir`` every
``cluster.checkpoint_every`` events records it commits and at a clean stop, with the
next events offset of every partition they cover; a restarted trainer (any of the
group: partitions move between them) loads the file and follows only the committed
events after those offsets.

Each write happens right after a record is committed, between two records, so the
state is exactly the covered records' (a batch is walked whole before its commit).  A
stop in the middle of a record writes nothing: the last periodic file stands, and the
restarted trainer follows a longer tail.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from actors.model import Model
from actors.state import StateError, Stateful
from runtime import snapshots
from runtime.config import Config

log = logging.getLogger("freshrank.cluster")
KIND = "trainer checkpoint"
HISTORY_PARTS = ("catalog", "users", "sequence", "stream")


def trainer_checkpoint_path(config: Config) -> Path:
    return Path(config.cluster.checkpoint_dir) / "trainer-history.msgpack"


class EventsCovered:
    """Per events partition, the next offset the saved histories have not learned."""

    STATE_VERSION: ClassVar[int] = 1

    def __init__(self) -> None:
        self.next: dict[int, int] = {}

    def advance(self, partition: int, next_offset: int) -> None:
        self.next[partition] = max(self.next.get(partition, 0), next_offset)

    def to_state(self) -> dict[str, Any]:
        return {"next": {str(p): o for p, o in self.next.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        self.next = {int(p): int(o) for p, o in state["next"].items()}


class TrainerCheckpoint:
    """When to write a trainer's histories, writing them, and reading them back."""

    def __init__(self, config: Config, model: Model) -> None:
        self.path = trainer_checkpoint_path(config)
        self.model = model
        self.every = config.cluster.checkpoint_every
        self.covered = EventsCovered()
        self.since = 0
        self.written = 0
        self.in_record = False  # between the start of a record and its commit

    def _parts(self) -> dict[str, Stateful]:
        model = self.model.parts()
        kept = [name for name in model if name in HISTORY_PARTS or name in self.model.components]
        return {**{name: model[name] for name in kept}, "events": self.covered}

    def restore(self) -> bool:
        """Load the file when there is a usable one (a refused one is logged in one line)."""
        if not self.path.exists():
            return False
        try:
            snapshots.load(self.path, KIND, self.model.settings(), self._parts())
        except StateError as error:
            log.warning("%s; rebuilding the histories from the events topic", error)
            self.covered.next = {}
            return False
        return True

    def committed(self, position: tuple[int, int]) -> None:
        """An events record is learned and committed: it is covered; maybe write now."""
        self.covered.advance(position[0], position[1] + 1)
        self.in_record = False
        self.since += 1
        if self.since >= self.every:
            self.write()

    def write(self) -> None:
        if self.in_record:  # stopped inside a record: its walk may be half done
            return
        snapshots.save(self.path, KIND, self.model.settings(), self._parts())
        self.since = 0
        self.written += 1

    def statistics(self) -> dict[str, Any]:
        return {"written": self.written, "covered": dict(self.covered.next)}
