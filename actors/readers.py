"""Log readers for replay: JSONL events, MovieLens ``u.data``, MovieTweetings, ReChorus
(Amazon) interaction logs, Criteo / generic CTR TSV.

Pure and synchronous: each yields :class:`Chunk`s, a columnar batch plus the
rejected records (with reasons) met while reading it; nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from actors.batching import batch_from_events, take_strings
from actors.events import Event, EventLimits, Feature, InvalidEvent, validate_event
from runtime.bodies import loads as strict_loads
from runtime.messages import INTERACTION, EventBatch

CRITEO_INTS = [f"I{i}" for i in range(1, 14)]
CRITEO_CATS = [f"C{i}" for i in range(1, 27)]
ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


@dataclass
class Chunk:
    """A batch to learn (or None) and the records rejected while reading it."""

    batch: EventBatch | None
    rejected: list[tuple[str, str]] = field(default_factory=list)
    interactions: int = 0


def protocol_flags(total: int, warmup: float = 0.2, every: int = 20) -> np.ndarray:
    """The recommendation replay protocol: after the first ``warmup`` share of the
    interactions, every ``every``-th one is ranked before it is learned."""
    flags = np.zeros(total, bool)
    start = int(total * warmup)
    if every > 0:
        flags[start::every] = True
    return flags


def _age_bucket(age: int) -> str:
    for limit, name in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54")):
        if age < limit:
            return name
    return "55+"


Rejected = tuple[str, str, str]
"""(where: ``u.data line 7``, why it cannot be read, the line as it was)."""


@dataclass
class MovieLensLog:
    """MovieLens 100K as events: the catalog of ``u.item`` (genres, year), then the ratings
    of ``u.data`` sorted by timestamp (file order breaking ties) as implicit positives with
    their user's ``u.user`` profile; each event with its line number, for reports."""

    items: list[tuple[int, Event]]
    ratings: list[tuple[int, Event]]
    rejected: list[Rejected]
    ratings_file: str = "u.data"


def _movielens_item(line: str) -> Event:
    parts = line.split("|")
    if len(parts) < 3 or not parts[0]:
        raise ValueError(f"expected 24 '|'-separated fields (id|title|date|...), got {len(parts)}")
    genres = [g for g, flag in zip(ML_GENRES, parts[5:], strict=False) if flag == "1"]
    year = parts[2][-4:] if len(parts[2]) >= 4 else "unknown"
    return Event(
        None, parts[0], features=[("i.genre", g, 1.0) for g in genres] + [("i.year", year, 1.0)]
    )


def _movielens_profiles(user_file: Path) -> dict[str, list[Feature]]:
    profiles: dict[str, list[Feature]] = {}
    if user_file.exists():
        for line in user_file.read_text(encoding="latin-1").splitlines():
            uid, age, gender, occupation, _zip = line.split("|")
            profiles[uid] = [
                ("u.age", _age_bucket(int(age)), 1.0),
                ("u.gender", gender, 1.0),
                ("u.occupation", occupation, 1.0),
            ]
    return profiles


def _movielens_ratings(data_file: Path, log: MovieLensLog) -> list[tuple[int, list[int]]]:
    """(line number, [user, item, rating, timestamp]) of every readable line of u.data."""
    rows: list[tuple[int, list[int]]] = []
    with data_file.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            try:
                if len(fields) != 4:
                    raise ValueError(f"{len(fields)} field(s)")
                rows.append((number, [int(f) for f in fields]))
            except ValueError as error:
                reason = f"expected 4 tab-separated integers (user, item, rating, time): {error}"
                log.rejected.append((f"{data_file.name} line {number}", reason, line[:8192]))
    return rows


