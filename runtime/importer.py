"""``freshrank import``: an event log into a running daemon, over its HTTP API.

The log is JSON lines, CSV or MovieLens (``--format``, read by runtime/import_sources.py);
its events go in requests of ``--batch-size`` events through
:class:`runtime.client.Client` (so 429 and 503 are retried with backoff) and each request
waits until its events are learned, so the daemon's admission control paces the import.
A record that cannot be read is not sent; it is reported with its line number, as is
every event the daemon refuses (its reason from the answer).  The summary is one JSON
object on standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.client import Client
from runtime.errors import BadInput
from runtime.import_sources import (
    CSV_HELP,
    IMPORT_FORMATS,
    Record,
    Refused,
    jsonl_records,
    open_records,
)

UNREACHABLE = (urllib.error.URLError, ConnectionError, TimeoutError)
SHOWN = 10  # refusals printed on standard error; the summary counts them all
# a batch is answered once learned, and an unanswered one is not resent (it may have been
# learned): wait long for a daemon that is busy, or still compiling on its first start
IMPORT_TIMEOUT_S = 300.0


@dataclass
class ImportSummary:
    lines: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    requests: int = 0
    retries: int = 0
    refusals: list[str] = field(default_factory=list)  # the first SHOWN, "line N: reason"

    def refuse(self, where: str, reason: str) -> None:
        self.rejected += 1
        if len(self.refusals) < SHOWN:
            self.refusals.append(f"{where}: {reason}")


def batches(
    records: Iterator[Record], size: int, summary: ImportSummary
) -> Iterator[tuple[list[str], list[Any]]]:
    """(where each is, events) of at most ``size`` events; records that cannot be read
    are refused here."""
    wheres: list[str] = []
    events: list[Any] = []
    for where, record in records:
        summary.lines += 1
        if isinstance(record, Refused):
            summary.refuse(where, record.reason)
            continue
        wheres.append(where)
        events.append(record)
        if len(events) >= size:
            yield wheres, events
            wheres, events = [], []
    if events:
        yield wheres, events


def import_records(
    records: Iterator[Record], client: Client, batch_size: int = 1000, progress: Any | None = None
) -> ImportSummary:
    """Send every event of ``records``; the counts, with the first refusals' reasons."""
    summary = ImportSummary()
    for wheres, events in batches(records, batch_size, summary):
        result = client.ingest(events)
        summary.requests += 1
        summary.sent += len(events)
        summary.accepted += int(result.get("accepted", 0))
        for error in result.get("errors", []):
            summary.refuse(wheres[int(error["index"])], str(error["reason"]))
        if progress is not None:
            progress.update(len(events))
    summary.retries = client.retries
    return summary


def import_jsonl(
    path: Path, client: Client, batch_size: int = 1000, progress: Any | None = None
) -> ImportSummary:
    """Send every event of the JSON-lines log ``path``."""
    return import_records(jsonl_records(path), client, batch_size, progress)


def cmd_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.batch_size < 1:
        raise BadInput(f"--batch-size must be at least 1, got {args.batch_size}")
    records = open_records(Path(args.log), args.format)
    token = args.token or os.environ.get("FRESHRANK_TOKEN") or None
    client = Client(args.url, token=token, timeout_s=IMPORT_TIMEOUT_S)
    try:
        with tqdm(unit=" events", disable=args.no_progress, file=sys.stderr) as progress:
            summary = import_records(records, client, args.batch_size, progress)
    except UNREACHABLE as error:  # after the client's retries
        raise BadInput(f"cannot reach {args.url}: {error}; is the daemon running?") from None
    except OSError as error:
        raise BadInput(f"cannot read {args.log}: {error}") from None
    for refusal in summary.refusals:
        print(f"freshrank import: refused {refusal}", file=sys.stderr)
    print(json.dumps({k: v for k, v in asdict(summary).items() if k != "refusals"}))
    if summary.lines and not summary.accepted:
        print(f"freshrank import: no event was accepted; is it a {args.format} event log?",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def add_import_parser(sub: Any) -> None:
    parser = sub.add_parser("import", help="send an event log to a running daemon over HTTP")
    parser.add_argument(
        "log", help="the log: JSON lines, CSV, or the ml-100k folder or its u.data (--format)"
    )
    parser.add_argument(
        "--format",
        choices=IMPORT_FORMATS,
        default="jsonl",
        help=f"jsonl: one event per line, as POST /v1/events takes them; csv: {CSV_HELP}; "
        "movielens: the catalog of u.item, then the ratings in time order",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the daemon")
    parser.add_argument("--token", help="bearer token (default: $FRESHRANK_TOKEN)")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per request")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_import)
