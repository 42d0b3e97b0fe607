"""Tests for runtime.codec: round trips, limits and robustness against untrusted bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.codec import (
    DEFAULT_LIMITS,
    EXT_NDARRAY,
    CodecError,
    Limits,
    decode,
    decode_message,
    encode,
    encode_message,
    message_types,
    register_message,
)

MiB = 1024 * 1024

ALLOWED_DTYPES = [
    np.dtype(name)
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float32",
        "float64",
    )
]

FAST = settings(max_examples=100, deadline=None)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

dtypes = st.sampled_from(ALLOWED_DTYPES)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
arrays = dtypes.flatmap(lambda dt: hnp.arrays(dtype=dt, shape=shapes))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)


def nested_of(leaves: Any, size: int = 5, max_leaves: int = 30) -> Any:
    """Lists and string-keyed maps of ``leaves``, nested (tests/test_fuzz_bodies.py too)."""
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=size)
            | st.dictionaries(st.text(max_size=8), children, max_size=size)
        ),
        max_leaves=max_leaves,
    )


nested = nested_of(scalars)
# Values that may contain arrays, for the fuzzing tests (no equality needed there).
fuzz_values = nested_of(scalars | arrays, size=4, max_leaves=10)


def ext_payload(dtype_str: object, shape: object, raw: bytes) -> bytes:
    """Hand-build an ndarray ext value (bypassing encode's validation)."""
    header = msgpack.packb([dtype_str, shape], use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(EXT_NDARRAY, header + raw), use_bin_type=True)


def assert_same_array(out: object, arr: np.ndarray) -> None:
    assert isinstance(out, np.ndarray)
    assert out.shape == arr.shape
    assert out.dtype == arr.dtype.newbyteorder("<")
    np.testing.assert_array_equal(out, arr)
    if arr.dtype.byteorder != ">":
        assert out.tobytes() == np.ascontiguousarray(arr).tobytes()  # bit-exact (NaN, -0.0)


# --------------------------------------------------------------------------- arrays


@FUZZ
@given(arrays)
def test_array_round_trip_every_dtype_and_shape(arr: np.ndarray) -> None:
    out = decode(encode(arr))
    assert_same_array(out, arr)
    assert isinstance(out, np.ndarray)
    assert not out.flags.writeable  # documented: decoded arrays are read-only
    assert out.flags.c_contiguous
    assert out.flags.aligned


@pytest.mark.parametrize("dtype", ALLOWED_DTYPES, ids=str)
def test_empty_and_zero_dim_arrays(dtype: np.dtype) -> None:
    for arr in (
        np.zeros((), dtype=dtype),
        np.ones((), dtype=dtype),
        np.zeros((0,), dtype=dtype),
        np.zeros((3, 0, 2), dtype=dtype),
    ):
        assert_same_array(decode(encode(arr)), arr)


@FAST
@given(dtypes.flatmap(lambda dt: hnp.arrays(dtype=dt, shape=hnp.array_shapes(min_dims=2))))
def test_non_contiguous_arrays_are_made_contiguous(arr: np.ndarray) -> None:
    for view in (arr.T, arr[::2], arr[:, ::-1], np.asfortranarray(arr)):
        assert_same_array(decode(encode(view)), view)


@FAST
@given(
    st.sampled_from([dt for dt in ALLOWED_DTYPES if dt.itemsize > 1]).flatmap(
        lambda dt: hnp.arrays(dtype=dt.newbyteorder(">"), shape=shapes)
    )
)
def test_big_endian_arrays_are_converted_to_little_endian(arr: np.ndarray) -> None:
    out = decode(encode(arr))
    assert isinstance(out, np.ndarray)
    assert out.dtype.str.startswith("<")
    assert_same_array(out, arr)


def test_decoded_array_does_not_alias_input_buffer() -> None:
    buf = bytearray(encode(np.arange(16, dtype=np.int64)))
    out = decode(buf)
    assert isinstance(out, np.ndarray)
    buf[-8:] = b"\xff" * 8
    assert out[-1] == 15
    with pytest.raises(ValueError):
        out[0] = 1


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode({"a": np.arange(3, dtype=np.float32), "b": [1, "x"]})
    for form in (bytearray(data), memoryview(data)):
        out = decode(form)
        assert isinstance(out, dict)
        np.testing.assert_array_equal(out["a"], np.arange(3, dtype=np.float32))
        assert out["b"] == [1, "x"]


def test_numpy_scalars_encode_as_python_numbers() -> None:
    out = decode(
        encode(
            [
                np.float64(1.5),
                np.int64(3),
                np.float32(0.5),
                np.uint8(7),
                np.bool_(True),
                np.int8(-2),
            ]
        )
    )
    assert out == [1.5, 3, 0.5, 7, True, -2]
    assert isinstance(out, list)
    assert [type(x) for x in out] == [float, int, float, int, bool, int]


def test_large_columnar_batch_round_trip() -> None:
    rng = np.random.default_rng(0)
    batch: dict[str, np.ndarray] = {
        "ids": rng.integers(0, 2**63, size=100_000, dtype=np.uint64),
        "weights": rng.standard_normal(100_000).astype(np.float32),
        "labels": rng.integers(0, 2, size=100_000).astype(bool),
    }
    out = decode(encode(batch))
    assert isinstance(out, dict)
    for key, arr in batch.items():
        assert_same_array(out[key], arr)


# --------------------------------------------------------------------------- nested values


@FUZZ
@given(nested)
def test_nested_round_trip(value: object) -> None:
    assert decode(encode(value)) == value


@FAST
@given(st.dictionaries(st.text(max_size=8), arrays, max_size=4), nested)
def test_nested_with_arrays_round_trip(cols: dict[str, np.ndarray], extra: object) -> None:
    out = decode(encode({"cols": cols, "extra": extra, "list": list(cols.values())}))
    assert isinstance(out, dict)
    assert out["extra"] == extra
    assert out["cols"].keys() == cols.keys()
    for key, arr in cols.items():
        assert_same_array(out["cols"][key], arr)
    for got, arr in zip(out["list"], cols.values(), strict=True):
        assert_same_array(got, arr)


def test_tuples_become_lists() -> None:
    assert decode(encode((1, (2, 3)))) == [1, [2, 3]]


# --------------------------------------------------------------------------- encode errors


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        2**64,
        -(2**63) - 1,
        np.array([1, "a"], dtype=object),
        np.array(["a", "b"]),
        np.zeros(3, dtype=np.complex128),
        np.zeros(3, dtype=np.float16),
        np.zeros(3, dtype="datetime64[ns]"),
        np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
        np.complex64(1),
        np.ma.array([1, 2], mask=[False, True]),
        "\ud800",
    ],
    ids=repr,
)
def test_encode_rejects_unsupported_values(value: object) -> None:
    with pytest.raises(CodecError):
        encode(value)
    with pytest.raises(CodecError):
        encode({"nested": [value]})