def movielens_log(path: str | Path) -> MovieLensLog:
    """The ml-100k folder (or its ``u.data``, with ``u.item`` and ``u.user`` beside it)."""
    base = Path(path)
    folder = base if base.is_dir() else base.parent
    data_file = base / "u.data" if base.is_dir() else base
    log = MovieLensLog([], [], [], data_file.name)
    item_file = folder / "u.item"
    if item_file.exists():
        for number, line in enumerate(item_file.read_text(encoding="latin-1").splitlines(), 1):
            try:
                log.items.append((number, _movielens_item(line)))
            except ValueError as error:
                log.rejected.append((f"u.item line {number}", str(error), line[:8192]))
    profiles = _movielens_profiles(folder / "u.user")
    rows = _movielens_ratings(data_file, log)
    rows.sort(key=lambda row: row[1][3])  # stable: equal times keep the file's order
    log.ratings = [
        (number, Event(str(u), str(i), ts=float(t), features=profiles.get(str(u), [])))
        for number, (u, i, _rating, t) in rows
    ]
    return log


def read_movielens(
    path: str | Path, batch_size: int = 256, warmup: float = 0.2, every: int = 20
) -> Iterator[Chunk]:
    """MovieLens 100K (:func:`movielens_log`): the lines it cannot read as rejections, the
    items, then the ratings with the protocol's flags."""
    log = movielens_log(path)
    if log.rejected:
        yield Chunk(None, [(f"{where}: {reason}", line) for where, reason, line in log.rejected])
    upserts = [event for _, event in log.items]
    for lo in range(0, len(upserts), batch_size):
        yield Chunk(batch_from_events(upserts[lo : lo + batch_size]))
    ratings = [event for _, event in log.ratings]
    flags = protocol_flags(len(ratings), warmup, every)
    for lo in range(0, len(ratings), batch_size):
        events = ratings[lo : lo + batch_size]
        yield Chunk(
            batch_from_events(events, flags[lo : lo + batch_size]), interactions=len(events)
        )


@dataclass
class InteractionLog:
    """A recommendation log before batching: the catalog, then interactions in replay order.

    ``items[r]`` is (item id, item features); interaction n is ``users[n]`` on ``item_ids[n]``
    at ``ts[n]``, already sorted by time with file order breaking ties.
    """

    items: list[tuple[str, list[tuple[str, str, float]]]]
    users: list[str]
    item_ids: list[str]
    ts: np.ndarray


def _time_order(users: list[str], items: list[str], ts: list[int]) -> InteractionLog:
    order = np.argsort(np.asarray(ts, np.int64), kind="stable")
    return InteractionLog(
        [],
        [users[n] for n in order],
        [items[n] for n in order],
        np.asarray(ts, np.float64)[order],
    )


def movietweetings_log(path: str | Path) -> InteractionLog:
    """MovieTweetings: ``movies.dat`` (``movie::title (year)::genre|genre``) as the catalog and
    ``ratings.dat`` (``user::movie::rating::unix_ts``) as interactions; ids stay strings
    because IMDb movie ids carry leading zeros."""
    base = Path(path)
    folder = base if base.is_dir() else base.parent
    ratings = base / "ratings.dat" if base.is_dir() else base
    users: list[str] = []
    items: list[str] = []
    ts: list[int] = []
    for line in ratings.read_text(encoding="utf-8").splitlines():
        if line:
            user, item, _rating, stamp = line.split("::")
            users.append(user)
            items.append(item)
            ts.append(int(stamp))
    log = _time_order(users, items, ts)
    movies = folder / "movies.dat"
    if movies.exists():
        for line in movies.read_text(encoding="utf-8").splitlines():
            if not line:
                continue
            movie, title, genres = line.split("::")
            year = title[-5:-1] if title.endswith(")") and title[-6:-5] == "(" else "unknown"
            features = [("i.genre", g, 1.0) for g in genres.split("|") if g]
            log.items.append((movie, [*features, ("i.year", year, 1.0)]))
    return log


