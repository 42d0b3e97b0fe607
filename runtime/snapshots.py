"""Snapshot and checkpoint files: a composition of the model's parts (``actors/state.py``)
written atomically, so a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from actors.state import StateError, Stateful, compose, decode_state, restore, state_pieces


def write_atomically(path: Path, data: bytes | Sequence[bytes | memoryview]) -> None:
    """Temp file, fsync, rename, fsync the directory; ``data`` is the bytes or the pieces
    to write one after the other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as out:
        for piece in [data] if isinstance(data, bytes) else data:
            out.write(piece)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path: Path, kind: str, settings: Mapping[str, Any], parts: Mapping[str, Stateful]) -> Path:
    return write_document(path, compose(kind, settings, parts))


def write_document(path: Path, document: Mapping[str, Any]) -> Path:
    """Encode a composed document and write it atomically."""
    write_atomically(path, state_pieces(document))
    return path


def read(path: Path) -> Any:
    """The document in a state file (StateError when it is damaged or unreadable)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StateError(f"{path}: {error.strerror}") from error
    return decode_state(data, str(path))


def load(path: Path, kind: str, settings: Mapping[str, Any], parts: Mapping[str, Stateful]) -> None:
    """Restore ``parts`` from the file at ``path`` (errors name the file)."""
    document = read(path)
    try:
        restore(document, kind, settings, parts)
    except StateError as error:
        raise StateError(f"{path}: {error}") from error
