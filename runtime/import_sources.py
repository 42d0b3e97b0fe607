"""What ``freshrank import`` reads: a log file as event objects (as ``POST /v1/events``
takes them), each with where it is in the file, or the reason it cannot be sent.

* ``jsonl``: one event per line.
* ``csv``: a header row naming event fields (:data:`CSV_HELP` is the mapping), then one
  event per row.
* ``movielens``: the ml-100k folder or its ``u.data``, read by the replay reader
  (``actors.readers.movielens_log``): the catalog of ``u.item``, then the ratings in time
  order with their users' ``u.user`` profiles.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from actors.events import FEATURE_GROUPS, event_object
from actors.readers import movielens_log
from runtime.bodies import DuplicateKey, loads
from runtime.errors import BadInput

IMPORT_FORMATS = ("jsonl", "csv", "movielens")
CSV_FIELDS = ("user", "item", "label", "ts", "weight")
CSV_HELP = (
    "columns user, item, label, ts, weight, and user_features.NAME, item_features.NAME, "
    "context.NAME (a string; NAME:number a number, NAME:list '|'-separated strings); "
    "an empty cell leaves the field out"
)


@dataclass(frozen=True)
class Refused:
    """A record that is not sent: why."""

    reason: str


Record = tuple[str, Any]
"""(where it is: ``line 7``, the event object or :class:`Refused`)."""


def jsonl_records(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", loads(line)
            except DuplicateKey as error:
                yield f"line {number}", Refused(str(error))
            except ValueError as error:
                yield f"line {number}", Refused(f"not JSON: {error}")


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    value = float(text)  # ValueError: the caller names the column
    if not math.isfinite(value):
        raise ValueError(f"not finite: {text!r}")
    return value


Cell = Callable[[dict[str, Any], str], None]


def _column(name: str) -> Cell:
    """How one header column puts its cell into the event object."""
    if name in ("user", "item"):
        return lambda obj, cell: obj.update({name: cell})
    if name in CSV_FIELDS:
        return lambda obj, cell: obj.update({name: _number(cell)})
    group, _, feature = name.partition(".")
    feature, _, kind = feature.partition(":")
    if group not in FEATURE_GROUPS or not feature or kind not in ("", "number", "list"):
        raise BadInput(f"CSV column {name!r} is not an event field: use {CSV_HELP}")

    def put(obj: dict[str, Any], cell: str) -> None:
        value: Any = cell
        if kind == "number":
            value = _number(cell)
        elif kind == "list":
            value = [part for part in cell.split("|") if part]
        obj.setdefault(group, {})[feature] = value

    return put


def _csv_header(header: list[str], path: Path) -> list[Cell]:
    names = [name.strip() for name in header]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BadInput(f"{path}: the CSV header names {', '.join(map(repr, repeated))} twice")
    if "item" not in names:
        raise BadInput(f"{path}: the CSV header {names[:10]} has no 'item' column ({CSV_HELP})")
    return [_column(name) for name in names]


def _csv_event(row: list[str], header: list[str], cells: list[Cell]) -> Any:
    if len(row) != len(cells):
        return Refused(f"{len(row)} fields, the header has {len(cells)}")
    obj: dict[str, Any] = {}
    for name, put, cell in zip(header, cells, row, strict=True):
        if not cell:
            continue
        try:
            put(obj, cell)
        except ValueError:
            return Refused(f"column {name.strip()!r}: not a number: {cell[:80]!r}")
    return obj


def csv_records(path: Path) -> Iterator[Record]:
    """The rows of a CSV log; its header is checked at once (BadInput naming the column)."""
    handle = path.open(encoding="utf-8-sig", errors="replace", newline="")
    try:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:  # an empty file: no events
            handle.close()
            return iter(())
        cells = _csv_header(header, path)
    except (BadInput, csv.Error):
        handle.close()
        raise
    return _csv_rows(handle, reader, header, cells)


def _csv_rows(
    handle: TextIO, reader: Any, header: list[str], cells: list[Cell]
) -> Iterator[Record]:
    with handle:
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield f"line {start}", Refused(f"not CSV: {error}")
                start = reader.line_num + 1
                continue
            if row:
                yield f"line {start}", _csv_event(row, header, cells)
            start = reader.line_num + 1


def movielens_records(path: Path) -> Iterator[Record]:
    log = movielens_log(path)
    for where, reason, _line in log.rejected:
        yield where, Refused(reason)
    for number, event in log.items:
        yield f"u.item line {number}", event_object(event)
    for number, event in log.ratings:
        yield f"{log.ratings_file} line {number}", event_object(event)


def open_records(path: Path, fmt: str) -> Iterator[Record]:
    """The records of ``path`` read as ``fmt``; BadInput when it is not there."""
    if fmt == "movielens":
        data = path / "u.data" if path.is_dir() else path
        if not data.is_file():
            raise BadInput(f"{data} is not a file: give the ml-100k folder or its u.data")
        return movielens_records(path)
    if not path.is_file():
        raise BadInput(f"{path} is not a file: give a {fmt} event log")
    if fmt == "csv":
        return csv_records(path)
    if fmt == "jsonl":
        return jsonl_records(path)
    raise BadInput(f"unknown format {fmt!r}: use one of {', '.join(IMPORT_FORMATS)}")
