"""One trial of ``freshrank tune``, as a worker process runs it: a replay of the log (or
of its first interactions) with one candidate config, or the error that stopped it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.readers import Chunk
from runtime.config import Config
from runtime.replay import open_log, replay
from runtime.system import System


@dataclass(frozen=True)
class TrialJob:
    """What a worker process replays: a trial's config on the first ``limit`` interactions."""

    number: int
    config: Config
    log: str
    fmt: str
    limit: int | None


@dataclass
class TrialRun:
    """A worker's answer: the replay summary, or the error that stopped the trial."""

    summary: dict[str, Any] | None
    seconds: float
    error: str | None = None


def take_interactions(chunks: Iterator[Chunk], limit: int) -> Iterator[Chunk]:
    """The chunks of a log until ``limit`` interactions (at batch granularity)."""
    seen = 0
    for chunk in chunks:
        if seen >= limit:
            return
        yield chunk
        seen += chunk.interactions


async def replay_config(
    config: Config, log: str | Path, fmt: str, limit: int | None = None
) -> dict[str, Any]:
    """The replay of ``log`` (or its first ``limit`` interactions) with one config."""
    async with System(config) as system:
        chunks = open_log(log, fmt, config.training.batch_size, config.feedback)
        if limit is not None:
            chunks = take_interactions(chunks, limit)
        return await replay(system, chunks)


def run_trial(job: TrialJob) -> TrialRun:
    """Worker-process entry point: never raises for a bad trial, returns its error."""
    started = time.perf_counter()
    try:
        summary = _run_loop(replay_config(job.config, job.log, job.fmt, job.limit))
    except Exception as error:
        return TrialRun(None, time.perf_counter() - started, f"{type(error).__name__}: {error}")
    return TrialRun(summary, time.perf_counter() - started)


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)