def test_encode_error_names_the_type_and_is_a_type_error() -> None:
    class Weird:
        pass

    with pytest.raises(CodecError, match="Weird") as info:
        encode([Weird()])
    assert isinstance(info.value, TypeError)

    with pytest.raises(CodecError, match="object") as info:
        encode(np.array([None], dtype=object))
    assert isinstance(info.value, TypeError)


# --------------------------------------------------------------------------- decode errors


def test_oversize_input_rejected() -> None:
    with pytest.raises(CodecError, match="max_bytes"):
        decode(encode(b"x" * 200), Limits(max_bytes=100))
    with pytest.raises(CodecError, match="max_bytes"):
        decode(b"\xc0" * (DEFAULT_LIMITS.max_bytes + 1))


def test_two_mb_string_rejected_by_default_limits() -> None:
    data = encode("x" * (2 * MiB))
    with pytest.raises(CodecError):
        decode(data)
    assert decode(data, Limits(max_str_len=4 * MiB)) == "x" * (2 * MiB)


@pytest.mark.parametrize(
    ("value", "limits"),
    [
        (b"x" * 100, Limits(max_bin_len=10)),
        (list(range(100)), Limits(max_array_len=10)),
        ({str(i): i for i in range(100)}, Limits(max_map_len=10)),
        (np.zeros(100, dtype=np.uint8), Limits(max_ext_len=50)),
        (np.zeros(100, dtype=np.uint8), Limits(max_array_elements=99)),
        (np.zeros((0, 100), dtype=np.uint8), Limits(max_array_elements=99)),
    ],
)
def test_length_limits(value: object, limits: Limits) -> None:
    data = encode(value)
    decode(data)  # fine with the defaults
    with pytest.raises(CodecError):
        decode(data, limits)


