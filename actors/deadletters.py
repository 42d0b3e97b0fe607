"""Dead-letter sink: every rejected input is kept with its reason, never silently dropped."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from runtime.actor import Actor
from runtime.messages import DeadLetters
from runtime.transport import Channel

MAX_PAYLOAD_CHARS = 4096
MAX_REASON_KINDS = 200


def reason_kind(reason: str) -> str:
    """A short counter key for a reason: its text up to the first quoted value or comma (a
    leading quoted field name, as in "'weight' must be ...", is part of the key)."""
    start = 1
    if reason[:1] in ("'", '"'):
        start = max(reason.find(reason[0], 1) + 1, 1)
    cut = len(reason)
    for mark in ("'", '"', ","):
        pos = reason.find(mark, start)
        if pos > 0:
            cut = min(cut, pos)
    return reason[:cut].strip() or reason[:40]


class DeadLetterSink(Actor):
    """Appends rejected inputs to a JSONL file (embedded mode), one record per line."""

    def __init__(self, path: str | Path | None, inbox: Channel) -> None:
        super().__init__("dead-letters", inbox)
        self.path = Path(path) if path else None
        self.records = 0
        self.by_reason: Counter[str] = Counter()

    async def handle(self, message: DeadLetters) -> None:
        lines = []
        for reason, payload in zip(message.reasons, message.payloads, strict=True):
            key = reason_kind(reason)
            if key in self.by_reason or len(self.by_reason) < MAX_REASON_KINDS:
                self.by_reason[key] += 1
            else:
                self.by_reason["other"] += 1
            record = {
                "ts": message.ts,
                "source": message.source,
                "reason": reason,
                "payload": payload[:MAX_PAYLOAD_CHARS],
                "truncated": len(payload) > MAX_PAYLOAD_CHARS,
            }
            # ASCII escapes: a payload may hold lone surrogates that no UTF-8 file can store
            lines.append(json.dumps(record))
        self.records += len(lines)
        if self.path is not None and lines:
            self._append(lines)

    def _append(self, lines: list[str]) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def statistics(self) -> dict[str, Any]:
        return {
            **super().statistics(),
            "records": self.records,
            "by_reason": dict(self.by_reason.most_common(50)),
            "path": str(self.path) if self.path else None,
        }