def rechorus_log(path: str | Path) -> InteractionLog:
    """A ReChorus preparation (e.g. Amazon Grocery): ``train.csv`` (tab-separated, header
    ``user_id item_id time``) as interactions and ``item_meta.csv``'s ``i_category`` as the
    catalog's one feature (0 is ReChorus' "unknown")."""
    base = Path(path)
    folder = base if base.is_dir() else base.parent
    train = base / "train.csv" if base.is_dir() else base
    users: list[str] = []
    items: list[str] = []
    ts: list[int] = []
    lines = train.read_text(encoding="utf-8").splitlines()
    columns = lines[0].split("\t")
    user_col, item_col, time_col = (columns.index(c) for c in ("user_id", "item_id", "time"))
    for line in lines[1:]:
        if line:
            fields = line.split("\t")
            users.append(fields[user_col])
            items.append(fields[item_col])
            ts.append(int(fields[time_col]))
    log = _time_order(users, items, ts)
    meta = folder / "item_meta.csv"
    if meta.exists():
        meta_lines = meta.read_text(encoding="utf-8").splitlines()
        header = meta_lines[0].split("\t")
        id_col, category_col = header.index("item_id"), header.index("i_category")
        for line in meta_lines[1:]:
            if line:
                fields = line.split("\t")
                category = fields[category_col] if fields[category_col] != "0" else "unknown"
                log.items.append((fields[id_col], [("i.category", category, 1.0)]))
    return log


def log_chunks(
    log: InteractionLog, batch_size: int = 256, warmup: float = 0.2, every: int = 20
) -> Iterator[Chunk]:
    """Item upserts first, then the interactions as implicit positives with the protocol's flags."""
    upserts = [Event(None, item, features=features) for item, features in log.items]
    for lo in range(0, len(upserts), batch_size):
        yield Chunk(batch_from_events(upserts[lo : lo + batch_size]))
    flags = protocol_flags(len(log.users), warmup, every)
    for lo in range(0, len(log.users), batch_size):
        hi = lo + batch_size
        events = [
            Event(user, item, ts=float(t))
            for user, item, t in zip(
                log.users[lo:hi], log.item_ids[lo:hi], log.ts[lo:hi], strict=True
            )
        ]
        yield Chunk(batch_from_events(events, flags[lo:hi]), interactions=len(events))


def read_movietweetings(
    path: str | Path, batch_size: int = 256, warmup: float = 0.2, every: int = 20
) -> Iterator[Chunk]:
    """MovieTweetings: movies (genres, year) first, then every rating as an implicit positive."""
    return log_chunks(movietweetings_log(path), batch_size, warmup, every)


def read_rechorus(
    path: str | Path, batch_size: int = 256, warmup: float = 0.2, every: int = 20
) -> Iterator[Chunk]:
    """A ReChorus log: items (category) first, then the interactions in time order."""
    return log_chunks(rechorus_log(path), batch_size, warmup, every)


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def read_jsonl(
    path: str | Path,
    batch_size: int = 256,
    limits: EventLimits | None = None,
    warmup: float = 0.2,
    every: int = 20,
) -> Iterator[Chunk]:
    """One JSON event per line; bad lines are rejected with their line number and reason."""
    path = Path(path)
    limits = limits or EventLimits()
    flags = protocol_flags(_count_lines(path), warmup, every)
    events: list[Event] = []
    event_flags: list[bool] = []
    rejected: list[tuple[str, str]] = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                event = validate_event(strict_loads(line), limits)
            except (ValueError, InvalidEvent) as error:
                rejected.append((f"line {number}: {error}", line[:8192].decode("utf-8", "replace")))
                continue
            events.append(event)
            event_flags.append(bool(flags[number - 1]) and not event.is_upsert)
            if len(events) >= batch_size:
                yield _event_chunk(events, event_flags, rejected)
                events, event_flags, rejected = [], [], []
    if events or rejected:
        yield _event_chunk(events, event_flags, rejected)


def _event_chunk(events: list[Event], flags: list[bool], rejected: list[tuple[str, str]]) -> Chunk:
    batch = batch_from_events(events, np.array(flags, bool)) if events else None
    return Chunk(batch, rejected, sum(1 for e in events if not e.is_upsert))


def _string_column(array: Any) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow string array as (UTF-8 buffer, offsets) without a per-value Python loop."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if array.null_count:
        array = pc.fill_null(array, "")
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type == pa.large_string():
        offsets = np.frombuffer(array.buffers()[1], np.int64)
    else:
        offsets = np.frombuffer(array.buffers()[1], np.int32)
    offsets = offsets[array.offset : array.offset + len(array) + 1]
    data_buffer = array.buffers()[2]
    data = (
        np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    )
    return data, offsets


