"""The shared protocol driver of bench/quality.py: deterministic, and the same protocol as
freshrank's own replay (checked against PopularityBaseline and read_movielens)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.metrics import PopularityBaseline
from actors.readers import protocol_flags, read_movielens, read_movietweetings
from bench import peers as peers_module
from bench.peers import (
    BlendPeer,
    EASEFits,
    EASEPeer,
    FeatureRows,
    ItemKNNPeer,
    MarkovChainPeer,
    PopularityPeer,
    PopularityTieBreakPeer,
    ease_weights,
    feature_dict,
)
from bench.protocol import (
    Example,
    Feature,
    ItemTable,
    RankingStream,
    load_movielens,
    load_movietweetings,
    negative_rows,
    run_ranking,
)
from tests.conftest import data_path


def synthetic_stream(seed: int = 7, events: int = 600, items: int = 40) -> RankingStream:
    """Users drawing Zipf-ish items; a quarter of the items only appear part-way through."""
    rng = np.random.default_rng(seed)
    known_from = np.where(np.arange(items) < 30, 0, rng.integers(50, events // 2, items))
    order = np.argsort(known_from, kind="stable")  # rows are appended as items appear
    known_from = known_from[order]
    table = ItemTable(
        [f"i{r}" for r in range(items)], [[("item", f"i{r}")] for r in range(items)], known_from
    )
    users, rows = [], []
    for i in range(events):
        known = int(np.sum(known_from <= i))
        users.append(f"u{rng.integers(0, 12)}")
        rows.append(min(int(rng.zipf(1.3)) - 1, known - 1))
    return RankingStream(
        items=table,
        profiles={},
        users=users,
        item_rows=np.array(rows, np.int64),
        ts=np.arange(events, dtype=np.float64) * 60.0,
        evaluate=protocol_flags(events, warmup=0.2, every=3),
    )


class CountingPeer:
    """Scores = net count of learned positives minus negatives: depends on every draw."""

    def __init__(self, n_items: int) -> None:
        self.name = "counting"
        self.net = np.zeros(n_items)
        self.seen: list[Example] = []

    def score(self, user: str, features: Sequence[Feature], candidates: np.ndarray) -> np.ndarray:
        return self.net[candidates]

    def learn(self, examples: Sequence[Example]) -> None:
        self.seen.extend(examples)
        for example in examples:
            self.net[example.item_row] += 1 if example.label else -1


def test_driver_is_deterministic_and_shares_negatives() -> None:
    stream = synthetic_stream()
    first, second, other = CountingPeer(40), CountingPeer(40), CountingPeer(40)
    (a,) = run_ranking(stream, [first], negatives=4, seed=3)
    (b,) = run_ranking(stream, [second], negatives=4, seed=3)
    run_ranking(stream, [other], negatives=4, seed=4)
    assert (a.hr, a.ndcg, a.evaluated) == (b.hr, b.ndcg, b.evaluated)
    assert first.seen == second.seen
    assert first.seen != other.seen  # the seed drives the negatives
    assert a.evaluated == int(stream.evaluate.sum())
    # lockstep: two peers in one run learn exactly the examples each gets alone
    together = [CountingPeer(40), CountingPeer(40)]
    run_ranking(stream, together, negatives=4, seed=3)
    assert together[0].seen == together[1].seen == first.seen


def test_negatives_are_known_items_other_than_the_positive() -> None:
    stream = synthetic_stream()
    peer = CountingPeer(40)
    run_ranking(stream, [peer], negatives=4, seed=0)
    examples = iter(peer.seen)
    for i, row in enumerate(stream.item_rows):
        known = int(np.sum(stream.items.known_from <= i))
        positive = next(examples)
        assert (positive.item_row, positive.label) == (row, 1)
        for _ in range(4 if known > 1 else 0):
            negative = next(examples)
            assert negative.label == 0
            assert 0 <= negative.item_row < known and negative.item_row != row
    assert next(examples, None) is None
    assert negative_rows(np.array([0.0, 0.999]), positive=0, known=2) == [1, 1]


def test_popularity_through_the_driver_equals_popularity_baseline() -> None:
    stream = synthetic_stream(seed=11)
    (result,) = run_ranking(stream, [PopularityPeer(len(stream.items))], k=5)
    baseline = PopularityBaseline(k=5)
    seen: dict[str, list[int]] = {}
    for i, (user, row) in enumerate(zip(stream.users, stream.item_rows.tolist(), strict=True)):
        known = int(np.sum(stream.items.known_from <= i))
        history = seen.setdefault(user, [])
        if stream.evaluate[i]:
            baseline.step(history, row, known)
        else:
            baseline.learn(row)
        history.append(row)
    assert result.evaluated == baseline.metrics.count > 50
    assert result.hr == baseline.metrics.hit_rate()
    assert result.ndcg == baseline.metrics.ndcg()
    assert 0 < result.hr < 1  # the stream is not degenerate


def test_excluding_seen_items_matters() -> None:
    stream = synthetic_stream(seed=5)
    (kept,) = run_ranking(stream, [PopularityPeer(40)], k=3, exclude_seen=True)
    (not_kept,) = run_ranking(stream, [PopularityPeer(40)], k=3, exclude_seen=False)
    assert kept.evaluated == not_kept.evaluated
    assert kept.hr != not_kept.hr


def test_feature_rows_equal_feature_dict() -> None:
    items = ItemTable(
        ["1", "2"],
        [[("item", "1"), ("i.genre", "War"), ("i.genre", "Drama")], [("item", "2")]],
        np.zeros(2, np.int64),
    )
    user = [("user", "7"), ("u.age", "25-34")]
    crosses = [["user", "i.genre"], ["u.age", "item"]]
    rows = FeatureRows(items, crosses)
    for r in range(2):
        assert rows.row(rows.user("7", user), r) == feature_dict(user, items.features[r], crosses)
    assert "user×i.genre=7|War" in rows.row(rows.user("7", user), 0)


def test_movielens_stream_is_the_replay_stream(ml100k: Path) -> None:
    stream = load_movielens(ml100k, rows=5000)
    items: list[str] = []
    users: list[str] = []
    flags: list[bool] = []
    data = np.loadtxt(ml100k / "u.data", dtype=np.int64, delimiter="\t")
    data = data[np.argsort(data[:, 3], kind="stable")][:5000]
    for chunk in read_movielens(ml100k):
        batch = chunk.batch
        assert batch is not None
        interactions = batch.kind == 0
        users += [u for u, keep in zip(batch.users, interactions, strict=True) if keep]
        items += [i for i, keep in zip(batch.items, interactions, strict=True) if keep]
        flags += batch.rank_eval[interactions].tolist()
    assert len(users) == 100_000
    assert stream.users == [str(u) for u in data[:, 0]] == users[:5000]
    assert [stream.items.ids[r] for r in stream.item_rows] == items[:5000]
    full_flags = np.array(flags)
    assert (load_movielens(ml100k).evaluate == full_flags).all()
    assert stream.evaluate.sum() == len(range(1000, 5000, 20))
    assert stream.profiles["1"][1:] == [
        ("u.age", "18-24"),
        ("u.gender", "M"),
        ("u.occupation", "technician"),
    ]


def test_freshrank_overrides_parse_and_round_trip_through_toml() -> None:
    import tomllib

    from bench.quality import freshrank_settings, parse_overrides, to_toml
    from runtime.config import Config

    overrides = parse_overrides(
        ["ftrl.alpha=0.05", "training.batch_size=32", "model.crosses=[['user', 'item']]"]
    )
    assert overrides == {
        "ftrl": {"alpha": 0.05},
        "training": {"batch_size": 32},
        "model": {"crosses": [["user", "item"]]},
    }
    settings = freshrank_settings(overrides, "/tmp/x")
    assert tomllib.loads(to_toml(settings)) == settings
    config = Config.from_dict(settings)
    assert (config.ftrl.alpha, config.training.batch_size) == (0.05, 32)
    assert config.state.restore is False


# ----------------------------------------------------------------------------- issue 10 peers


def learn_sequences(peer: Any, sequences: dict[str, list[int]]) -> None:
    """Each user's items in order, interleaved round-robin, through the peer's ``learn``."""
    longest = max(len(s) for s in sequences.values())
    for step in range(longest):
        for user, items in sequences.items():
            if step < len(items):
                peer.learn([Example(user, items[step], 1, float(step)), Example(user, 0, 0, 0.0)])


def test_markov_ranks_the_item_that_always_follows_first() -> None:
    # item 3 always follows item 1; other items follow other items
    sequences = {"a": [1, 3, 5, 2], "b": [4, 1, 3, 6], "c": [2, 5, 1, 3], "d": [6, 4, 2, 1]}
    peer = MarkovChainPeer(8, order=2, decay=0.5)
    learn_sequences(peer, sequences)
    scores = peer.score("d", [], np.arange(8))
    assert int(np.argmax(scores)) == 3
    # T[1, :] = 3 (d=1 in a, b, c) on item 3, 0.5 (d=2) on 5 and on 6: 3 / 4 from user d's
    # last item; nothing leads from 2 (the one before) to 3
    assert scores[3] == pytest.approx(0.75)
    # item 5: 0.5 of T[1, :]'s 4 from 1, and T[2, :] = 1 on 5, 1.5 on 1 (weighted 0.5)
    assert scores[5] == pytest.approx(0.5 / 4 + 0.5 * 1 / 2.5)
    assert peer.score("new user", [], np.arange(8)).tolist() == [0.0] * 8


def brute_force_knn(
    sequences: dict[str, list[int]], user: str, n: int, h: float | None
) -> np.ndarray:
    sets = {u: set(s) for u, s in sequences.items()}
    users_of = np.array([sum(i in s for s in sets.values()) for i in range(n)], float)
    history = sequences[user]
    scores = np.zeros(n)
    for item in set(history):
        age = len(history) - 1 - max(p for p, i in enumerate(history) if i == item)
        weight = 1.0 if h is None else 2.0 ** (-age / h)
        for j in range(n):
            both = sum(item in s and j in s for s in sets.values()) if j != item else 0
            if both:
                scores[j] += weight * both / np.sqrt(users_of[item] * users_of[j])
    return scores


@pytest.mark.parametrize("dense", [True, False])
def test_item_knn_is_recency_weighted_cosine(dense: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers_module, "DENSE_ITEM_LIMIT", 100 if dense else 1)
    sequences = {"a": [0, 1, 2, 1], "b": [1, 3], "c": [2, 3, 4, 0], "d": [4, 1, 0]}
    for h in (None, 2.0):
        peer = ItemKNNPeer(6, h)
        assert (peer.cooccur.dense is not None) == dense
        learn_sequences(peer, sequences)
        for user in sequences:
            got = peer.score(user, [], np.arange(6))
            np.testing.assert_allclose(got, brute_force_knn(sequences, user, 6, h), atol=1e-12)
    assert not np.allclose(
        ItemKNNPeer(6, 2.0).score("a", [], np.arange(6)) + 1,
        brute_force_knn(sequences, "a", 6, None),
    )


def test_blend_divides_each_part_by_its_max_over_allowed_items() -> None:
    sequences = {"a": [0, 1, 2], "b": [1, 2, 3], "c": [2, 3, 0]}
    blend = BlendPeer(MarkovChainPeer(5, 2, 0.5), ItemKNNPeer(5, None))
    learn_sequences(blend, sequences)
    candidates = np.arange(5)
    allowed = np.array([i not in sequences["a"] for i in range(5)])
    markov = blend.markov.score("a", [], candidates)
    knn = blend.knn.score("a", [], candidates)
    expected = 0.5 * markov / markov[allowed].max() + 0.5 * knn / knn[allowed].max()
    np.testing.assert_allclose(blend.score("a", [], candidates), expected)


def test_ease_weights_follow_steck() -> None:
    from scipy import sparse

    x = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1]], float)
    active, weights = ease_weights(sparse.csr_matrix(x), lam=2.0, max_items=10)
    inverse = np.linalg.inv(x.T @ x + 2.0 * np.eye(4))
    expected = np.eye(4) - inverse @ np.diag(1.0 / np.diag(inverse))
    assert active.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(weights, expected, atol=1e-12)
    assert np.diag(weights).tolist() == [0.0] * 4
    top, _ = ease_weights(sparse.csr_matrix(x), lam=2.0, max_items=2)
    assert top.tolist() == [0, 2]  # most users: item 2 (3), then the lowest of 0, 1, 3 (2 each)


def test_ease_peers_share_a_fit_and_weight_recent_items() -> None:
    sequences = {"a": [0, 1, 2, 3], "b": [3, 2, 4], "c": [0, 4, 1]}
    fits = EASEFits()
    plain, recent = EASEPeer(5, 1.0, 100, None, fits), EASEPeer(5, 1.0, 100, 1.0, fits)
    for peer in (plain, recent):
        learn_sequences(peer, sequences)
    first, second = plain.score("a", [], np.arange(5)), recent.score("a", [], np.arange(5))
    assert plain.model is recent.model  # one inverse for both
    assert not np.allclose(first, second)
    _active, weights = plain.model
    np.testing.assert_allclose(first, weights[[0, 1, 2, 3]].sum(axis=0))
    ages = np.array([3, 2, 1, 0])
    np.testing.assert_allclose(second, np.exp2(-ages) @ weights[[0, 1, 2, 3]])


def test_popularity_tie_break_keeps_the_peers_order() -> None:
    sequences = {"a": [0, 1, 4], "b": [2, 2, 2], "c": [2, 3], "d": [1, 3], "e": [1]}
    peer = PopularityTieBreakPeer(MarkovChainPeer(5, 1, 1.0), 5)
    learn_sequences(peer, sequences)
    inner = peer.peer.score("e", [], np.arange(5))
    scores = peer.score("e", [], np.arange(5))
    assert inner[3] == inner[4] == 0.5 and inner[[0, 1, 2]].tolist() == [0.0] * 3
    # ties by popularity (3: 2 users, 4: 1; 2: 4 events, 1: 3, 0: 1), the peer's order first
    assert scores[3] > scores[4] > scores[2] > scores[1] > scores[0]
    assert int(np.argmax(peer.score("new", [], np.arange(5)))) == 2


def test_new_sets_stream_is_the_replay_stream() -> None:
    folder = data_path("movietweetings-100k")
    stream = load_movietweetings(folder)
    users, items = [], []
    for chunk in read_movietweetings(folder):
        batch = chunk.batch
        assert batch is not None
        keep = batch.kind == 0
        users += [u for u, k in zip(batch.users, keep, strict=True) if k]
        items += [i for i, k in zip(batch.items, keep, strict=True) if k]
    assert stream.users == users
    assert [stream.items.ids[r] for r in stream.item_rows] == items
    assert stream.evaluate.sum() == 4000
    assert ("i.genre", "Crime") in stream.items.features[stream.items.ids.index("0002844")]
