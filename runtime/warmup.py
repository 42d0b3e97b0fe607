"""Ready means ready: the compiled kernels are in memory before a process says so.

The numeric kernels are numba functions compiled on first call for the argument
types they meet (or loaded from numba's on-disk cache, which also costs a first
call).  Without a warm-up the first requests after "ready" paid for that: 0.3 s for
the first ingest and 0.14 s for the first click with a warm disk cache, seconds
without one (bench/README.md, "First request after ready").  :func:`warm_up` runs
a throwaway in-memory System of the same model settings over a few synthetic
events and requests, so every kernel the daemon's and a ranker's first requests
need is compiled in this process; the real model is untouched.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

from runtime.config import Config

log = logging.getLogger("freshrank.warmup")

ITEMS = 12
USERS = 3


def warm_up_config(config: Config) -> Config:
    """The same model and training settings with no state, HTTP, simulator or files.

    Fewer hashed slots change array sizes, not the argument types kernels are compiled
    for, so the compiled code is the code the real model runs."""
    warm = copy.deepcopy(config)
    warm.model.bits = min(warm.model.bits, 12)
    warm.model.factor_bits = min(warm.model.factor_bits, warm.model.bits)
    warm.state.dir, warm.state.restore, warm.state.snapshot_path = "", False, ""
    warm.http.enabled = False
    warm.simulator.enabled = False
    warm.ingest.dead_letter_path = ""
    warm.model.components = []
    # its few items must still take the generated-candidates path a large catalog takes
    warm.candidates.whole_catalog_below = min(warm.candidates.whole_catalog_below, ITEMS)
    return warm


def synthetic_events() -> list[dict[str, Any]]:
    """Item upserts with features, implicit interactions, a labelled event with context
    features and an untimed one: each kind of row the trainer and ranker compile for."""
    items = [{"item": f"warm-{i}", "item_features": {"genre": [f"g{i % 3}"]}} for i in range(ITEMS)]
    clicks = [
        {"user": f"warm-user-{u}", "item": f"warm-{(u + step) % ITEMS}", "ts": 1.0e9 + step}
        for step in range(6)
        for u in range(USERS)
    ]
    delayed = [
        {"event": "impression", "user": "warm-user-2", "item": "warm-5", "impression_id": "w1"},
        {"event": "click", "impression_id": "w1"},
    ]
    labelled = [
        {"user": "warm-user-0", "item": "warm-1", "label": 0, "context": {"device": "phone"}},
        {"user": "warm-user-1", "item": "warm-2", "label": 1, "ts": 1.0e9 + 10},
    ]
    return items + clicks + labelled + delayed


async def warm_up(config: Config) -> float:
    """Compile every kernel the first requests need; returns the seconds it took."""
    from runtime.system import System  # the system imports the kernels this compiles

    started = time.perf_counter()
    async with System(warm_up_config(config)) as system:
        await system.ingest(synthetic_events(), source="warm-up")
        await system.recommend("warm-user-0", k=5)
        await system.recommend("warm-user-1", k=3, candidates=["warm-1", "warm-4"], explain=True)
        await system.recommend("", k=5, session=["warm-2", "warm-3"])
        await system.similar("warm-1", k=3)
        await system.inspect("warm-1", k=3)
        system.statistics()
        # a snapshot's copy of the weights, in a worker thread as a snapshot makes it: the
        # loop's first worker thread (and its module's import) is not a request's stall
        await asyncio.to_thread(system.model.store.to_state)
    seconds = time.perf_counter() - started
    log.info("kernels warmed up in %.2f s", seconds)
    return seconds
