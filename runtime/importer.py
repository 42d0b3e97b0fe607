"""``freshrank import``: a JSON-lines event log into a running daemon, over its HTTP API.

Each line is one event as ``POST /v1/events`` takes it; lines go in requests of
``--batch-size`` events through :class:`runtime.client.Client` (so 429 and 503 are
retried with backoff) and each request waits until its events are learned, so the
daemon's admission control paces the import.  A line that is not JSON is not sent; it
is reported with its line number, as is every event the daemon refuses (its reason
from the answer).  The summary is one JSON object on standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from runtime.client import Client
from runtime.errors import BadInput

SHOWN = 10  # refusals printed on standard error; the summary counts them all


@dataclass
class ImportSummary:
    lines: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    requests: int = 0
    retries: int = 0
    refusals: list[str] = field(default_factory=list)  # the first SHOWN, "line N: reason"

    def refuse(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.refusals) < SHOWN:
            self.refusals.append(f"line {line}: {reason}")


def batches(
    handle: TextIO, size: int, summary: ImportSummary
) -> Iterator[tuple[list[int], list[Any]]]:
    """(line numbers, events) of at most ``size`` events; lines that are not JSON are
    refused here."""
    numbers: list[int] = []
    events: list[Any] = []
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        summary.lines += 1
        try:
            events.append(json.loads(line))
        except ValueError as error:
            summary.refuse(number, f"not JSON: {error}")
            continue
        numbers.append(number)
        if len(events) >= size:
            yield numbers, events
            numbers, events = [], []
    if events:
        yield numbers, events


def import_jsonl(
    path: Path, client: Client, batch_size: int = 1000, progress: Any | None = None
) -> ImportSummary:
    """Send every event of ``path``; the counts, with the first refusals' reasons."""
    summary = ImportSummary()
    with path.open(encoding="utf-8", errors="replace") as handle:
        for numbers, events in batches(handle, batch_size, summary):
            result = client.ingest(events)
            summary.requests += 1
            summary.sent += len(events)
            summary.accepted += int(result.get("accepted", 0))
            for error in result.get("errors", []):
                summary.refuse(numbers[int(error["index"])], str(error["reason"]))
            if progress is not None:
                progress.update(len(events))
    summary.retries = client.retries
    return summary


def cmd_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    path = Path(args.log)
    if not path.is_file():
        raise BadInput(f"{path} is not a file: give a JSON-lines event log")
    if args.batch_size < 1:
        raise BadInput(f"--batch-size must be at least 1, got {args.batch_size}")
    token = args.token or os.environ.get("FRESHRANK_TOKEN") or None
    client = Client(args.url, token=token)
    try:
        with tqdm(unit=" events", disable=args.no_progress, file=sys.stderr) as progress:
            summary = import_jsonl(path, client, args.batch_size, progress)
    except OSError as error:  # after the client's retries
        raise BadInput(f"cannot reach {args.url}: {error}; is the daemon running?") from None
    for refusal in summary.refusals:
        print(f"freshrank import: refused {refusal}", file=sys.stderr)
    print(json.dumps({k: v for k, v in asdict(summary).items() if k != "refusals"}))
    if summary.lines and not summary.accepted:
        print("freshrank import: no event was accepted; is it a JSON-lines event log?",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def add_import_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "import", help="send a JSON-lines event log to a running daemon over HTTP"
    )
    parser.add_argument("log", help="one event per line, as POST /v1/events takes them")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the daemon")
    parser.add_argument("--token", help="bearer token (default: $FRESHRANK_TOKEN)")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per request")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_import)
