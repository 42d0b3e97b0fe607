"""Property tests for actors.murmur: the numba MurmurHash3 kernel must equal the C mmh3."""

from __future__ import annotations

import mmh3
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.murmur import (
    MASK32,
    cross_hash,
    encode_strings,
    fmix32,
    hash_arrow_strings,
    hash_columns,
    hash_slices,
    hash_slices_one_seed,
    murmur3_32,
    namespace_seed,
    to_index,
)

SETTINGS = settings(max_examples=150, deadline=None)

seeds_st = st.integers(min_value=0, max_value=MASK32)
hashes_st = st.integers(min_value=0, max_value=MASK32)
# bias towards short inputs so the 0..3 byte tails are hit often
blobs_st = st.one_of(st.binary(max_size=4), st.binary(max_size=64))
texts_st = st.one_of(st.text(max_size=4), st.text(max_size=24))


def _pack(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def _reference_fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    h ^= h >> 16
    return h


# --- known answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        (b"", 0, 0),
        (b"", 1, 0x514E28B7),
        (b"", 0xFFFFFFFF, 0x81F16F39),
        (b"\xff\xff\xff\xff", 0, 0x76293B50),
        (b"\x21\x43\x65\x87", 0, 0xF55B516B),
        (b"\x21\x43\x65", 0, 0x7E4A8634),
        (b"\x21\x43", 0, 0xA0F7B07A),
        (b"\x21", 0, 0x72661CF4),
        (b"Hello, world!", 1234, 0xFAF6CDB3),
    ],
)
def test_known_vectors(data: bytes, seed: int, expected: int) -> None:
    assert murmur3_32(data, seed) == expected
    buf, offsets = _pack([data])
    assert int(hash_slices(buf, offsets, np.array([seed], dtype=np.uint32))[0]) == expected


def test_namespace_seed_is_value_seed() -> None:
    ns = namespace_seed("user", 42)
    assert ns == mmh3.hash(b"user", 42, signed=False)
    assert 0 <= ns <= MASK32
    data, offsets = encode_strings(["u123"])
    assert hash_slices_one_seed(data, offsets, ns)[0] == murmur3_32(b"u123", ns)


# --- hash_slices vs mmh3 -----------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.tuples(blobs_st, seeds_st), max_size=20))
def test_hash_slices_matches_mmh3(items: list[tuple[bytes, int]]) -> None:
    blobs = [b for b, _ in items]
    seeds = np.array([s for _, s in items], dtype=np.uint32)
    data, offsets = _pack(blobs)
    expected = [mmh3.hash(b, int(s), signed=False) for b, s in items]
    got = hash_slices(data, offsets, seeds)
    assert got.dtype == np.uint32
    assert got.tolist() == expected
    # int32 offsets take the same path
    assert hash_slices(data, offsets.astype(np.int32), seeds).tolist() == expected


@SETTINGS
@given(st.lists(blobs_st, max_size=20), seeds_st)
def test_hash_slices_one_seed_matches_mmh3(blobs: list[bytes], seed: int) -> None:
    data, offsets = _pack(blobs)
    got = hash_slices_one_seed(data, offsets, seed)
    assert got.dtype == np.uint32
    assert got.tolist() == [murmur3_32(b, seed) for b in blobs]


@SETTINGS
@given(st.binary(min_size=1, max_size=64), st.data(), seeds_st)
def test_hash_slices_offsets_need_not_start_at_zero(
    blob: bytes, draw: st.DataObject, seed: int
) -> None:
    lo = draw.draw(st.integers(0, len(blob)))
    hi = draw.draw(st.integers(lo, len(blob)))
    data = np.frombuffer(blob, dtype=np.uint8)
    got = hash_slices_one_seed(data, np.array([lo, hi], dtype=np.int64), seed)
    assert int(got[0]) == murmur3_32(blob[lo:hi], seed)


def test_hash_slices_rejects_bad_offsets() -> None:
    data = np.zeros(4, dtype=np.uint8)
    seeds = np.zeros(1, dtype=np.uint32)
    with pytest.raises(ValueError):
        hash_slices(data, np.array([0, 5], dtype=np.int64), seeds)
    with pytest.raises(ValueError):
        hash_slices(data, np.array([3, 1], dtype=np.int64), seeds)
    with pytest.raises(ValueError):
        hash_slices(data, np.array([0, 1, 2], dtype=np.int64), seeds)
    with pytest.raises(ValueError):
        hash_slices_one_seed(data, np.array([0, 1], dtype=np.int64), -1)
    with pytest.raises(ValueError):
        hash_slices_one_seed(data, np.array([0, 1], dtype=np.int64), 2**32)


