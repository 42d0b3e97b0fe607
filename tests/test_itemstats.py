"""actors/itemstats.py against a plain dense reference, and its bounds, state and API."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from actors.itemstats import ItemStats, ItemStatsParams
from runtime.codec import decode, encode

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UNPRUNED = ItemStatsParams(window=4, half_life=2.0, markov_order=3, markov_decay=0.6, neighbours=64)


def random_stream(seed: int, events: int, users: int, items: int) -> list[tuple[int, int]]:
    """(user, item) events with popular items, so counts pile up on a few pairs."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1)
    chosen = rng.choice(items, size=events, p=weights / weights.sum())
    return [(int(rng.integers(users)), int(item)) for item in chosen]


def learn_stream(stats: ItemStats, stream: list[tuple[int, int]]) -> dict[int, list[int]]:
    histories: dict[int, list[int]] = defaultdict(list)
    for user, item in stream:
        stats.learn(np.array(histories[user], np.int64), item)
        histories[user].append(item)
    return histories


class DenseReference:
    """The module docstring's definitions with full matrices and no bound."""

    def __init__(self, p: ItemStatsParams, items: int) -> None:
        self.p = p
        self.co = np.zeros((items, items))
        self.n = np.zeros(items)
        self.trans = np.zeros((items, items))

    def learn(self, recent: list[int], item: int) -> None:
        for other in recent[-self.p.window :]:
            if other != item:
                self.co[other, item] += 1
                self.co[item, other] += 1
        for d, prev in enumerate(reversed(recent[-self.p.markov_order :]), start=1):
            if prev != item:
                self.trans[prev, item] += self.p.markov_decay ** (d - 1)
        self.n[item] += 1

    def scores(self, recent: list[int]) -> np.ndarray:
        items = len(self.n)
        knn, markov = np.zeros(items), np.zeros(items)
        window = recent[-self.p.window :]
        for p, row in enumerate(window):
            age = len(window) - 1 - p
            norms = np.sqrt(max(self.n[row], 1.0) * np.maximum(self.n, 1.0))
            knn += 2.0 ** (-age / self.p.half_life) * self.co[row] / norms
        for d, row in enumerate(reversed(recent[-self.p.markov_order :]), start=1):
            total = self.trans[row].sum()
            if total > 0:
                markov += self.p.markov_decay ** (d - 1) * self.trans[row] / total
        return np.stack([s / s.max() if s.max() > 0 else s for s in (knn, markov)])


def dense_counts(stats: ItemStats, prefix: str) -> np.ndarray:
    """A statistic's kept guaranteed counts as a full matrix."""
    nbr, sure = (getattr(stats, f"{prefix}_{a}") for a in ("nbr", "sure"))
    fill = getattr(stats, f"{prefix}_fill")
    dense = np.zeros((stats.n_items, stats.n_items))
    for row in range(stats.n_items):
        used = fill[row]
        dense[row, nbr[row, :used]] = sure[row, :used]
    return dense


def test_counts_and_scores_match_the_dense_reference_while_nothing_is_pruned() -> None:
    stream = random_stream(seed=1, events=600, users=12, items=40)
    stats, reference = ItemStats(UNPRUNED, capacity=4), DenseReference(UNPRUNED, 40)
    histories: dict[int, list[int]] = defaultdict(list)
    for user, item in stream:
        recent = histories[user]
        np.testing.assert_allclose(
            stats.scores(np.array(recent, np.int64), 40), reference.scores(recent), atol=1e-9
        )
        stats.learn(np.array(recent, np.int64), item)
        reference.learn(recent, item)
        recent.append(item)
    assert stats.knn_fill.max() < UNPRUNED.neighbours
    np.testing.assert_allclose(dense_counts(stats, "knn"), reference.co, atol=1e-9)
    np.testing.assert_allclose(dense_counts(stats, "mk"), reference.trans, atol=1e-9)
    np.testing.assert_allclose(stats.item_count[:40], reference.n)
    np.testing.assert_allclose(stats.mk_total[:40], reference.trans.sum(axis=1), atol=1e-9)