def test_limits_validation() -> None:
    with pytest.raises(ValueError):
        Limits(max_bytes=-1)


def test_ext_with_mismatched_byte_length() -> None:
    good = np.arange(4, dtype=np.int32).tobytes()
    assert decode(ext_payload("<i4", [4], good)).tolist() == [0, 1, 2, 3]  # type: ignore[attr-defined]
    with pytest.raises(CodecError, match="bytes"):
        decode(ext_payload("<i4", [4], good[:-1]))
    with pytest.raises(CodecError, match="bytes"):
        decode(ext_payload("<i4", [4], good + b"\x00"))
    with pytest.raises(CodecError, match="bytes"):
        decode(ext_payload("<i4", [], good))


@pytest.mark.parametrize(
    "dtype_str", ["|O", "|O8", ">i4", "<f2", "<c16", "<M8[ns]", "|V8", "<U1", "int32", "", "x" * 40]
)
def test_bad_dtype_rejected(dtype_str: str) -> None:
    with pytest.raises(CodecError):
        decode(ext_payload(dtype_str, [1], b"\x00" * 8))


@pytest.mark.parametrize(
    "header",
    [
        ["<i4", [-1]],
        ["<i4", [True]],
        ["<i4", [1.0]],
        ["<i4", "4"],
        ["<i4", [0] * 70],
        ["<i4", [2**64 - 1, 0]],
        [b"<i4", [1]],
        ["<i4"],
        ["<i4", [1], 0],
        {"dtype": "<i4"},
        "<i4",
    ],
    ids=repr,
)
def test_bad_ndarray_header_rejected(header: Any) -> None:
    payload = msgpack.packb(header, use_bin_type=True) + b"\x00" * 4
    with pytest.raises(CodecError):
        decode(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, payload)))


def test_truncated_ndarray_header_rejected() -> None:
    with pytest.raises(CodecError):
        decode(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, b"\x92\xa3<i")))
    with pytest.raises(CodecError):
        decode(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, b"")))


def test_invalid_bool_bytes_rejected() -> None:
    assert decode(ext_payload("|b1", [2], b"\x00\x01")).tolist() == [False, True]  # type: ignore[attr-defined]
    with pytest.raises(CodecError, match="bool"):
        decode(ext_payload("|b1", [2], b"\x00\x02"))


@pytest.mark.parametrize("code", [0, 2, 42, 127])
def test_unknown_ext_code(code: int) -> None:
    with pytest.raises(CodecError, match="ext"):
        decode(msgpack.packb(msgpack.ExtType(code, b"abc")))
    with pytest.raises(CodecError, match="ext"):
        decode(encode({"x": [msgpack.ExtType(code, b"")]}))


