"""``freshrank state verify DIR``: what a start would make of a state directory, without
changing it.

One line per snapshot (newest first: its journal position, size, and ``valid`` or the
reason the start would refuse it), one for the journal (segments, records, first and
last position, a torn tail or damage inside with its position), then which snapshot a
start would restore and how many journal records it would replay.  Every check is the
start's own (:func:`runtime.durability.load_snapshot`, :func:`start_refusal`,
:func:`runtime.journal.scan_segment`, :func:`read_records`), run on a scratch model of
the same config: only the journal's repairs (cutting a torn tail, setting damaged
segments aside) are reported instead of made.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from actors.model import build_model
from runtime.config import Config
from runtime.durability import SnapshotStore, load_snapshot, reason, start_refusal
from runtime.journal import JournalError, list_segments, read_records, scan_segment

SEGMENT_FIX = "move the files that are not journal segments out of {directory}"


@dataclass
class JournalReport:
    """What a start's check of the journal would find (and repair)."""

    segments: int = 0
    records: int = 0
    first: int | None = None  # the first record's position (None: no segment)
    last: int | None = None
    problem: str | None = None  # damage, and what the start does with it
    fatal: str | None = None  # a journal the start cannot open

    def line(self) -> str:
        if self.fatal is not None:
            return f"journal: unusable: {self.fatal}"
        span = f", positions {self.first}..{self.last}" if self.records else ""
        text = f"journal: {self.segments} segment(s), {self.records} records{span}"
        return text + (f"; {self.problem}" if self.problem else "")


@dataclass
class Verdict:
    lines: list[str] = field(default_factory=list)
    refusal: str | None = None  # why a start would fail (None: it would succeed)


def check_journal(directory: Path) -> JournalReport:
    """The journal as :meth:`runtime.journal.Journal.open` checks it, read-only."""
    report = JournalReport()
    segments = list_segments(directory)
    report.segments = len(segments)
    report.first = segments[0][0] if segments else None
    for k, (first, path) in enumerate(segments):
        try:
            scan = scan_segment(path, first)
        except (JournalError, OSError) as error:
            report.fatal = f"{error}; fix: {SEGMENT_FIX.format(directory=directory)}"
            return report
        report.records += len(scan.records)
        if scan.records:
            report.last = scan.records[-1].seq
        if scan.problem is not None:
            later = len(segments) - k - 1
            if later:
                report.problem = (
                    f"damage inside the log in {path.name}: {scan.problem}; a start keeps "
                    f"the records before it and sets {later} later segment(s) aside"
                )
            else:
                dropped = scan.size - scan.good_end
                report.problem = (
                    f"damaged tail in {path.name}: {scan.problem}; a start cuts the "
                    f"{dropped} bytes from there on"
                )
            break
    return report


def verify(state: Path, config: Config) -> Verdict:
    """The report of a state directory under ``config``'s model settings."""
    verdict = Verdict()
    if not state.is_dir():
        verdict.refusal = f"{state} is not a directory; fix: pass the state directory"
        return verdict
    scratch = build_model(config)
    restored: tuple[Path, int] | None = None
    rejections: list[tuple[Path, str]] = []
    before: list[tuple[Path, str]] = []  # the refusals a start meets before it restores
    for named, path in SnapshotStore(state / "snapshots", 1).paths():
        size = path.stat().st_size
        try:
            position = load_snapshot(path, scratch)
        except Exception as error:  # as the start: any error means "not this snapshot"
            why = reason(error).removeprefix(f"{path}: ")
            rejections.append((path, why))
            verdict.lines.append(f"snapshot {path.name}: position {named}, {size} bytes, "
                                 f"refused: {why}")  # fmt: skip
            continue
        verdict.lines.append(f"snapshot {path.name}: position {position}, {size} bytes, valid")
        if restored is None:
            restored, before = (path, position), list(rejections)
    if not rejections and restored is None:
        verdict.lines.append("snapshots: none")
    journal = check_journal(state / "journal")
    verdict.lines.append(journal.line())
    if journal.fatal is not None:
        verdict.refusal = journal.fatal
        return verdict
    position = restored[1] if restored else 0
    verdict.refusal = start_refusal(position, journal.first, before if restored else rejections)
    if verdict.refusal is None:
        replay = sum(1 for _ in read_records(state / "journal", position))
        source = f"restore {restored[0].name}" if restored else "start from an empty model"
        verdict.lines.append(f"start: would {source} (position {position}) and replay "
                             f"{replay} journal records")  # fmt: skip
    return verdict


def cmd_state_verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the report; 0 when a start would succeed, 2 with the reason and the fix."""
    out = out or sys.stdout
    config = Config.load(args.config) if args.config else Config()
    verdict = verify(Path(args.dir), config)
    for line in verdict.lines:
        print(line, file=out)
    if verdict.refusal is not None:
        print(f"freshrank state verify: a start would fail: {verdict.refusal}", file=sys.stderr)
        return 2
    return 0


def add_state_parser(sub: Any) -> None:
    state = sub.add_parser("state", help="the state directory (journal and snapshots)")
    state_sub = state.add_subparsers(dest="state_command", required=True)
    check = state_sub.add_parser(
        "verify", help="check a state directory as a start would, without changing it"
    )
    check.add_argument("dir", help="the state directory (state.dir, freshrank run --state)")
    check.add_argument("--config", help="config (TOML) whose model settings the start uses")
    check.set_defaults(func=cmd_state_verify)