def test_scores_at_gives_exactly_the_normalised_values_of_scores() -> None:
    stats = ItemStats(ItemStatsParams(window=5, neighbours=6))
    histories = learn_stream(stats, random_stream(seed=2, events=3000, users=30, items=80))
    rng = np.random.default_rng(3)
    for user in range(30):
        recent = np.array(histories[user], np.int64)
        full = stats.scores(recent, 100)
        assert full.shape == (len(stats.names), 100)
        for signal in full:
            assert signal.max() == 1.0 or not signal.any()
            assert signal.min() >= 0.0
        assert not full[:, 80:].any()
        items = rng.integers(0, 100, size=25)
        assert np.array_equal(stats.scores_at(recent, items), full[:, items])
        raw = stats.scores_at(recent, items, raw=True)
        assert np.array_equal(raw > 0, full[:, items] > 0)


def test_scores_at_batch_equals_scores_at_event_by_event() -> None:
    stats = ItemStats(ItemStatsParams(window=5, neighbours=6))
    histories = learn_stream(stats, random_stream(seed=9, events=2000, users=15, items=50))
    rng = np.random.default_rng(10)
    recents = [np.array(histories[u][-rng.integers(0, 8) :], np.int64) for u in range(15)]
    recents[3] = np.array([-1, 2, 999, 4], np.int64)
    wanted = [rng.integers(0, 60, size=rng.integers(0, 6)) for _ in range(15)]
    recent_ptr = np.cumsum([0, *(len(r) for r in recents)])
    items_ptr = np.cumsum([0, *(len(w) for w in wanted)])
    batch = stats.scores_at_batch(
        recent_ptr, np.concatenate(recents), items_ptr, np.concatenate(wanted)
    )
    for e, (recent, items) in enumerate(zip(recents, wanted, strict=True)):
        expected = stats.scores_at(recent, items)
        assert np.array_equal(batch[:, items_ptr[e] : items_ptr[e + 1]], expected)
    unknown_dropped = stats.scores_at(np.array([2, 4], np.int64), wanted[3])
    assert np.array_equal(stats.scores_at(recents[3], wanted[3]), unknown_dropped)
    with pytest.raises(ValueError, match="CSR"):
        stats.scores_at_batch(recent_ptr, np.concatenate(recents), items_ptr[:-1], wanted[0])


def test_scores_are_normalised_over_every_known_row_not_only_the_first_n_items() -> None:
    stats = ItemStats(UNPRUNED)
    for _ in range(3):
        stats.learn(np.array([0], np.int64), 5)
    stats.learn(np.array([0], np.int64), 1)
    head = stats.scores(np.array([0], np.int64), 2)
    assert head[1, 1] == pytest.approx(1 / 3)
    assert np.array_equal(head, stats.scores(np.array([0], np.int64), 6)[:, :2])


def test_a_user_without_evidence_gets_zeros() -> None:
    stats = ItemStats(UNPRUNED)
    stats.learn(np.array([], np.int64), 3)
    assert not stats.scores(np.array([], np.int64), 10).any()
    assert not stats.scores(np.array([3], np.int64), 10).any()
    assert not stats.scores(np.array([7, 99], np.int64), 10).any()


def test_learn_batch_equals_repeated_learn() -> None:
    stream = random_stream(seed=4, events=2000, users=25, items=60)
    params = ItemStatsParams(window=6, half_life=3.0, markov_order=4, neighbours=5)
    one_by_one = ItemStats(params)
    learn_stream(one_by_one, stream)
    histories: dict[int, list[int]] = defaultdict(list)
    ptr, rows, items = [0], [], []
    for user, item in stream:
        rows += histories[user]
        ptr.append(len(rows))
        items.append(item)
        histories[user].append(item)
    batched = ItemStats(params)
    half = len(stream) // 2
    cut = ptr[half]
    batched.learn_batch(np.array(ptr[: half + 1]), np.array(rows[:cut]), np.array(items[:half]))
    batched.learn_batch(np.array(ptr[half:]) - cut, np.array(rows[cut:]), np.array(items[half:]))
    expected, got = one_by_one.to_state(), batched.to_state()
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert np.array_equal(value, got[key]), key