def test_reserved_negative_ext_code_rejected() -> None:
    with pytest.raises(CodecError, match="ext"):
        decode(b"\xd4\xfb\x00")  # fixext 1 with type -5


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used byte
        b"\x92\x01",  # truncated array
        b"\x01\x02",  # trailing data
        b"\x81\x01\x02",  # int map key (strict_map_key)
        b"\x81\x90\x02",  # unhashable map key
        b"\xa2\xff\xfe",  # invalid UTF-8
        b"\x91" * 5000,  # too deep
        b"\xdd\xff\xff\xff\xff",  # array claiming 4G elements
        b"\xdb\xff\xff\xff\xff",  # str claiming 4 GiB
    ],
)
def test_malformed_input_rejected(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


def test_decode_rejects_non_bytes_input() -> None:
    with pytest.raises(CodecError):
        decode("text")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        decode(memoryview(b"abcdef")[::2])


# --------------------------------------------------------------------------- fuzzing


def _decode_or_codec_error(data: bytes) -> None:
    try:
        decode(data)
    except CodecError:
        pass
    try:
        decode_message(data)
    except CodecError:
        pass


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    _decode_or_codec_error(data)


@FUZZ
@given(st.binary(max_size=64))
def test_random_ext_payloads_decode_or_raise_codec_error(payload: bytes) -> None:
    _decode_or_codec_error(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, payload)))
    header = msgpack.packb(["<i4", [len(payload) // 4]])
    _decode_or_codec_error(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, header + payload)))


@FUZZ
@given(fuzz_values, st.data())
def test_mutated_encodings_decode_or_raise_codec_error(value: object, data: st.DataObject) -> None:
    encoded = encode(value)
    cut = data.draw(st.integers(0, len(encoded)), label="truncate at")
    _decode_or_codec_error(encoded[:cut])
    flipped = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        pos = data.draw(st.integers(0, len(flipped) - 1), label="pos")
        flipped[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    _decode_or_codec_error(bytes(flipped))
    pos = data.draw(st.integers(0, len(encoded)), label="insert at")
    junk = data.draw(st.binary(min_size=1, max_size=8), label="junk")
    _decode_or_codec_error(encoded[:pos] + junk + encoded[pos:])


# --------------------------------------------------------------------------- messages


@register_message
@dataclass
class Scored:
    KIND: ClassVar[str] = "test_codec.scored"
    VERSION: ClassVar[int] = 2

    user: int
    items: np.ndarray
    scores: np.ndarray
    model: str
    meta: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    blob: bytes | None = None
    fresh: bool = True
    temperature: float = 1.0


@register_message
@dataclass
class Renamed:
    """v1 had ``uid``; v2 renamed it to ``user_id`` and added ``weight``."""

    KIND: ClassVar[str] = "test_codec.renamed"
    VERSION: ClassVar[int] = 2

    user_id: int
    weight: float

    @classmethod
    def from_fields(cls, fields: dict[str, Any], version: int) -> Renamed:
        if version < 2:
            return cls(user_id=fields["uid"], weight=1.0)
        return cls(**fields)


@register_message
@dataclass
class Validated:
    KIND: ClassVar[str] = "test_codec.validated"
    VERSION: ClassVar[int] = 1

    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 0:
            raise ValueError("n must be a non-negative int")


def wire(kind: object, version: object, fields: object) -> bytes:
    return encode([kind, version, fields])


def scored_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "user": 7,
        "items": np.arange(3, dtype=np.uint64),
        "scores": np.array([0.5, 0.25, 0.125], dtype=np.float32),
        "model": "ftrl",
    }
    fields.update(overrides)
    return fields


def test_message_types_registry() -> None:
    types = message_types()
    assert types["test_codec.scored"] is Scored
    assert types["test_codec.renamed"] is Renamed
    types.clear()  # a copy
    assert "test_codec.scored" in message_types()


@FAST
@given(
    user=st.integers(-(2**63), 2**63 - 1),
    items=hnp.arrays(np.uint64, hnp.array_shapes(min_dims=1, max_dims=1, min_side=0)),
    scores=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0)),
    model=st.text(max_size=10),
    meta=st.dictionaries(st.text(max_size=5), nested, max_size=3),
    tags=st.lists(st.text(max_size=5), max_size=3),
    blob=st.none() | st.binary(max_size=10),
    fresh=st.booleans(),
    temperature=st.floats(allow_nan=False),
)
def test_message_round_trip(
    user: int,
    items: np.ndarray,
    scores: np.ndarray,
    model: str,
    meta: dict[str, Any],
    tags: list[str],
    blob: bytes | None,
    fresh: bool,
    temperature: float,
) -> None:
    msg = Scored(user, items, scores, model, meta, tags, blob, fresh, temperature)
    out = decode_message(encode_message(msg))
    assert isinstance(out, Scored)
    assert (out.user, out.model, out.meta, out.tags, out.blob, out.fresh, out.temperature) == (
        user,
        model,
        meta,
        tags,
        blob,
        fresh,
        temperature,
    )
    assert_same_array(out.items, items)
    assert_same_array(out.scores, scores)


