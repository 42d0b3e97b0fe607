"""Candidate generation (actors/candidates.py): which rows a large catalog's
recommendation scores, and that a generated ranking agrees with the whole catalog's
where the signals decide."""

from __future__ import annotations

import numpy as np

from actors.candidates import CandidateGenerator, CandidateParams
from actors.features import Catalog, FeatureSpace
from actors.itemstats import ItemStats, ItemStatsParams
from actors.signals import SequenceSignals
from actors.trending import TrendingCounts
from runtime.config import Config
from runtime.system import System
from tests.test_session import sequences

DAY = 86400.0


def test_top_trending_are_the_highest_rows_of_each_trend() -> None:
    rng = np.random.default_rng(2)
    trends = TrendingCounts([DAY, 30 * DAY])
    trends.learn(rng.integers(0, 500, 3000), np.sort(rng.uniform(0, 60 * DAY, 3000)))
    top = trends.top(10)
    assert 10 <= top.size <= 20
    # ties at the 10th value may be broken either way: compare values, not rows
    for row in trends.scaled[:, : trends.rows]:
        assert np.sort(row[top])[-10:].tolist() == np.sort(row)[-10:].tolist()
    assert trends.top(0).size == 0 and trends.top(10_000).size == trends.rows


def test_neighbour_rows_are_what_the_signals_can_score() -> None:
    stats = ItemStats(ItemStatsParams(window=3, markov_order=2, neighbours=5))
    rng = np.random.default_rng(4)
    for _ in range(400):
        stats.learn(rng.integers(0, 40, 3), int(rng.integers(0, 40)))
    recent = np.array([1, 7, 9, 12], np.int64)
    scores = stats.scores(recent, 40)
    assert set(np.flatnonzero(scores.sum(axis=0)).tolist()) <= set(
        stats.neighbour_rows(recent).tolist()
    )
    assert stats.neighbour_rows(np.array([999], np.int64)).size == 0


def generator(n_items: int, threshold: int) -> CandidateGenerator:
    space = FeatureSpace(16)
    catalog = Catalog()
    for i in range(n_items):
        catalog.upsert(
            str(i), 0, np.array([space.ns_hash("item")], np.uint32),
            np.array([space.value_hash("item", str(i))], np.uint32), np.ones(1), [f"item={i}"],
        )  # fmt: skip
    signals = SequenceSignals(space, catalog, ItemStatsParams(), [DAY])
    signals.learn_event(np.array([0, 1], np.int64), 2, 0.0)
    signals.learn_event(np.array([5], np.int64), 6, 0.0)
    params = CandidateParams(whole_catalog_below=threshold, trending=2, newest=3)
    return CandidateGenerator(catalog, signals, params)


def test_candidates_are_neighbours_trending_and_newest() -> None:
    assert generator(50, threshold=100).rows(np.array([0]), 0.0) is None  # small: whole
    gen = generator(50, threshold=10)
    rows = gen.rows(np.array([0, 1], np.int64), now=0.0)
    assert rows is not None
    assert set(rows.tolist()) == {2, 6, 47, 48, 49}  # successor, trending (2, 6), newest
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert gen.statistics()["generated_requests"] == 1


async def test_generated_candidates_rank_like_the_whole_catalog() -> None:
    def config(threshold: int) -> Config:
        return Config.from_dict(
            {
                "model": {"bits": 16},
                "state": {"restore": False, "snapshot_path": ""},
                "ingest": {"dead_letter_path": ""},
                "http": {"enabled": False},
                "candidates": {"whole_catalog_below": threshold, "trending": 3, "newest": 2},
            }
        )

    rankings = []
    for threshold in (1_000_000, 1):
        async with System(config(threshold)) as system:
            await system.ingest(sequences())
            ranked = [await system.recommend("", k=3, session=[f"x{s}"]) for s in (3, 20, 33)]
            rankings.append([[r["item"] for r in top] for top in ranked])
            stats = system.statistics()["ranker"]["candidates"]
    assert rankings[0] == rankings[1] and rankings[0][0][0] == "x4"
    assert stats["generated_requests"] == 3 and stats["mean_candidates"] < 40


async def test_too_few_candidates_for_k_rank_the_whole_catalog() -> None:
    config = Config.from_dict(
        {
            "model": {"bits": 16},
            "state": {"restore": False, "snapshot_path": ""},
            "ingest": {"dead_letter_path": ""},
            "http": {"enabled": False},
            "candidates": {"whole_catalog_below": 1, "trending": 3, "newest": 2},
        }
    )
    async with System(config) as system:
        await system.ingest(sequences())
        few = await system.recommend("", k=3, session=["x3"])
        many = await system.recommend("", k=40, session=["x3"])
        assert len(few) == 3
        assert len(many) == 39  # every item but the session's, not just the candidates
        assert [r["item"] for r in many[:3]] == [r["item"] for r in few]


def _lists(stats: ItemStats) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return stats.knn_nbr, stats.knn_fill, stats.mk_nbr, stats.mk_fill


def test_the_candidate_rows_are_distinct_and_sorted_dense_or_sparse() -> None:
    """_candidate_rows reads the marks in order when the candidates cover much of the
    catalog and sorts them otherwise: both give np.unique of the rows in the catalog, and
    leave the scratch marks clear for the next request."""
    from actors.candidates import _candidate_rows

    stats = ItemStats(ItemStatsParams())
    rng = np.random.default_rng(11)
    for n, size in ((1_000, 900), (1_000, 20), (50_000, 300), (10, 0)):
        parts = rng.integers(-5, n + 5, size).astype(np.int64)
        marks = np.zeros(2 * n, np.bool_)
        expected = np.unique(parts[(parts >= 0) & (parts < n)])
        got = _candidate_rows(np.zeros(0, np.int64), _lists(stats), (3, 2, 0), parts, n, marks)
        np.testing.assert_array_equal(got, expected)
        assert not marks.any()


def test_the_candidate_rows_are_the_neighbour_rows_and_the_extra_ones() -> None:
    from actors.candidates import _candidate_rows

    stats = ItemStats(ItemStatsParams(window=3, markov_order=2, neighbours=5))
    rng = np.random.default_rng(5)
    for _ in range(400):
        stats.learn(rng.integers(0, 40, 3), int(rng.integers(0, 40)))
    marks = np.zeros(100, np.bool_)
    extra = np.array([45, 3, 3, 60], np.int64)
    for recent in ([1, 7, 9, 12, 99, -1], [5], [], [12, 12, 30, 2, 8, 13, 21]):
        rows = np.array(recent, np.int64)
        parts = np.concatenate((stats.neighbour_rows(rows), extra))
        got = _candidate_rows(rows, _lists(stats), (3, 2, stats.n_items), extra, 50, marks)
        np.testing.assert_array_equal(got, np.unique(parts[parts < 50]))
        assert not marks.any()