def test_learn_batch_rejects_inconsistent_offsets() -> None:
    stats = ItemStats(UNPRUNED)
    with pytest.raises(ValueError, match="recent_ptr"):
        stats.learn_batch(np.array([0, 2]), np.array([1], np.int64), np.array([3]))
    with pytest.raises(ValueError, match=">= 0"):
        stats.learn_batch(np.array([0, 1]), np.array([-1], np.int64), np.array([3]))


def test_state_round_trips_through_msgpack_and_keeps_learning_identically() -> None:
    stream = random_stream(seed=5, events=1500, users=20, items=50)
    params = ItemStatsParams(window=5, neighbours=4)
    original = ItemStats(params)
    histories = learn_stream(original, stream[:1000])
    restored = ItemStats(ItemStatsParams(), capacity=2)
    restored.load_state(decode(encode(original.to_state())))  # type: ignore[arg-type]
    assert restored.params == params
    assert restored.statistics()["knn_entries"] == original.statistics()["knn_entries"]
    for user, item in stream[1000:]:
        for stats in (original, restored):
            stats.learn(np.array(histories[user], np.int64), item)
        histories[user].append(item)
    for user in range(20):
        recent = np.array(histories[user], np.int64)
        assert np.array_equal(original.scores(recent, 50), restored.scores(recent, 50))


def test_load_state_rejects_another_version_and_mismatched_arrays() -> None:
    state = ItemStats(UNPRUNED).to_state()
    state["version"] = 99
    with pytest.raises(ValueError, match="version"):
        ItemStats().load_state(state)
    stats = ItemStats(UNPRUNED)
    stats.learn(np.array([0, 1], np.int64), 2)
    state = stats.to_state()
    state["params"] = dict(state["params"], neighbours=UNPRUNED.neighbours + 1)
    with pytest.raises(ValueError, match="shape"):
        ItemStats().load_state(state)


def test_memory_is_bounded_and_space_saving_brackets_the_true_counts() -> None:
    params = ItemStatsParams(window=8, markov_order=4, neighbours=4, admission_counters=3)
    stream = random_stream(seed=6, events=4000, users=40, items=120)
    stats, reference = ItemStats(params), DenseReference(params, 120)
    histories: dict[int, list[int]] = defaultdict(list)
    for user, item in stream:
        stats.learn(np.array(histories[user], np.int64), item)
        reference.learn(histories[user], item)
        histories[user].append(item)
    for prefix, true in (("knn", reference.co), ("mk", reference.trans)):
        fill = getattr(stats, f"{prefix}_fill")[: stats.n_items]
        assert fill.max() == params.neighbours
        nbr, cnt, sure = (getattr(stats, f"{prefix}_{a}") for a in ("nbr", "cnt", "sure"))
        for row in range(stats.n_items):
            kept = nbr[row, : fill[row]]
            assert np.all(sure[row, : fill[row]] <= true[row, kept] + 1e-9)
            assert np.all(true[row, kept] <= cnt[row, : fill[row]] + 1e-9)
            # every neighbour above total / neighbours is kept (Metwally et al., Theorem 2)
            strong = np.flatnonzero(true[row] > true[row].sum() / params.neighbours + 1e-9)
            assert set(strong.tolist()) <= set(kept.tolist())
    facts = stats.statistics()
    assert facts["items"] == 120
    assert facts["knn_entries"] <= 120 * params.neighbours
    # per statistic: neighbour int32, count and error float64, fill and weakest slot int32,
    # admission counters float64;
    # then the item count, its inverse square root and the Markov row total
    per_item = 2 * (params.neighbours * 20 + 8 + params.admission_counters * 8) + 24
    assert facts["bytes_per_item"] == per_item


