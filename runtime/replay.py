"""``freshrank replay``: a log through the same pipeline as fast as it goes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from actors.events import EventLimits
from actors.readers import (
    Chunk,
    read_ctr_tsv,
    read_jsonl,
    read_movielens,
    read_movietweetings,
    read_rechorus,
)
from runtime.config import FeedbackConfig
from runtime.errors import BadInput
from runtime.system import System

FORMATS = ("movielens", "movietweetings", "rechorus", "criteo", "tsv", "jsonl")


class LogFormatError(BadInput):
    """A log its reader cannot read: most often another format than ``--format`` says."""

    cli_label = "replay"


def open_log(
    path: str | Path, fmt: str, batch_size: int, feedback: FeedbackConfig | None = None
) -> Iterator[Chunk]:
    """The reader for a log format; what it cannot read raises LogFormatError naming the
    file, the format and the cause (a reader meeting another format fails with whatever
    its parser raises: a traceback for the operator).  ``feedback``: the event types a
    JSON-lines log may name (None: the default ones)."""
    try:  # some readers open and check the file at once, the others when first read
        chunks = _reader(path, fmt, batch_size, feedback or FeedbackConfig())
    except READ_ERRORS as error:
        raise _format_error(error, path, fmt) from None
    return _as_format_errors(chunks, path, fmt)


READ_ERRORS = (ValueError, KeyError, IndexError, OSError)


def _as_format_errors(chunks: Iterator[Chunk], path: str | Path, fmt: str) -> Iterator[Chunk]:
    try:
        yield from chunks
    except READ_ERRORS as error:
        raise _format_error(error, path, fmt) from None


def _format_error(error: Exception, path: str | Path, fmt: str) -> LogFormatError:
    cause = str(error) if isinstance(error, ValueError | OSError) else repr(error)
    others = ", ".join(f for f in FORMATS if f != fmt)
    return LogFormatError(
        f"{path} cannot be read as --format {fmt}: {cause[:300]}; is it another format ({others})?"
    )


def _reader(
    path: str | Path, fmt: str, batch_size: int, feedback: FeedbackConfig
) -> Iterator[Chunk]:
    if fmt == "movielens":
        return read_movielens(path, batch_size)
    if fmt == "movietweetings":
        return read_movietweetings(path, batch_size)
    if fmt == "rechorus":
        return read_rechorus(path, batch_size)
    if fmt == "criteo":
        return read_ctr_tsv(path, criteo=True, batch_size=batch_size)
    if fmt == "tsv":
        return read_ctr_tsv(path, criteo=False, batch_size=batch_size)
    if fmt == "jsonl":
        return read_jsonl(path, batch_size, EventLimits(feedback_types=feedback.types))
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


PREFETCH_EVENTS = 32_768
FIRST_PREFETCH_EVENTS = 256


def _next_group(chunks: Iterator[Chunk], rows_wanted: int = PREFETCH_EVENTS) -> list[Chunk]:
    """The next chunks holding at least ``rows_wanted`` rows (fewer at the end of the log)."""
    group: list[Chunk] = []
    rows = 0
    for chunk in chunks:
        group.append(chunk)
        rows += len(chunk.batch) if chunk.batch is not None else 0
        if rows >= rows_wanted:
            break
    return group


async def prefetched(chunks: Iterator[Chunk]) -> AsyncIterator[Chunk]:
    """Read ahead in a worker thread while the pipeline learns what was read.

    The readers' heavy parts (pyarrow parsing, numpy) release the GIL, so parsing
    overlaps hashing and learning on a second core.  Chunks cross threads in groups
    of up to PREFETCH_EVENTS rows so small batches do not pay a hand-off each, and one
    ``next()`` runs at a time: the generator is never entered from two threads.  The
    groups start small and double, so learning starts at once instead of after a
    whole group was read (at ``--batch-size 1`` that wait was a third of a Criteo
    sample replay).
    """
    loop = asyncio.get_running_loop()
    wanted = FIRST_PREFETCH_EVENTS
    pending = loop.run_in_executor(None, _next_group, chunks, wanted)
    while True:
        group = await pending
        if not group:
            return
        wanted = min(2 * wanted, PREFETCH_EVENTS)
        pending = loop.run_in_executor(None, _next_group, chunks, wanted)
        for chunk in group:
            yield chunk


async def replay(
    system: System, chunks: Iterator[Chunk], progress: Any | None = None
) -> dict[str, Any]:
    """Submit every chunk, drain, and report throughput and the progressive metrics."""
    started = time.perf_counter()
    events = rejected = 0
    async for chunk in prefetched(iter(chunks)):
        if chunk.rejected:
            rejected += len(chunk.rejected)
            await system.reject(chunk.rejected, source="replay")
        if chunk.batch is not None and len(chunk.batch):
            await system.submit(chunk.batch)
        events += chunk.interactions
        if progress is not None:
            progress.update(chunk.interactions + len(chunk.rejected))
    await system.drain()
    seconds = time.perf_counter() - started
    return clean(
        {
            "events": events,
            "seconds": round(seconds, 4),
            "events_per_s": round(events / seconds, 1) if seconds > 0 else None,
            "rejected": rejected,
            "shards": len(system.learners),
            **system.metrics.summary(),
        }
    )
