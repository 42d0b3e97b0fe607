"""Wire codec for actor messages (msgpack + a numpy ndarray extension type).

Why this shape
--------------
Actors mostly exchange *batches*: columnar numpy arrays of hashed feature ids,
weights, labels and scores.  Encoding such a batch element by element as msgpack
lists would cost one type tag and one Python object per number on both sides.
Instead every ``numpy.ndarray`` travels as a single msgpack ext value
(``EXT_NDARRAY``) whose payload is a tiny msgpack header ``[dtype.str, shape]``
followed by the raw C-contiguous little-endian bytes, so encoding is one memory
copy and decoding is zero-copy (``np.frombuffer``).

The same codec is used by the in-memory transport's "force every message through
bytes" test mode, by Kafka, and to decode msgpack HTTP bodies.  The last one is
*untrusted* input, hence :class:`Limits`: the total size, every string / binary /
array / map / ext length and the element count of every ndarray are bounded, map
keys must be ``str`` or ``bytes`` (``strict_map_key=True``), and every way a
payload can be malformed surfaces as :class:`CodecError` (a ``ValueError``) —
never as another exception type, a crash or a hang.

Semantics worth knowing
-----------------------
* Arrays returned by :func:`decode` are **read-only** views onto the decoded
  payload (they never alias the caller's input buffer).  Callers that mutate an
  array must copy it first (``arr.copy()``).
* Allowed dtypes: bool, int8/16/32/64, uint8/16/32/64, float32/64.  Big-endian
  arrays of those kinds are byte-swapped to little-endian on encode; anything
  else (object, str, datetime, complex, float16, structured, ...) is rejected.
  Non-contiguous arrays are made C-contiguous on encode; 0-d and empty arrays
  round-trip.
* numpy scalars (``np.float64(1.5)``, ``np.int64(3)``, ``np.bool_``) are encoded
  as plain Python numbers / bools.
* Tuples are encoded as msgpack arrays and come back as lists.
* ``encode`` accepts any hashable msgpack-able dict key, but ``decode`` only
  accepts ``str``/``bytes`` keys, so e.g. ``{1: 2}`` encodes but fails to decode.
* msgpack decodes its reserved timestamp ext (code -1) natively, so decoded data
  may contain ``msgpack.Timestamp`` objects; every other ext code except
  ``EXT_NDARRAY`` is rejected.

Messages
--------
A message is a ``@dataclass`` with ``KIND: ClassVar[str]`` and
``VERSION: ClassVar[int]``, registered with :func:`register_message`.  On the wire
it is ``[KIND, VERSION, {field_name: value, ...}]``.  :func:`decode_message`
rejects unknown kinds, versions newer than the registered class, and missing or
unknown fields.  A class may define
``@classmethod from_fields(cls, fields: dict, version: int)`` to upgrade payloads
of older versions; when present it is used for every decode and is responsible
for validating the fields itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgpack
import numpy as np

from runtime.errors import BadInput

__all__ = [
    "DEFAULT_LIMITS",
    "EXT_NDARRAY",
    "CodecError",
    "CodecTypeError",
    "Limits",
    "decode",
    "decode_message",
    "encode",
    "encode_message",
    "message_types",
    "register_message",
]

_MiB: Final = 1024 * 1024

EXT_NDARRAY: Final = 1
"""msgpack ext type code of a numpy array."""


class CodecError(BadInput, ValueError):
    """Raised for every failure to encode or decode."""


class CodecTypeError(CodecError, TypeError):
    """Raised by the encoders for a value of an unsupported type or dtype.

    It is both a :class:`CodecError` and a ``TypeError``; unlike a bad payload it is a
    bug of the caller, so it is an internal error with a traceback.
    """

    http_status = 500
    public = False
    exit_code = 1
    traceback = True


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied while decoding (untrusted) input."""

    max_bytes: int = 64 * _MiB
    max_str_len: int = 1 * _MiB
    max_bin_len: int = 64 * _MiB
    max_array_len: int = 1_000_000
    max_map_len: int = 100_000
    max_ext_len: int = 64 * _MiB
    max_array_elements: int = 50_000_000
    """Maximum number of elements of one decoded numpy array."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0:
                raise ValueError(f"Limits.{f.name} must be a non-negative int, got {value!r}")


DEFAULT_LIMITS: Final = Limits()

# dtype.str of every allowed dtype (little-endian or byte-order free).
_ALLOWED_DTYPES: Final[frozenset[str]] = frozenset(
    np.dtype(name).newbyteorder("<").str
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
)
_MAX_NDIM: Final = 64  # numpy 2's limit; numpy 1.x allows 32 (reshape then fails cleanly)
# A header is at most ~1 + 2 + 33 + 3 + 64 * 9 bytes; only this prefix is parsed.
_MAX_HEADER_BYTES: Final = 1024


# --------------------------------------------------------------------------- encode


def _type_name(obj: object) -> str:
    tp = type(obj)
    return tp.__qualname__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"


def _normalise_array(arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` as a C-contiguous little-endian array of an allowed dtype."""
    if isinstance(arr, np.ma.MaskedArray):
        raise CodecTypeError("cannot encode numpy masked arrays (the mask would be lost)")
    dtype = arr.dtype
    if dtype.str.startswith(">"):
        dtype = dtype.newbyteorder("<")
    if dtype.str not in _ALLOWED_DTYPES:
        raise CodecTypeError(
            f"cannot encode numpy array of dtype {arr.dtype!s} ({arr.dtype.str!r}); "
            f"allowed: bool, int8-64, uint8-64, float32, float64"
        )
    return np.asarray(arr, dtype=dtype, order="C")  # (ascontiguousarray would make 0-d 1-d)


