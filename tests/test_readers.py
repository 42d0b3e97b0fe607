"""The MovieTweetings and ReChorus readers: catalog first, then interactions in time order
(file order breaking ties) with the recommendation protocol's flags, as read_movielens."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from actors.batching import slice_strings
from actors.readers import (
    Chunk,
    _log_bins,
    protocol_flags,
    read_ctr_tsv,
    read_movielens,
    read_movietweetings,
    read_rechorus,
)
from runtime.replay import FORMATS, open_log
from tests.conftest import data_path


@dataclass
class Replayed:
    """What a reader hands the pipeline, flattened: upserts (with features), then interactions."""

    upserts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    flags: list[bool] = field(default_factory=list)
    upsert_after_interaction: bool = False


def flatten(chunks: list[Chunk]) -> Replayed:
    out = Replayed()
    for chunk in chunks:
        batch = chunk.batch
        assert batch is not None and not chunk.rejected
        values = slice_strings(batch.feat_data, batch.feat_off, 0, len(batch.feat_ns))
        for r in range(len(batch.items)):
            if batch.kind[r] == 1:
                out.upsert_after_interaction |= bool(out.users)
                lo, hi = int(batch.feat_ptr[r]), int(batch.feat_ptr[r + 1])
                out.upserts[batch.items[r]] = [
                    (batch.namespaces[int(batch.feat_ns[f])], values[f]) for f in range(lo, hi)
                ]
            else:
                out.users.append(batch.users[r])
                out.items.append(batch.items[r])
                out.ts.append(float(batch.ts[r]))
                out.flags.append(bool(batch.rank_eval[r]))
        assert chunk.interactions == int((batch.kind == 0).sum())
    return out


def assert_time_order_keeps_file_order(got: Replayed, rows: list[tuple[str, str, int]]) -> None:
    """Interactions are the file's rows sorted by time, equal times in file order."""
    order = sorted(range(len(rows)), key=lambda n: rows[n][2])  # Python's sort is stable
    assert got.users == [rows[n][0] for n in order]
    assert got.items == [rows[n][1] for n in order]
    assert got.ts == [float(rows[n][2]) for n in order]
    assert (np.diff(got.ts) >= 0).all()


def test_movietweetings_small_log(tmp_path: Path) -> None:
    (tmp_path / "movies.dat").write_text(
        "0002844::Fantômas (1913)::Crime|Drama\n0000001::No year::\n0012345::Solo (2013)::\n",
        encoding="utf-8",
    )
    (tmp_path / "ratings.dat").write_text(
        "1::0012345::7::300\n2::0002844::8::100\n3::0000001::5::300\n1::0002844::9::100\n",
        encoding="utf-8",
    )
    got = flatten(list(read_movietweetings(tmp_path, batch_size=2)))
    assert not got.upsert_after_interaction
    assert got.upserts == {
        "0002844": [("i.genre", "Crime"), ("i.genre", "Drama"), ("i.year", "1913")],
        "0000001": [("i.year", "unknown")],
        "0012345": [("i.year", "2013")],
    }
    assert got.users == ["2", "1", "1", "3"]  # ts 100, 100, 300, 300 in file order
    assert got.items == ["0002844", "0002844", "0012345", "0000001"]
    assert got.flags == protocol_flags(4).tolist()


def test_rechorus_small_log(tmp_path: Path) -> None:
    (tmp_path / "item_meta.csv").write_text(
        "item_id\ti_category\tr_complement\tr_substitute\n1\t0\t[2]\t[]\n2\t21\t[]\t[1]\n",
        encoding="utf-8",
    )
    (tmp_path / "train.csv").write_text(
        "user_id\titem_id\ttime\n5\t2\t200\n4\t1\t100\n6\t1\t200\n4\t2\t100\n", encoding="utf-8"
    )
    got = flatten(list(read_rechorus(tmp_path)))
    assert got.upserts == {"1": [("i.category", "unknown")], "2": [("i.category", "21")]}
    assert list(zip(got.users, got.items, strict=True)) == [
        ("4", "1"),
        ("4", "2"),
        ("5", "2"),
        ("6", "1"),
    ]