def _string_rows(
    column: tuple[np.ndarray, np.ndarray], lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``lo..hi`` of a (buffer, offsets) column: a view of the buffer, offsets from 0."""
    data, offsets = column
    start, end = int(offsets[lo]), int(offsets[hi])
    return data[start:end], offsets[lo : hi + 1].astype(np.int64) - start


def _log_bins(column: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Criteo counts as categories: v > 2 becomes 1000 + floor(ln(v)^2) (Kaggle winners'
    binning), other integers their decimal form, on a (UTF-8 buffer, offsets) column.

    A value that is not an integer (``-?[0-9]{1,18}``) stays as its own category instead
    of failing the batch.  Compiled rather than pyarrow's compute functions, whose scalar
    arguments import pandas where it is installed, at every replay's start."""
    data, offsets = column
    return _log_bin_strings(data, offsets.astype(np.int64))


@njit(cache=True, nogil=True)
def _parse_int18(data: np.ndarray, lo: int, hi: int) -> tuple[int, bool]:
    """The integer data[lo:hi] spells, if it is ``-?[0-9]{1,18}``."""
    negative = hi > lo and data[lo] == 45  # '-'
    start = lo + 1 if negative else lo
    if not 1 <= hi - start <= 18:
        return 0, False
    value = 0
    for i in range(start, hi):
        digit = int(data[i]) - 48
        if not 0 <= digit <= 9:
            return 0, False
        value = value * 10 + digit
    return (-value if negative else value), True


@njit(cache=True, nogil=True)
def _log_bin_strings(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = offsets.shape[0] - 1
    out = np.empty(data.shape[0] + 4 * n, np.uint8)  # a bin has at most 4 more bytes
    out_offsets = np.zeros(n + 1, np.int64)
    digits = np.empty(20, np.uint8)
    pos = 0
    for r in range(n):
        lo, hi = offsets[r], offsets[r + 1]
        value, is_int = _parse_int18(data, lo, hi)
        if not is_int:
            out[pos : pos + hi - lo] = data[lo:hi]
            pos += hi - lo
        else:
            if value > 2:
                x = math.log(float(value))
                value = 1000 + math.floor(x * x)
            if value < 0:
                out[pos] = 45
                pos += 1
            magnitude, count = abs(value), 0
            while True:
                digits[count] = 48 + magnitude % 10
                magnitude //= 10
                count += 1
                if magnitude == 0:
                    break
            for i in range(count):
                out[pos + i] = digits[count - 1 - i]
            pos += count
        out_offsets[r + 1] = pos
    return out[:pos], out_offsets


def _ctr_labels(column: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Which values of a label column are "0" or "1", and those values as int8 (0 elsewhere)."""
    data, offsets = column
    if data.size == 0:
        return np.zeros(offsets.size - 1, bool), np.zeros(offsets.size - 1, np.int8)
    first = data[np.minimum(offsets[:-1], data.size - 1)]
    good = (np.diff(offsets) == 1) & ((first == 48) | (first == 49))
    return good, (good & (first == 49)).astype(np.int8)


def _tsv_header(path: str | Path) -> list[str]:
    """The column names of a TSV log's first line: a ``label`` column, no name twice."""
    with Path(path).open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    if "label" not in header:
        raise ValueError(f"{path}: the header must name a 'label' column, got {header[:10]}")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: the header names {', '.join(map(repr, repeated))} twice")
    return header


def read_ctr_tsv(
    path: str | Path, criteo: bool, batch_size: int = 8192, block_size: int = 1 << 22
) -> Iterator[Chunk]:
    """Label-first tab-separated CTR logs, read in columnar blocks by pyarrow.

    ``criteo``: no header, ``label I1..I13 C1..C26`` (Kaggle DAC format, integer
    features log-binned).  Otherwise the first line is a header naming the columns;
    ``label`` is required, ``user``/``item`` columns become ids, the rest features.
    Rows with the wrong number of fields or a label other than 0/1 are rejected.
    """
    import pyarrow as pa
    from pyarrow import csv

    bad_rows: list[tuple[str, str]] = []

    def invalid(row: Any) -> str:
        bad_rows.append(
            (
                f"line {row.number}: expected {row.expected_columns} fields, got {row.actual_columns}",
                row.text or "",
            )
        )
        return "skip"

    names = ["label", *CRITEO_INTS, *CRITEO_CATS] if criteo else None
    read_opts = csv.ReadOptions(block_size=block_size, column_names=names, use_threads=True)
    parse_opts = csv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=invalid)
    if names is None:
        names = _tsv_header(path)
    convert = csv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    reader = csv.open_csv(
        path, read_options=read_opts, parse_options=parse_opts, convert_options=convert
    )
    ints = set(CRITEO_INTS) if criteo else set()
    for record_batch in reader:
        table = pa.Table.from_batches([record_batch])
        good, labels = _ctr_labels(_string_column(table.column("label")))
        rejected, bad_rows[:] = list(bad_rows), []
        for i in np.flatnonzero(~good):
            row = {n: table.column(n)[int(i)].as_py() for n in names}
            rejected.append((f"label must be 0 or 1, got {row['label']!r}", json.dumps(row)))
        block = _CTRBlock.of(table, names, ints, labels)
        if not good.all():
            block = block.take(np.flatnonzero(good))
        for lo in range(0, block.labels.size, batch_size):
            hi = min(lo + batch_size, block.labels.size)
            yield block.chunk(lo, hi, rejected if lo == 0 else [])
        if block.labels.size == 0 and rejected:
            yield Chunk(None, rejected)


@dataclass
class _CTRBlock:
    """A block of a CTR log converted to columns once; :meth:`chunk` slices it with numpy.

    Converting per batch took some 200 short pyarrow calls per Criteo batch, each
    releasing and taking back the GIL: while the pipeline learned on the main thread,
    every one of them waited for it, and at ``--batch-size 1`` the reader thread fell
    to ~3 ms per batch (bench/README.md)."""

    users: list[Any]
    items: list[Any]
    labels: np.ndarray
    col_names: list[str]
    columns: list[tuple[np.ndarray, np.ndarray]]

    @classmethod
    def of(cls, table: Any, names: list[str], ints: set[str], labels: np.ndarray) -> _CTRBlock:
        features = [name for name in names if name not in ("label", "user", "item")]
        columns = [_string_column(table.column(n)) for n in features]
        return cls(
            users=table.column("user").to_pylist() if "user" in names else [],
            items=table.column("item").to_pylist() if "item" in names else [],
            labels=labels,
            col_names=features,
            columns=[
                _log_bins(c) if n in ints else c for n, c in zip(features, columns, strict=True)
            ],
        )

    def take(self, rows: np.ndarray) -> _CTRBlock:
        """The block's rows ``rows`` (the ones whose label is valid)."""
        return _CTRBlock(
            users=[self.users[i] for i in rows] if self.users else [],
            items=[self.items[i] for i in rows] if self.items else [],
            labels=self.labels[rows],
            col_names=self.col_names,
            columns=[take_strings(data, offsets, rows) for data, offsets in self.columns],
        )

    def chunk(self, lo: int, hi: int, rejected: list[tuple[str, str]]) -> Chunk:
        n = hi - lo
        columns = [_string_rows(column, lo, hi) for column in self.columns]
        batch = EventBatch(
            seq=-1,
            users=self.users[lo:hi],
            items=self.items[lo:hi],
            kind=np.full(n, INTERACTION, np.uint8),
            ts=np.full(n, math.nan),
            label=self.labels[lo:hi].copy(),
            weight=np.ones(n),
            rank_eval=np.zeros(n, bool),
            feat_ptr=np.zeros(n + 1, np.int64),
            col_names=list(self.col_names),
            col_data=[data for data, _ in columns],
            col_off=[offsets for _, offsets in columns],
        )
        return Chunk(batch, rejected, n)
