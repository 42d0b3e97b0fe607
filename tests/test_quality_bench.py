"""The shared protocol driver of bench/quality.py: deterministic, and the same protocol as
freshrank's own replay (checked against PopularityBaseline and read_movielens)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from actors.metrics import PopularityBaseline
from actors.readers import protocol_flags, read_movielens
from bench.peers import FeatureRows, PopularityPeer, feature_dict
from bench.protocol import (
    Example,
    Feature,
    ItemTable,
    RankingStream,
    load_movielens,
    negative_rows,
    run_ranking,
)


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