def test_new_formats_are_replay_formats(tmp_path: Path) -> None:
    assert {"movielens", "movietweetings", "rechorus"} <= set(FORMATS)
    (tmp_path / "train.csv").write_text("user_id\titem_id\ttime\n1\t9\t5\n", encoding="utf-8")
    got = flatten(list(open_log(tmp_path, "rechorus", 256)))
    assert (got.users, got.items, got.upserts) == (["1"], ["9"], {})


def test_movietweetings_real_data() -> None:
    folder = data_path("movietweetings-100k")
    rows = [
        (user, item, int(ts))
        for user, item, _rating, ts in (
            line.split("::") for line in (folder / "ratings.dat").read_text().splitlines()
        )
    ]
    got = flatten(list(read_movietweetings(folder)))
    assert len(got.upserts) == 10_506 and not got.upsert_after_interaction
    assert got.upserts["0002844"] == [
        ("i.genre", "Crime"),
        ("i.genre", "Drama"),
        ("i.year", "1913"),
    ]
    assert set(got.items) <= got.upserts.keys()
    assert len(got.users) == 100_000 and len(set(got.users)) == 16_554
    assert_time_order_keeps_file_order(got, rows)
    assert np.flatnonzero(got.flags).tolist() == list(range(20_000, 100_000, 20))


def test_rechorus_real_data() -> None:
    folder = data_path("amazon-grocery-rechorus")
    lines = (folder / "train.csv").read_text().splitlines()
    assert lines[0].split("\t") == ["user_id", "item_id", "time"]
    rows = [(u, i, int(t)) for u, i, t in (line.split("\t") for line in lines[1:])]
    got = flatten(list(read_rechorus(folder)))
    assert len(got.upserts) == 8_713 and not got.upsert_after_interaction
    assert len(set(got.items)) == 8_687 and set(got.items) <= got.upserts.keys()
    categories = {features[0][1] for features in got.upserts.values()}
    assert len(categories) == 57 and "unknown" in categories and "0" not in categories
    assert len(got.users) == 121_892
    assert len(set(got.ts)) < len(got.ts) / 10  # day granularity: ties are the rule
    assert_time_order_keeps_file_order(got, rows)
    assert np.flatnonzero(got.flags).tolist() == list(range(24_378, 121_892, 20))


def test_movielens_reader_has_the_same_shape() -> None:
    got = flatten(list(read_movielens(data_path("ml-100k"))))
    assert len(got.upserts) == 1_682 and not got.upsert_after_interaction
    assert len(got.users) == 100_000
    assert np.flatnonzero(got.flags).tolist() == list(range(20_000, 100_000, 20))


def test_a_movielens_line_that_cannot_be_read_is_rejected_with_its_line(tmp_path: Path) -> None:
    from tests.test_import import write_movielens

    write_movielens(tmp_path / "ml")
    chunks = list(read_movielens(tmp_path / "ml"))
    assert chunks[0].batch is None
    reasons = [reason for reason, _ in chunks[0].rejected]
    assert reasons[0].startswith("u.item line 2: expected 24 '|'-separated fields")
    assert reasons[1].startswith("u.data line 3: expected 4 tab-separated integers")
    ratings = [chunk.batch for chunk in chunks[1:] if chunk.interactions]
    assert [user for batch in ratings if batch is not None for user in batch.users] == [
        "8",
        "7",
        "8",
    ]


def _ctr_rows(chunks: list[Chunk]) -> list[tuple[int, str, str, tuple[str, ...]]]:
    """(label, user, item, feature values) of every row the chunks carry."""
    rows = []
    for chunk in chunks:
        batch = chunk.batch
        assert batch is not None
        columns = [
            slice_strings(data, off, 0, len(off) - 1)
            for data, off in zip(batch.col_data, batch.col_off, strict=True)
        ]
        for r in range(len(batch)):
            values = tuple(column[r] for column in columns)
            rows.append((int(batch.label[r]), batch.users[r], batch.items[r], values))
    return rows


