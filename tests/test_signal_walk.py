"""The compiled batch walk (actors/signal_walk.py) against the per-event definition:
``SequenceSignals.values`` of each event's rows, ``catalog_values`` of ranked events,
then ``learn_event``, one event after another."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from actors.features import Catalog, FeatureSpace
from actors.itemstats import ItemStatsParams
from actors.signals import SequenceSignals, SignalEvents

DAY = 86400.0
ITEMS = 40


def catalog_with_genres(space: FeatureSpace, rng: np.random.Generator) -> Catalog:
    catalog = Catalog()
    for i in range(ITEMS):
        genres = [f"g{g}" for g in rng.choice(6, size=int(rng.integers(1, 3)), replace=False)]
        ns = [space.ns_hash("item"), *(space.ns_hash("genre") for _ in genres)]
        raw = [space.value_hash("item", str(i)), *(space.value_hash("genre", g) for g in genres)]
        catalog.upsert(
            str(i), 0, np.array(ns, np.uint32), np.array(raw, np.uint32),
            np.ones(len(ns)), [f"item={i}", *genres],
        )  # fmt: skip
    return catalog


def random_batch(rng: np.random.Generator, users: dict[str, list[int]], n: int) -> dict:
    """Events of a few users (one anonymous), each with 3 negatives; every 4th ranked."""
    names = [rng.choice(["a", "b", "c", "d", ""]) for _ in range(n)]
    items = rng.integers(-1, ITEMS, n)  # -1: an event with no catalog item
    ts = np.sort(rng.uniform(0, 200 * DAY, n))  # 200 half-lives: the trends rescale
    ts[rng.integers(0, n)] = np.nan
    learn = rng.random(n) > 0.1
    seq_ptr, seq_rows, row_first, row_items, slots = [0], [], [0], [], []
    for e in range(n):
        recent = users.setdefault(names[e], []) if names[e] else []
        if items[e] >= 0:
            seq_rows += recent[-10:]
        seq_ptr.append(len(seq_rows))
        rows = [int(items[e]), *rng.integers(0, ITEMS, 3)] if items[e] >= 0 else [-1]
        row_items += rows
        row_first.append(len(row_items))
        slots.append(len([s for s in slots if s >= 0]) if e % 4 == 0 and items[e] >= 0 else -1)
        if names[e] and items[e] >= 0:
            recent.append(int(items[e]))
    return {
        "events": SignalEvents(
            np.array(seq_ptr), np.array(seq_rows, np.int64), np.array([bool(u) for u in names]),
            items, learn, ts, np.array(row_first), np.array(row_items, np.int64), np.array(slots),
            np.ones(n, bool),
        ),
        "names": names,
    }  # fmt: skip


def per_event(
    signals: SequenceSignals, events: SignalEvents, n_catalog: int, pools: list | None = None
) -> tuple:
    """The definition, one event at a time; ``pools`` collects each event's hard-negative
    pool (rows its personal signals score above 0, other than the positive)."""
    rows = np.zeros((events.row_items.size, len(signals.names)))
    ranked = []
    for e in range(events.items.size):
        if events.items[e] < 0:
            continue
        recent = events.seq_rows[events.seq_ptr[e] : events.seq_ptr[e + 1]]
        span = np.arange(events.row_first[e], events.row_first[e + 1])
        span = span[events.row_items[span] >= 0]
        if pools is not None:
            pool = signals.stats.scores(recent, n_catalog).sum(axis=0) > 0
            pool[events.items[e]] = False
            pools.append((set(np.flatnonzero(pool)), events.row_items[span[1:3]]))
        rows[span] = signals.values(recent, events.row_items[span]).T
        if events.rank_slot[e] >= 0:
            ranked.append(signals.catalog_values(recent, n_catalog))
        if events.learn[e]:
            named = recent if events.named[e] else None
            signals.learn_event(named, int(events.items[e]), float(events.ts[e]))
    return rows, np.array(ranked)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_compiled_walk_equals_the_per_event_methods(seed: int) -> None:
    rng = np.random.default_rng(seed)
    space = FeatureSpace(18)
    catalog = catalog_with_genres(space, rng)
    compiled = SequenceSignals(space, catalog, ItemStatsParams(neighbours=4), [DAY, 30 * DAY])
    reference = copy.deepcopy(compiled)
    reference.content.catalog = compiled.content.catalog = catalog
    users_a: dict[str, list[int]] = {}
    for _ in range(6):  # several batches: state carried between walks
        batch = random_batch(rng, users_a, 120)
        got_rows, got_ranked = compiled.walk(batch["events"], len(catalog))
        want_rows, want_ranked = per_event(reference, batch["events"], len(catalog))
        np.testing.assert_allclose(got_rows, want_rows, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got_ranked, want_ranked.reshape(got_ranked.shape), rtol=1e-9)
    assert got_rows.any() and got_ranked.any()
    for name in ("knn_nbr", "knn_sure", "mk_nbr", "mk_sure", "mk_total", "item_count"):
        np.testing.assert_array_equal(getattr(compiled.stats, name), getattr(reference.stats, name))
    assert compiled.stats.n_items == reference.stats.n_items
    np.testing.assert_allclose(compiled.trends.scaled, reference.trends.scaled, rtol=1e-12)
    assert (compiled.trends.rows, compiled.trends.origin) == (
        reference.trends.rows,
        reference.trends.origin,
    )
    np.testing.assert_allclose(compiled.mixture.totals, reference.mixture.totals, rtol=1e-12)


def test_an_empty_batch_changes_nothing() -> None:
    signals = SequenceSignals(FeatureSpace(16), Catalog(), ItemStatsParams(), [DAY])
    empty = np.zeros(0, np.int64)
    events = SignalEvents(
        np.zeros(1, np.int64), empty, np.zeros(0, bool), empty, np.zeros(0, bool),
        np.zeros(0), np.zeros(1, np.int64), empty, empty, np.zeros(0, bool),
    )  # fmt: skip
    rows, ranked = signals.walk(events, 0)
    assert rows.shape == (0, len(signals.names)) and ranked.shape[0] == 0
    assert signals.stats.n_items == 0 and signals.trends.rows == 0


def test_hard_negatives_are_drawn_among_the_users_neighbours() -> None:
    rng = np.random.default_rng(5)
    space = FeatureSpace(18)
    catalog = catalog_with_genres(space, rng)
    compiled = SequenceSignals(space, catalog, ItemStatsParams(neighbours=8), [DAY])
    reference = copy.deepcopy(compiled)
    reference.content.catalog = compiled.content.catalog = catalog
    users: dict[str, list[int]] = {}
    drawn_from_pool = 0
    for seed in range(4):
        batch = random_batch(rng, users, 150)
        uniform = batch["events"].row_items.copy()
        got, _ = compiled.walk(batch["events"], len(catalog), hard=(2, ITEMS, seed))
        pools: list = []
        want, _ = per_event(reference, batch["events"], len(catalog), pools)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)  # rows as drawn
        for pool, negatives in pools:
            if pool:
                assert set(negatives.tolist()) <= pool
                drawn_from_pool += 1
    assert drawn_from_pool > 100
    assert (batch["events"].row_items != uniform).any()