def test_message_wire_form() -> None:
    msg = Scored(1, np.arange(2, dtype=np.int64), np.zeros(2, dtype=np.float64), "m")
    envelope = decode(encode_message(msg))
    assert isinstance(envelope, list)
    kind, version, fields = envelope
    assert (kind, version) == ("test_codec.scored", 2)
    assert set(fields) == {
        "user",
        "items",
        "scores",
        "model",
        "meta",
        "tags",
        "blob",
        "fresh",
        "temperature",
    }


def test_older_version_without_upgrader_is_accepted() -> None:
    out = decode_message(wire("test_codec.scored", 1, scored_fields()))
    assert isinstance(out, Scored)
    assert out.user == 7 and out.fresh is True


def test_unknown_message_kind() -> None:
    with pytest.raises(CodecError, match="unknown message kind"):
        decode_message(wire("test_codec.nope", 1, {}))


def test_too_new_version() -> None:
    with pytest.raises(CodecError, match="version 3 is newer than supported 2"):
        decode_message(wire("test_codec.scored", 3, scored_fields()))


def test_missing_field() -> None:
    fields = scored_fields()
    del fields["model"]
    with pytest.raises(CodecError, match=r"missing.*model"):
        decode_message(wire("test_codec.scored", 2, fields))


def test_unknown_field() -> None:
    with pytest.raises(CodecError, match=r"unknown fields.*surprise"):
        decode_message(wire("test_codec.scored", 2, scored_fields(surprise=1)))


@pytest.mark.parametrize(
    "envelope",
    [
        [],
        ["test_codec.scored", 2],
        ["test_codec.scored", 2, {}, 0],
        [1, 2, {}],
        ["test_codec.scored", "2", {}],
        ["test_codec.scored", 2.0, {}],
        ["test_codec.scored", True, {}],
        ["test_codec.scored", -1, {}],
        ["test_codec.scored", 2, []],
        ["test_codec.scored", 2, {b"user": 1}],
        {"kind": "test_codec.scored"},
        "test_codec.scored",
    ],
    ids=repr,
)
def test_malformed_envelope(envelope: object) -> None:
    with pytest.raises(CodecError):
        decode_message(msgpack.packb(envelope, use_bin_type=True))


def test_from_fields_upgrades_old_versions() -> None:
    assert decode_message(wire("test_codec.renamed", 1, {"uid": 5})) == Renamed(5, 1.0)
    assert decode_message(encode_message(Renamed(9, 0.5))) == Renamed(9, 0.5)
    # errors inside from_fields (KeyError / TypeError) become CodecError
    with pytest.raises(CodecError):
        decode_message(wire("test_codec.renamed", 1, {}))
    with pytest.raises(CodecError):
        decode_message(wire("test_codec.renamed", 2, {"user_id": 1}))
    with pytest.raises(CodecError, match="newer"):
        decode_message(wire("test_codec.renamed", 3, {"user_id": 1, "weight": 1.0}))


def test_constructor_validation_errors_become_codec_error() -> None:
    assert decode_message(encode_message(Validated(3))) == Validated(3)
    with pytest.raises(CodecError):
        decode_message(wire("test_codec.validated", 1, {"n": -1}))


def test_encode_message_rejects_unregistered() -> None:
    @dataclass
    class Loose:
        KIND: ClassVar[str] = "test_codec.loose"
        VERSION: ClassVar[int] = 1
        x: int

    with pytest.raises(CodecError, match="not a registered message"):
        encode_message(Loose(1))
    with pytest.raises(CodecError):
        encode_message({"x": 1})


