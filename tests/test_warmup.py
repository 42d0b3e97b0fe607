"""Ready means ready (runtime/warmup.py): after :func:`warm_up` the first requests of a
System with the same settings compile no kernel, and the factor vectors' seeded start
is made when the learner starts, not by the first batch."""

from __future__ import annotations

import sys

from numba.core.registry import CPUDispatcher

from runtime.config import Config
from runtime.system import System
from runtime.warmup import warm_up, warm_up_config


def compiled() -> dict[str, int]:
    """Every numba kernel of the project with the number of type signatures it has."""
    out: dict[str, int] = {}
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if not name.startswith(("actors.", "runtime.")):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, CPUDispatcher):
                out[f"{value.py_func.__module__}.{attr}"] = len(value.signatures)
    return out


def plain(config: Config) -> Config:
    config.state.snapshot_path, config.state.restore = "", False
    config.http.enabled, config.ingest.dead_letter_path = False, ""
    return config


async def test_after_the_warm_up_the_first_requests_compile_nothing() -> None:
    config = plain(Config())
    await warm_up(config)
    before = compiled()
    assert sum(before.values()) >= 10  # the kernels the warm-up ran
    async with System(config) as system:
        items = [{"item": f"m{k}", "item_features": {"genre": [f"x{k % 4}"]}} for k in range(30)]
        await system.ingest(items)
        await system.ingest([{"user": "ann", "item": "m3"}, {"user": "bob", "item": "m4"}])
        await system.ingest([{"user": "ann", "item": "m5", "label": 1, "context": {"os": "x"}}])
        assert len(await system.recommend("ann", k=10)) == 10
        await system.recommend("", k=5, session=["m1"])
        await system.similar("m3", k=5)
        system.model.store.to_state()  # what a snapshot's worker thread copies
    assert compiled() == before


async def test_after_the_warm_up_a_large_catalogs_generated_candidates_compile_nothing() -> None:
    config = plain(Config())
    config.candidates.whole_catalog_below = 20  # these 30 items count as a large catalog
    await warm_up(config)
    before = compiled()
    async with System(config) as system:
        items = [{"item": f"m{k}", "item_features": {"genre": [f"x{k % 4}"]}} for k in range(30)]
        await system.ingest(items)
        await system.ingest([{"user": "ann", "item": f"m{k}", "ts": 1e9 + k} for k in range(5)])
        assert len(await system.recommend("ann", k=5)) == 5
        await system.recommend("", k=5, session=["m1"])
        assert system.statistics()["ranker"]["candidates"]["generated_requests"] == 2
    assert compiled() == before


async def test_the_learner_makes_the_factors_seeded_start_when_it_starts() -> None:
    config = plain(Config())
    config.model.bits = 14
    async with System(config) as system:
        assert system.model.factors is not None
        assert system.model.factors._init is not None


def test_the_warm_up_touches_no_state_and_serves_nothing() -> None:
    config = Config()
    config.state.dir, config.http.port = "/somewhere/durable", 8080
    warm = warm_up_config(config)
    assert (warm.state.dir, warm.state.snapshot_path, warm.state.restore) == ("", "", False)
    assert not warm.http.enabled and not warm.simulator.enabled
    assert warm.ingest.dead_letter_path == ""
    assert warm.model.bits <= 12 and config.model.bits == 22  # a copy