def test_ctr_tsv_chunks_carry_every_row_across_blocks_and_batch_sizes(tmp_path: Path) -> None:
    """Blocks are converted once and sliced per batch: every row arrives whole, in order,
    whatever the block and batch sizes, and a bad label is rejected in its own block."""
    lines = ["label\tuser\titem\tcolour\tsize"]
    expected = []
    for r in range(300):
        colour, size = f"c{r % 7}" * (r % 4), "é" * (r % 3) + str(r)
        label = r % 2
        lines.append(f"{label}\tu{r % 11}\ti{r % 13}\t{colour}\t{size}")
        expected.append((label, f"u{r % 11}", f"i{r % 13}", (colour, size)))
    lines.insert(150, "7\tu0\ti0\tx\ty")
    lines.insert(40, "10\tu0\ti0\tx\ty")
    lines.insert(41, "\tu0\ti0\tx\ty")
    log = tmp_path / "clicks.tsv"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for batch_size in (1, 7, 256):
        for block_size in (512, 1 << 22):
            chunks = list(read_ctr_tsv(log, False, batch_size, block_size))
            rejected = [reason for chunk in chunks for reason, _ in chunk.rejected]
            assert rejected == [f"label must be 0 or 1, got {bad!r}" for bad in ("10", "", "7")]
            kept = [chunk for chunk in chunks if chunk.batch is not None]
            assert all(len(chunk.batch) <= batch_size for chunk in kept if chunk.batch)
            assert _ctr_rows(kept) == expected, (batch_size, block_size)


def test_ctr_tsv_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "clicks.tsv"
    log.write_text("label\tcolour\tsize\tcolour\n1\tred\tS\tblue\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the header names 'colour' twice"):
        list(read_ctr_tsv(log, False))


def _arrow_log_bins(values: list[str]) -> list[str]:
    """The binning as pyarrow's compute functions wrote it before the compiled kernel."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pa.array(values, pa.string())
    is_int = pc.match_substring_regex(column, r"^-?[0-9]{1,18}$")
    ints = pc.cast(pc.if_else(is_int, column, pa.scalar("0")), pa.int64())
    logs = pc.ln(pc.cast(pc.max_element_wise(ints, 1), pa.float64()))
    binned = pc.cast(pc.floor(pc.power(logs, 2)), pa.int64())
    numeric = pc.if_else(pc.greater(ints, 2), pc.add(binned, 1000), ints)
    return list(pc.if_else(is_int, pc.cast(numeric, pa.string()), column).to_pylist())


def _python_log_bin(value: str) -> str:
    if re.fullmatch(r"-?[0-9]{1,18}", value) is None:
        return value
    number = int(value)
    return str(1000 + math.floor(math.log(number) ** 2) if number > 2 else number)


def test_criteo_counts_are_binned_as_pyarrow_bins_them() -> None:
    """Every integer up to 300,000, powers of ten and their neighbours up to 18 digits,
    random ones, negatives, leading zeros and strings that are not integers: as pyarrow's
    compute functions binned them, and (pyarrow refused integers above 2^53 and failed the
    block) as the definition says above that."""
    rng = np.random.default_rng(3)
    values = [str(v) for v in range(-50, 300_000)]
    values += [str(10**e + d) for e in range(6, 16) for d in (-1, 0, 1)]
    values += [str(v) for v in rng.integers(0, 2**53, 20_000)]
    values += ["", "-", "+5", "007", "-007", "-0", "1e5", "3.0", " 4", "12a", "é", "0" * 30]
    large = [str(v) for v in rng.integers(2**53, 10**18, 2_000)]
    large += ["9" * 18, "-" + "9" * 18, "9" * 19, "-" + "9" * 19, str(10**17)]
    binned = _binned(values + large)
    assert binned[: len(values)] == _arrow_log_bins(values)
    assert binned == [_python_log_bin(v) for v in values + large]


def _binned(values: list[str]) -> list[str]:
    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    data = np.frombuffer(b"".join(encoded), np.uint8)
    out, out_offsets = _log_bins((data, offsets))
    return slice_strings(out, out_offsets, 0, len(values))