def test_register_message_validation() -> None:
    class NotADataclass:
        KIND: ClassVar[str] = "test_codec.nodc"
        VERSION: ClassVar[int] = 1

    with pytest.raises(TypeError):
        register_message(NotADataclass)

    @dataclass
    class NoKind:
        VERSION: ClassVar[int] = 1

    with pytest.raises(TypeError):
        register_message(NoKind)

    @dataclass
    class BadVersion:
        KIND: ClassVar[str] = "test_codec.badversion"
        VERSION: ClassVar[str] = "1"

    with pytest.raises(TypeError):
        register_message(BadVersion)

    @dataclass
    class Duplicate:
        KIND: ClassVar[str] = "test_codec.scored"
        VERSION: ClassVar[int] = 1

    with pytest.raises(ValueError, match="already registered"):
        register_message(Duplicate)
    assert message_types()["test_codec.scored"] is Scored
    assert register_message(Scored) is Scored  # idempotent


@FUZZ
@given(st.binary(max_size=256))
def test_random_message_envelopes(payload: bytes) -> None:
    for data in (
        wire("test_codec.scored", 2, {"user": payload}),
        wire("test_codec.renamed", 1, {"uid": payload}),
        b"\x93\xb1test_codec.scored\x02" + payload,
    ):
        try:
            decode_message(data)
        except CodecError:
            pass


def test_encoding_in_pieces_gives_the_same_bytes() -> None:
    """A snapshot is encoded piece by piece (the loop runs in between); the file is the
    same bytes as one call would give, so old and new files read alike."""
    from runtime.codec import encode_pieces

    document = {
        "kind": "snapshot",
        "parts": {
            "weights": {"version": 1, "state": {"index": np.arange(5), "z": np.ones(5)}},
            "users": {"version": 2, "state": {f"u{i}": [i, i + 1] for i in range(40)}},
            "empty": {},
        },
        "settings": {"bits": 22, "nested": {"a": {"b": {"c": [1.5, None, "x"]}}}},
    }
    for depth in (0, 1, 2, 3, 6):
        assert b"".join(encode_pieces(document, depth)) == encode(document)
    assert len(encode_pieces(document)) > 10


def test_a_large_array_is_encoded_as_a_view_of_its_memory() -> None:
    """A snapshot's large arrays are written from their own memory (joining a copy held
    the interpreter for tens of ms): the same bytes as one call, for every allowed dtype,
    shape and byte order, and no piece is a copy of the data."""
    from runtime.codec import LARGE_ARRAY_BYTES, encode_pieces

    size = LARGE_ARRAY_BYTES // 8 + 3
    arrays = [
        np.arange(size, dtype=np.float64),
        np.arange(size * 8, dtype=np.int64).astype(">i8"),
        (np.arange(size * 8) % 3 == 0).reshape(8, -1),
        np.arange(size * 2, dtype=np.float32)[::2],
        np.zeros((LARGE_ARRAY_BYTES // 4, 1), np.float32),
    ]
    for array in arrays:
        document = {"state": {"a": array, "small": np.arange(3)}}
        pieces = encode_pieces(document)
        assert b"".join(pieces) == encode(document)
        assert np.array_equal(decode(b"".join(pieces))["state"]["a"], array)
    big = np.ones(size)
    view = encode_pieces({"a": big})[-1]
    assert isinstance(view, memoryview) and np.shares_memory(np.asarray(view), big)


def test_a_map_key_given_twice_is_rejected_at_any_depth() -> None:
    packer = msgpack.Packer(use_bin_type=True)
    twice = packer.pack_map_header(2) + b"".join(packer.pack(x) for x in ("a", 1, "a", 2))
    nested = packer.pack_array_header(2) + packer.pack({"ok": 1}) + packer.pack_map_header(1)
    nested += packer.pack("inner") + twice
    for data in (twice, nested):
        with pytest.raises(CodecError, match="duplicate map key 'a'"):
            decode(data)
    assert decode(packer.pack({"a": 1, "b": {"a": 2}})) == {"a": 1, "b": {"a": 2}}
