"""Saved state: every stateful part of the model saves and restores its own state, and a
snapshot or a shard checkpoint is a composition of those parts in one file format.

A part is anything with ``STATE_VERSION``, ``to_state()`` and ``load_state()``
(:class:`Stateful`).  :func:`compose` turns named parts into one msgpack-able
document; :func:`restore` loads such a document back into parts of the same names.
Adding a part to the model is adding it to the dict of parts: nothing else changes.

The file (:func:`encode_state` / :func:`decode_state`) is a 16-byte header, then the
msgpack document::

    b"FRST" | format version (u32) | payload length (u64) ... payload | crc32 (u32)

so a truncated or damaged file is refused with a clear :class:`StateError` instead
of loading garbage.  Pure, synchronous code.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from runtime.codec import CodecError, Limits, decode, encode_pieces
from runtime.errors import SetupError

FORMAT_VERSION = 2
MAGIC = b"FRST"
_HEADER = struct.Struct("<4sIQ")
_TRAILER = struct.Struct("<I")

# Our own files: sizes bounded only by memory, unlike untrusted HTTP bodies.
STATE_LIMITS = Limits(
    max_bytes=1 << 40,
    max_str_len=1 << 30,
    max_bin_len=1 << 40,
    max_array_len=1 << 31,
    max_map_len=1 << 31,
    max_ext_len=1 << 40,
    max_array_elements=1 << 34,
)


class StateError(SetupError, RuntimeError):
    """Saved state that cannot be restored here: damaged, foreign or of other settings."""


@runtime_checkable
class Stateful(Protocol):
    """A part of the model that saves and restores its own state."""

    STATE_VERSION: ClassVar[int]

    def to_state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


def compose(
    kind: str, settings: Mapping[str, Any], parts: Mapping[str, Stateful]
) -> dict[str, Any]:
    """One document holding every part's state, tagged with what the state means."""
    return {
        "kind": kind,
        "settings": dict(settings),
        "parts": {
            name: {"version": part.STATE_VERSION, "state": part.to_state()}
            for name, part in parts.items()
        },
    }


def _differences(saved: Any, settings: Mapping[str, Any]) -> str:
    """The settings that differ, each as the file has it and as the config has it
    (the whole dicts made a line of several hundred characters)."""
    saved = saved if isinstance(saved, dict) else {}
    keys = sorted(set(saved) | set(settings), key=str)
    different = [k for k in keys if saved.get(k) != settings.get(k)]
    return "; ".join(
        f"{k}: {saved.get(k)!r} in the file, {settings.get(k)!r} in the config"[:200]
        for k in different
    )


def restore(
    document: Any, kind: str, settings: Mapping[str, Any], parts: Mapping[str, Stateful]
) -> None:
    """Load a :func:`compose` document into ``parts``; refuses other kinds, settings or
    part versions before any part is changed."""
    if not isinstance(document, dict) or document.get("kind") != kind:
        found = document.get("kind") if isinstance(document, dict) else type(document).__name__
        raise StateError(f"not a freshrank {kind} (found {found!r})")
    saved_settings = document.get("settings")
    if saved_settings != dict(settings):
        raise StateError(f"model settings differ: {_differences(saved_settings, settings)}")
    saved = document.get("parts")
    if not isinstance(saved, dict):
        raise StateError(f"{kind} has no parts")
    for name, part in parts.items():
        entry = saved.get(name)
        if not isinstance(entry, dict) or entry.get("version") != part.STATE_VERSION:
            found = entry.get("version") if isinstance(entry, dict) else None
            raise StateError(
                f"{kind} part {name!r}: version {found}, this process reads {part.STATE_VERSION}"
            )
    for name, part in parts.items():
        part.load_state(saved[name]["state"])


def encode_state(document: Mapping[str, Any]) -> bytes:
    """The file bytes of a document: header, msgpack payload, checksum."""
    return b"".join(state_pieces(document))


def state_pieces(document: Mapping[str, Any]) -> list[bytes | memoryview]:
    """:func:`encode_state` as pieces to write one after the other: a snapshot is written
    from a worker thread while the loop runs, and joining the pieces would hold the
    interpreter for a copy of the whole payload (large arrays are views of their memory
    and must not change until written)."""
    pieces = encode_pieces(dict(document))
    size = sum(map(len, pieces))
    checksum = 0
    for piece in pieces:
        checksum = zlib.crc32(piece, checksum)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, size)
    return [header, *pieces, _TRAILER.pack(checksum)]


def decode_state(data: bytes, source: str = "state") -> Any:
    """The document of :func:`encode_state` bytes; a damaged file raises StateError."""
    if len(data) < _HEADER.size + _TRAILER.size:
        raise StateError(f"{source}: truncated ({len(data)} bytes)")
    magic, version, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateError(f"{source}: not a freshrank state file")
    if version != FORMAT_VERSION:
        raise StateError(f"{source}: format version {version}, this build reads {FORMAT_VERSION}")
    end = _HEADER.size + length
    if len(data) != end + _TRAILER.size:
        raise StateError(f"{source}: truncated or padded ({len(data)} bytes, expected {end + 4})")
    payload = memoryview(data)[_HEADER.size : end]
    (checksum,) = _TRAILER.unpack_from(data, end)
    if zlib.crc32(payload) != checksum:
        raise StateError(f"{source}: checksum mismatch (the file is damaged)")
    try:
        return decode(payload, STATE_LIMITS)
    except CodecError as error:
        raise StateError(f"{source}: {error}") from error