def _encode_ndarray(arr: np.ndarray) -> msgpack.ExtType:
    arr = _normalise_array(arr)
    header = msgpack.packb([arr.dtype.str, list(arr.shape)], use_bin_type=True)
    # bytes.join copies the array's buffer once, straight into the payload.
    return msgpack.ExtType(EXT_NDARRAY, b"".join((header, arr.data)))


def _default(obj: object) -> object:
    """msgpack ``default`` hook: ndarrays and numpy scalars; everything else fails."""
    if isinstance(obj, np.ndarray):
        return _encode_ndarray(obj)
    if isinstance(obj, np.generic):
        if obj.dtype.str in _ALLOWED_DTYPES or obj.dtype.newbyteorder("<").str in _ALLOWED_DTYPES:
            return obj.item()
        raise CodecTypeError(f"cannot encode numpy scalar of dtype {obj.dtype!s}")
    if isinstance(obj, int):  # msgpack falls back to ``default`` for out-of-range ints
        raise CodecError(f"cannot encode int {obj}: outside the 64-bit msgpack range")
    raise CodecTypeError(f"cannot encode object of type {_type_name(obj)}")


def encode(obj: object) -> bytes:
    """Serialise ``obj`` (None/bool/int/float/str/bytes/list/tuple/dict/ndarray) to msgpack.

    Raises :class:`CodecTypeError` (a :class:`CodecError`) for unsupported types or
    dtypes and :class:`CodecError` for other failures (e.g. an int outside the
    64-bit range, excessive nesting, a str with lone surrogates).
    """
    try:
        return msgpack.packb(obj, use_bin_type=True, default=_default)
    except CodecError:
        raise
    except TypeError as exc:
        raise CodecTypeError(f"cannot encode: {exc}") from exc
    except (ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode: {exc}") from exc


LARGE_ARRAY_BYTES: Final = 1 << 16
"""An array at least this large is one ext32 value whose data piece is the array's own
memory (no copy); smaller ones are encoded by one :func:`encode` call."""


def encode_pieces(obj: object, depth: int = 8) -> list[bytes | memoryview]:
    """:func:`encode` as pieces whose concatenation is the same bytes: a dict's header,
    then each key and value, down to ``depth`` levels of dicts.  Each piece is its own
    call into msgpack, so a thread encoding a large document lets other threads (the
    event loop) run in between instead of holding the interpreter for the whole of it;
    a large array's data is a view of its memory, so no piece holds the interpreter for a
    copy of it (the file write and the checksum of a view release it).  The arrays must
    not change until the pieces are written."""
    if isinstance(obj, np.ndarray) and obj.nbytes >= LARGE_ARRAY_BYTES:
        return _array_pieces(obj)
    if depth <= 0 or not isinstance(obj, dict):
        return [encode(obj)]
    pieces: list[bytes | memoryview] = [_map_header(len(obj))]
    for key, value in obj.items():
        pieces.append(encode(key))
        pieces.extend(encode_pieces(value, depth - 1))
    return pieces


def _array_pieces(arr: np.ndarray) -> list[bytes | memoryview]:
    """The bytes of ``encode(arr)`` for an array of at least 64 KiB (so an ext32 value) as
    its ext header, the array header and a view of the array's data."""
    arr = _normalise_array(arr)
    header = msgpack.packb([arr.dtype.str, list(arr.shape)], use_bin_type=True)
    size = len(header) + arr.nbytes
    if size >= 1 << 32:
        raise CodecError(f"cannot encode an array of {arr.nbytes} bytes: over msgpack's ext32")
    ext = b"\xc9" + size.to_bytes(4, "big") + EXT_NDARRAY.to_bytes(1, "big", signed=True)
    return [ext + header, arr.data.cast("B")]


def _map_header(size: int) -> bytes:
    header: bytes = msgpack.Packer(use_bin_type=True).pack_map_header(size)
    return header


# --------------------------------------------------------------------------- decode


def _parse_ndarray_header(payload: bytes) -> tuple[str, list[int], int]:
    """Parse ``[dtype.str, shape]`` at the start of ``payload``; return it and its length."""
    prefix = payload[:_MAX_HEADER_BYTES]
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        max_buffer_size=max(len(prefix), 1),
        max_str_len=32,
        max_bin_len=0,
        max_array_len=_MAX_NDIM,
        max_map_len=0,
        max_ext_len=0,
    )
    try:
        unpacker.feed(prefix)
        header = unpacker.unpack()
        offset = unpacker.tell()
    except Exception as exc:
        raise CodecError(f"ndarray ext: malformed header ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(header, list) and len(header) == 2):
        raise CodecError("ndarray ext: header must be a 2-element array [dtype, shape]")
    dtype_str, shape = header
    if not isinstance(dtype_str, str):
        raise CodecError("ndarray ext: dtype must be a string")
    if not isinstance(shape, list):
        raise CodecError("ndarray ext: shape must be an array")
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise CodecError(f"ndarray ext: invalid dimension {dim!r} in shape")
    return dtype_str, shape, offset


def _decode_ndarray(payload: bytes, limits: Limits) -> np.ndarray:
    dtype_str, shape, offset = _parse_ndarray_header(payload)
    if dtype_str not in _ALLOWED_DTYPES:
        raise CodecError(f"ndarray ext: dtype {dtype_str!r} is not allowed")
    dtype = np.dtype(dtype_str)
    if any(dim > limits.max_array_elements for dim in shape):
        raise CodecError(
            f"ndarray ext: dimension in shape {shape} exceeds "
            f"max_array_elements={limits.max_array_elements}"
        )
    count = math.prod(shape)
    if count > limits.max_array_elements:
        raise CodecError(
            f"ndarray ext: {count} elements exceed max_array_elements={limits.max_array_elements}"
        )
    nbytes = len(payload) - offset
    if nbytes != count * dtype.itemsize:
        raise CodecError(
            f"ndarray ext: shape {shape} of dtype {dtype_str} needs "
            f"{count * dtype.itemsize} bytes, payload has {nbytes}"
        )
    try:
        if count == 0:
            arr = np.empty(tuple(shape), dtype=dtype)
        else:
            arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(
                tuple(shape)
            )
            if dtype.kind == "b" and np.frombuffer(payload, np.uint8, offset=offset).max() > 1:
                raise CodecError("ndarray ext: bool array contains bytes other than 0 and 1")
            if not arr.flags.aligned:
                arr = arr.copy()
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"ndarray ext: cannot build array of shape {shape}: {exc}") from exc
    arr.flags.writeable = False
    return arr