def test_admission_counters_bound_the_weight_of_unmonitored_neighbours() -> None:
    params = ItemStatsParams(window=8, markov_order=4, neighbours=4, admission_counters=3)
    stream = random_stream(seed=8, events=3000, users=40, items=100)
    stats, reference = ItemStats(params), DenseReference(params, 100)
    histories: dict[int, list[int]] = defaultdict(list)
    for user, item in stream:
        stats.learn(np.array(histories[user], np.int64), item)
        reference.learn(histories[user], item)
        histories[user].append(item)
    for row in range(100):
        kept = set(stats.knn_nbr[row, : stats.knn_fill[row]].tolist())
        for other in np.flatnonzero(reference.co[row]):
            if int(other) not in kept:
                bucket = ((int(other) * 2654435761) & 0xFFFFFFFF) % params.admission_counters
                assert reference.co[row, other] <= stats.knn_gate[row, bucket] + 1e-9


def test_arrays_grow_with_the_catalog() -> None:
    stats = ItemStats(UNPRUNED, capacity=2)
    stats.learn(np.array([0, 1], np.int64), 1000)
    assert stats.n_items == 1001 and stats.capacity >= 1001
    assert stats.scores(np.array([0], np.int64), 1001)[0, 1000] == 1.0


def test_similar_lists_cosine_neighbours_best_first() -> None:
    stats = ItemStats(UNPRUNED)
    histories = learn_stream(stats, random_stream(seed=7, events=800, users=10, items=30))
    reference = DenseReference(UNPRUNED, 30)
    replay: dict[int, list[int]] = defaultdict(list)
    for user, item in random_stream(seed=7, events=800, users=10, items=30):
        reference.learn(replay[user], item)
        replay[user].append(item)
    assert replay == histories
    item = 0
    cosine = reference.co[item] / np.sqrt(reference.n[item] * np.maximum(reference.n, 1.0))
    rows, values = stats.similar(item, 5)
    expected = np.lexsort((np.arange(30), -cosine))[:5]
    assert rows.tolist() == expected.tolist()
    np.testing.assert_allclose(values, cosine[expected], atol=1e-12)
    assert np.all(np.diff(values) <= 0)
    assert stats.similar(999, 5)[0].size == 0


@pytest.mark.parametrize(
    "change",
    [{"window": 0}, {"half_life": 0.0}, {"markov_decay": 1.5}, {"neighbours": 0}],
)
def test_params_are_validated(change: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ItemStatsParams(**change)  # type: ignore[arg-type]


def test_movielens_neighbours_of_star_wars_include_its_sequels() -> None:
    data = DATA / "ml-100k" / "u.data"
    if not data.exists():
        pytest.skip(f"{data} is absent (licensed data, not in the repository)")
    ratings = np.loadtxt(data, dtype=np.int64, delimiter="\t")
    ratings = ratings[np.argsort(ratings[:, 3], kind="stable")]
    histories: dict[int, list[int]] = defaultdict(list)
    ptr, rows = [0], []
    for user, item in zip(ratings[:, 0], ratings[:, 1] - 1, strict=True):
        rows += histories[user][-20:]
        ptr.append(len(rows))
        histories[user].append(int(item))
    stats = ItemStats(ItemStatsParams(window=20, neighbours=100))
    stats.learn_batch(np.array(ptr), np.array(rows, np.int64), ratings[:, 1] - 1)
    facts = stats.statistics()
    assert facts["items"] == 1682
    assert facts["knn_entries"] <= 1682 * 100
    star_wars, empire, jedi = 49, 171, 180  # u.item ids 50, 172, 181
    neighbours, values = stats.similar(star_wars, 10)
    assert {empire, jedi} <= set(neighbours.tolist())
    assert math.isfinite(values[0]) and values[0] > 0