def test_hash_slices_callable_from_njit() -> None:
    from numba import njit

    @njit
    def twice(data: np.ndarray, offsets: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        return hash_slices(data, offsets, seeds) ^ hash_slices(data, offsets, seeds)

    data, offsets = encode_strings(["a", "bcd", "efgh"])
    seeds = np.arange(3, dtype=np.uint32)
    assert twice(data, offsets, seeds).tolist() == [0, 0, 0]


def test_hash_slices_empty_batch() -> None:
    data = np.zeros(0, dtype=np.uint8)
    assert hash_slices(data, np.zeros(1, np.int64), np.zeros(0, np.uint32)).shape == (0,)
    assert hash_slices_one_seed(data, np.zeros(1, np.int64), 7).shape == (0,)


@SETTINGS
@given(
    st.integers(0, 6).flatmap(
        lambda rows: st.lists(
            st.tuples(st.lists(blobs_st, min_size=rows, max_size=rows), st.binary(max_size=5)),
            min_size=1,
            max_size=6,
        )
    ),
    st.data(),
)
def test_hash_columns_matches_mmh3_per_column(
    columns: list[tuple[list[bytes], bytes]], draw: st.DataObject
) -> None:
    """Each column its own seed, its own offset width, and bytes before its first row (as
    an Arrow slice's buffer has)."""
    seeds = draw.draw(st.lists(seeds_st, min_size=len(columns), max_size=len(columns)))
    packed = []
    for k, (blobs, prefix) in enumerate(columns):
        data, offsets = _pack([prefix, *blobs])
        packed.append((data, offsets[1:].astype(np.int32 if k % 2 else np.int64)))
    got = hash_columns(packed, seeds)
    assert got.dtype == np.uint32
    assert got.shape == (len(columns[0][0]), len(columns))
    for k, (blobs, _) in enumerate(columns):
        assert got[:, k].tolist() == [murmur3_32(b, seeds[k]) for b in blobs]


def test_hash_columns_rejects_bad_input() -> None:
    data, offsets = _pack([b"ab", b"c"])
    with pytest.raises(ValueError, match="2 column"):
        hash_columns([(data, offsets), (data, offsets)], [1])
    with pytest.raises(ValueError, match="different lengths"):
        hash_columns([(data, offsets), (data, offsets[:2])], [1, 2])
    with pytest.raises(ValueError, match="seed"):
        hash_columns([(data, offsets)], [2**32])
    with pytest.raises(ValueError, match="within data"):
        hash_columns([(data, offsets), (data[:2], offsets)], [1, 2])
    assert hash_columns([], []).shape == (0, 0)
    assert hash_columns([(data[:0], np.zeros(1, np.int64))], [3]).shape == (0, 1)


# --- encode_strings ----------------------------------------------------------------------------


@SETTINGS
@given(st.lists(texts_st, max_size=30))
def test_encode_strings_round_trip(values: list[str]) -> None:
    data, offsets = encode_strings(values)
    assert data.dtype == np.uint8
    assert offsets.dtype == np.int64
    assert offsets.shape == (len(values) + 1,)
    assert offsets[0] == 0 and offsets[-1] == data.shape[0]
    raw = data.tobytes()
    decoded = [raw[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(values))]
    assert decoded == values


@SETTINGS
@given(st.lists(texts_st, max_size=30), seeds_st)
def test_encode_then_hash_matches_mmh3(values: list[str], seed: int) -> None:
    data, offsets = encode_strings(values)
    got = hash_slices_one_seed(data, offsets, seed)
    assert got.tolist() == [murmur3_32(v.encode("utf-8"), seed) for v in values]


def test_encode_strings_non_ascii_and_empty() -> None:
    values = ["", "ascii", "héllo", "日本", "🙂", ""]
    _, offsets = encode_strings(values)
    assert np.diff(offsets).tolist() == [len(v.encode("utf-8")) for v in values]
    assert encode_strings([])[1].tolist() == [0]


# --- hash_arrow_strings ------------------------------------------------------------------------

optional_texts_st = st.lists(st.one_of(st.none(), texts_st), max_size=30)


def _expected(values: list[str | None], seed: int) -> list[int]:
    return [murmur3_32((v or "").encode("utf-8"), seed) for v in values]


@SETTINGS
@given(optional_texts_st, seeds_st, st.sampled_from([pa.string(), pa.large_string()]))
def test_hash_arrow_strings_with_nulls(
    values: list[str | None], seed: int, typ: pa.DataType
) -> None:
    arr = pa.array(values, type=typ)
    got = hash_arrow_strings(arr, seed)
    assert got.dtype == np.uint32
    assert got.tolist() == _expected(values, seed)


@SETTINGS
@given(optional_texts_st, seeds_st, st.sampled_from([pa.string(), pa.large_string()]), st.data())
def test_hash_arrow_strings_sliced(
    values: list[str | None], seed: int, typ: pa.DataType, draw: st.DataObject
) -> None:
    arr = pa.array(values, type=typ)
    start = draw.draw(st.integers(0, len(values)))
    length = draw.draw(st.integers(0, len(values) - start))
    for sliced in (arr.slice(start), arr.slice(start, length)):
        assert hash_arrow_strings(sliced, seed).tolist() == _expected(sliced.to_pylist(), seed)


def test_hash_arrow_strings_slice_3() -> None:
    values = ["a", None, "bc", "", None, "déf", "ghij", "klmno"]
    arr = pa.array(values)
    assert hash_arrow_strings(arr.slice(3), 11).tolist() == _expected(values[3:], 11)


@SETTINGS
@given(st.lists(optional_texts_st, max_size=5), seeds_st)
def test_hash_arrow_strings_chunked(chunks: list[list[str | None]], seed: int) -> None:
    chunked = pa.chunked_array([pa.array(c, type=pa.string()) for c in chunks], type=pa.string())
    flat = [v for c in chunks for v in c]
    got = hash_arrow_strings(chunked, seed)
    assert got.dtype == np.uint32
    assert got.tolist() == _expected(flat, seed)


def test_hash_arrow_strings_chunked_of_slices_and_all_null() -> None:
    base = pa.array(["x", "yy", None, "zzz", "日本"])
    chunked = pa.chunked_array([base.slice(1, 3), pa.array([None, None], type=pa.string()), base])
    assert hash_arrow_strings(chunked, 3).tolist() == _expected(chunked.to_pylist(), 3)


def test_hash_arrow_strings_null_slot_with_garbage_bytes() -> None:
    # A null slot may span bytes in the data buffer; it must still hash as "".
    valid = pa.array(["abc", "defg", "hi"])
    _, off_buf, data_buf = valid.buffers()
    validity = pa.array([True, False, True]).buffers()[1]
    arr = pa.Array.from_buffers(pa.string(), 3, [validity, off_buf, data_buf], null_count=1)
    assert hash_arrow_strings(arr, 5).tolist() == _expected(["abc", None, "hi"], 5)


def test_hash_arrow_strings_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        hash_arrow_strings(pa.array([1, 2, 3]), 0)


# --- fmix32 / cross_hash / to_index ------------------------------------------------------------


@SETTINGS
@given(st.lists(hashes_st, max_size=20))
def test_fmix32_matches_reference(values: list[int]) -> None:
    got = fmix32(np.array(values, dtype=np.uint32))
    assert got.dtype == np.uint32
    assert got.tolist() == [_reference_fmix32(v) for v in values]


@SETTINGS
@given(hashes_st, st.lists(hashes_st, min_size=1, max_size=20))
def test_cross_hash_broadcasts(a: int, bs: list[int]) -> None:
    b = np.array(bs, dtype=np.uint32)
    expected = [_reference_fmix32(((a * 0x01000193) & MASK32) ^ x) for x in bs]
    row = cross_hash(a, b)
    assert row.dtype == np.uint32
    assert row.shape == b.shape
    assert row.tolist() == expected
    assert cross_hash(np.uint32(a), b).tolist() == expected
    assert cross_hash(np.full(len(bs), a, dtype=np.uint32), b).tolist() == expected
    assert [int(cross_hash(a, x)) for x in bs] == expected
    # array × scalar: one item crossed with many users
    assert cross_hash(b, a).tolist() == [int(cross_hash(x, a)) for x in bs]


def test_cross_hash_2d_broadcast() -> None:
    users = np.array([[1], [2], [3]], dtype=np.uint32)
    items = np.array([10, 20, 30, 40], dtype=np.uint32)
    grid = cross_hash(users, items)
    assert grid.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert grid[i, j] == cross_hash(int(users[i, 0]), int(items[j]))


@SETTINGS
@given(st.lists(hashes_st, max_size=20), st.integers(1, 32))
def test_to_index_range(values: list[int], bits: int) -> None:
    h = np.array(values, dtype=np.uint32)
    idx = to_index(h, bits)
    assert idx.dtype == np.int64
    assert ((idx >= 0) & (idx < (1 << bits))).all()
    assert idx.tolist() == [v & ((1 << bits) - 1) for v in values]


def test_to_index_rejects_bad_bits() -> None:
    with pytest.raises(ValueError):
        to_index(np.zeros(1, np.uint32), 0)
    with pytest.raises(ValueError):
        to_index(np.zeros(1, np.uint32), 33)