def _make_ext_hook(limits: Limits) -> Callable[[int, bytes], object]:
    def ext_hook(code: int, data: bytes) -> object:
        if code == EXT_NDARRAY:
            return _decode_ndarray(data, limits)
        raise CodecError(f"unknown msgpack ext type code {code}")

    return ext_hook


def unique_map(
    pairs: list[tuple[Any, Any]], repeated: Callable[[str], Exception]
) -> dict[Any, Any]:
    """A map from its key-value pairs; a key given twice raises ``repeated(key)`` (decoders
    would keep its last value and drop the first without a word)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[Any] = set()
        for key, _ in pairs:
            if key in seen:
                raise repeated(str(key)[:64])
            seen.add(key)
    return obj


def _repeated_map_key(key: str) -> CodecError:
    return CodecError(f"duplicate map key {key!r}")


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return unique_map(pairs, _repeated_map_key)


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> object:
    """Deserialise one msgpack object from ``data`` (possibly untrusted).

    Any failure — wrong input type, oversize input, corrupt or truncated bytes,
    trailing data, a length above ``limits``, non-str/bytes or repeated map keys, an unknown
    ext code, a bad ndarray payload — raises :class:`CodecError`.  Decoded
    numpy arrays are read-only.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"cannot decode object of type {type(data).__name__}; expected bytes")
    try:
        view = memoryview(data)
        if not view.c_contiguous:
            raise CodecError("cannot decode a non-contiguous memoryview")
        size = view.nbytes
    except CodecError:
        raise
    except Exception as exc:  # e.g. a released memoryview
        raise CodecError(f"cannot read input buffer: {exc}") from exc
    if size > limits.max_bytes:
        raise CodecError(f"input of {size} bytes exceeds max_bytes={limits.max_bytes}")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    try:
        return msgpack.unpackb(
            view,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_pairs_hook=_unique_keys,
            ext_hook=_make_ext_hook(limits),
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=limits.max_ext_len,
        )
    except CodecError:
        raise
    except msgpack.ExtraData as exc:
        raise CodecError("trailing data after the msgpack object") from exc
    except Exception as exc:
        # FormatError, StackError, "incomplete input" ValueError, UnicodeDecodeError,
        # limit violations, unhashable/strict map keys (TypeError/ValueError), ...
        raise CodecError(f"invalid msgpack data ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- messages

_T = TypeVar("_T")


@dataclass(frozen=True)
class _MessageType:
    cls: type
    kind: str
    version: int
    field_names: frozenset[str]
    required: frozenset[str]
    from_fields: Callable[[dict[str, Any], int], object] | None


_REGISTRY: dict[str, _MessageType] = {}


def register_message(cls: type[_T]) -> type[_T]:
    """Class decorator registering a message dataclass under its ``KIND``.

    Raises ``TypeError`` if ``cls`` is not a dataclass or lacks a ``str`` ``KIND`` or
    ``int`` ``VERSION`` class attribute, and ``ValueError`` if ``KIND`` is already
    taken by a different class (re-registering the same class, or a reloaded class
    with the same module and qualified name, replaces the entry).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"register_message expects a dataclass, got {cls!r}")
    kind = getattr(cls, "KIND", None)
    version = getattr(cls, "VERSION", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__qualname__}.KIND must be a non-empty str")
    if type(version) is not int or version < 0:
        raise TypeError(f"{cls.__qualname__}.VERSION must be a non-negative int")
    existing = _REGISTRY.get(kind)
    if existing is not None and existing.cls is not cls:
        same_name = (existing.cls.__module__, existing.cls.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if not same_name:
            raise ValueError(
                f"message kind {kind!r} is already registered by "
                f"{existing.cls.__module__}.{existing.cls.__qualname__}"
            )
    init_fields = [f for f in dataclasses.fields(cls) if f.init]
    required = frozenset(
        f.name
        for f in init_fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    from_fields = getattr(cls, "from_fields", None)
    _REGISTRY[kind] = _MessageType(
        cls=cls,
        kind=kind,
        version=version,
        field_names=frozenset(f.name for f in init_fields),
        required=required,
        from_fields=from_fields if callable(from_fields) else None,
    )
    return cls


def message_types() -> dict[str, type]:
    """Return a copy of the registry: ``{KIND: message class}``."""
    return {kind: entry.cls for kind, entry in _REGISTRY.items()}


def encode_message(msg: object) -> bytes:
    """Encode a registered message as ``[KIND, VERSION, {field: value, ...}]``."""
    kind = getattr(type(msg), "KIND", None)
    entry = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if entry is None or entry.cls is not type(msg):
        raise CodecTypeError(f"{_type_name(msg)} is not a registered message type")
    fields = {name: getattr(msg, name) for name in sorted(entry.field_names)}
    return encode([entry.kind, entry.version, fields])


def decode_message(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> object:
    """Decode bytes produced by :func:`encode_message` into the message dataclass.

    Raises :class:`CodecError` for anything :func:`decode` rejects, a malformed
    envelope, an unknown kind, a version newer than the registered class, missing
    required or unknown fields, or a constructor / ``from_fields`` that rejects
    the values with ``TypeError``/``ValueError``/``KeyError``.
    """
    obj = decode(data, limits)
    if not (isinstance(obj, list) and len(obj) == 3):
        raise CodecError("message must be a 3-element array [kind, version, fields]")
    kind, version, fields = obj
    if not isinstance(kind, str):
        raise CodecError("message kind must be a string")
    if type(version) is not int:
        raise CodecError(f"message {kind} version must be an int")
    if not isinstance(fields, dict):
        raise CodecError(f"message {kind} fields must be a map")
    if not all(isinstance(key, str) for key in fields):
        raise CodecError(f"message {kind} field names must be strings")
    entry = _REGISTRY.get(kind)
    if entry is None:
        raise CodecError(f"unknown message kind {kind!r}")
    if version > entry.version:
        raise CodecError(
            f"message {kind} version {version} is newer than supported {entry.version}"
        )
    if version < 0:
        raise CodecError(f"message {kind} has invalid version {version}")
    try:
        if entry.from_fields is not None:
            msg = entry.from_fields(fields, version)
            if not isinstance(msg, entry.cls):
                raise CodecError(
                    f"{entry.cls.__qualname__}.from_fields returned {type(msg).__name__}"
                )
            return msg
        unknown = fields.keys() - entry.field_names
        if unknown:
            raise CodecError(f"message {kind} has unknown fields: {', '.join(sorted(unknown))}")
        missing = entry.required - fields.keys()
        if missing:
            raise CodecError(
                f"message {kind} is missing required fields: {', '.join(sorted(missing))}"
            )
        return entry.cls(**fields)
    except CodecError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise CodecError(f"message {kind} version {version} is invalid: {exc}") from exc
