"""End-to-end replays through the actor pipeline, and the wire format of its messages.

The replays use the real data sets in ``../shared/data`` (see its README) and skip
when they are absent.  They check the design's promises: in synchronous mode the
result does not depend on the number of learner shards, forcing every message
through msgpack changes nothing, and the model learns (beats a baseline).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from actors.batching import batch_from_events
from actors.events import Event, validate_event
from actors.features import score_items
from actors.model import StreamPosition
from actors.readers import read_ctr_tsv, read_movielens
from runtime.codec import CodecError, decode_message, encode_message, message_types
from runtime.config import Config
from runtime.messages import (
    DeadLetters,
    EventBatch,
    EventScores,
    FeatureBatch,
    GradBatch,
    RecommendReply,
    RecommendRequest,
    UserRecommendations,
    WeightDelta,
    WeightSnapshot,
)
from runtime.replay import replay
from runtime.system import System

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML_DATA = DATA / "ml-100k" / "u.data"
CRITEO_TRAIN = DATA / "criteo-sample" / "train.csv"
INTERACTIONS = 12_000
TOL = 1e-9


# --------------------------------------------------------------------------- replays


@pytest.fixture(scope="module")
def ml_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first INTERACTIONS ratings of ML-100K (in time order) next to the real u.item/u.user."""
    if not ML_DATA.exists():
        pytest.skip(f"MovieLens 100K not found at {ML_DATA} (see ../shared/data/README.md)")
    folder = tmp_path_factory.mktemp("ml-subset")
    rows = np.loadtxt(ML_DATA, dtype=np.int64, delimiter="\t", ndmin=2)
    rows = rows[np.argsort(rows[:, 3], kind="stable")][:INTERACTIONS]
    np.savetxt(folder / "u.data", rows, fmt="%d", delimiter="\t")
    for name in ("u.item", "u.user"):
        shutil.copy(ML_DATA.parent / name, folder / name)
    return folder


def config(shards: int, roundtrip: bool = False, **ftrl: float) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 18},
            "ftrl": dict(ftrl),
            "training": {"shards": shards, "sync": True},
            "queues": {"codec_roundtrip": roundtrip},
            "state": {"restore": False},
            "ingest": {"dead_letter_path": ""},
            "http": {"enabled": False},
        }
    )


@dataclasses.dataclass
class Outcome:
    report: dict[str, Any]
    probe_users: list[str]
    z: np.ndarray
    n: np.ndarray
    user_scores: np.ndarray  # ranker scores of probe_users against the whole catalog
    probe_logits: np.ndarray  # store.logits on a fixed CSR batch of touched coordinates
    recommendations: list[list[str]]
    stats: dict[str, Any]


def probe_batch(n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    touched = np.flatnonzero(n)
    rng = np.random.default_rng(0)
    indices = rng.choice(touched, 4000)
    values = rng.normal(size=4000)
    indptr = np.arange(0, 4001, 20, dtype=np.int64)
    return indptr, indices, values


async def replay_movielens(folder: Path, cfg: Config) -> Outcome:
    async with System(cfg) as system:
        report = await replay(system, read_movielens(folder))
        # every 5th user seen so far (each has a stored profile: age, gender, occupation)
        probe_users = sorted(system.users.profiles, key=int)[::5]
        scores = []
        for user in probe_users:
            features, _ = system.ranker.user_features(user)
            # id, age, gender, occupation, and the recent items (model.history)
            recent = len(system.users.recent.get(user, ()))
            assert features.rows == 1 and features.ns.size == 4 + recent
            scores.append(score_items(system.space, features, system.catalog, system.store.w))
        recommendations = [
            [entry["item"] for entry in await system.recommend(user, k=10)] for user in probe_users
        ]
        probe = probe_batch(system.store.n)
        return Outcome(
            report=report,
            probe_users=probe_users,
            z=system.store.z.copy(),
            n=system.store.n.copy(),
            user_scores=np.array(scores),
            probe_logits=system.store.logits(*probe),
            recommendations=recommendations,
            stats=system.statistics(),
        )


_REFERENCE: dict[str, Outcome] = {}


async def reference(folder: Path) -> Outcome:
    """The plain run (1 shard, no codec round trip), computed once per test session."""
    if "ml" not in _REFERENCE:
        _REFERENCE["ml"] = await replay_movielens(folder, config(shards=1))
    return _REFERENCE["ml"]


def assert_same_outcome(got: Outcome, want: Outcome) -> None:
    assert got.probe_users == want.probe_users
    np.testing.assert_allclose(got.z, want.z, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.n, want.n, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.user_scores, want.user_scores, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.probe_logits, want.probe_logits, rtol=0, atol=TOL)
    assert got.recommendations == want.recommendations
    for key in ("events", "rank_evaluated", "hr@10", "ndcg@10", "baseline_popularity_hr@10"):
        assert got.report[key] == want.report[key], key


def check_learned(outcome: Outcome) -> None:
    report = outcome.report
    assert report["events"] == INTERACTIONS
    assert report["rejected"] == 0
    # protocol: after 20% warm-up every 20th interaction is ranked before it is learned
    assert report["rank_evaluated"] == (INTERACTIONS - INTERACTIONS // 5) // 20
    assert report["hr@10"] > 0 and report["ndcg@10"] > 0
    assert outcome.stats["trainer"]["events"] == INTERACTIONS
    assert outcome.stats["catalog_items"] == 1682
    assert np.count_nonzero(outcome.n) > 10_000
    assert len(outcome.probe_users) >= 20
    assert np.ptp(outcome.user_scores) > 0.1
    assert np.count_nonzero(outcome.probe_logits) == outcome.probe_logits.size


async def test_four_shards_equal_one_shard(ml_subset: Path) -> None:
    one = await reference(ml_subset)
    four = await replay_movielens(ml_subset, config(shards=4))
    check_learned(one)
    assert four.report["shards"] == 4
    # every shard really owned and applied part of the model
    learners = four.stats["learners"]
    assert [s["shard"] for s in learners] == [0, 1, 2, 3]
    assert all(s["updates"] > 0 for s in learners)
    assert sum(s["updates"] for s in learners) == one.stats["learners"][0]["updates"]
    assert_same_outcome(four, one)


@pytest.mark.parametrize("shards", [1, 3])
async def test_codec_roundtrip_changes_nothing(ml_subset: Path, shards: int) -> None:
    plain = await reference(ml_subset)
    wired = await replay_movielens(ml_subset, config(shards=shards, roundtrip=True))
    queues = wired.stats["queues"]
    # every message really crossed msgpack
    assert queues["events"]["bytes"] > 0 and queues["features"]["bytes"] > 0
    assert all(queues[f"grads.{k}"]["bytes"] > 0 for k in range(shards))
    assert plain.stats["queues"]["events"]["bytes"] == 0
    check_learned(wired)
    assert_same_outcome(wired, plain)


async def test_criteo_sample_beats_running_mean_ctr() -> None:
    if not CRITEO_TRAIN.exists():
        pytest.skip(f"Criteo sample not found at {CRITEO_TRAIN} (see ../shared/data/README.md)")
    cfg = config(shards=2)
    async with System(cfg) as system:
        chunks = read_ctr_tsv(CRITEO_TRAIN, criteo=True, batch_size=256)
        report = await replay(system, chunks)
        summary = system.metrics.summary()
    assert report["events"] == 7200
    assert summary["labelled"] == 7200
    baseline = summary["baseline_mean_ctr_logloss"]
    assert 0.3 < baseline < 0.7
    assert summary["logloss"] < baseline - 0.02
    assert summary["auc"] > 0.6


# --------------------------------------------------------------------------- codec

CODEC = settings(max_examples=100, deadline=None, derandomize=True)

texts = st.lists(st.text(max_size=12), max_size=6)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def arrays(dtype: Any, min_side: int = 0, max_side: int = 12, dims: int = 1) -> Any:
    shape = hnp.array_shapes(min_dims=dims, max_dims=dims, min_side=min_side, max_side=max_side)
    return hnp.arrays(np.dtype(dtype), shape)


@st.composite
def event_batches(draw: Any) -> EventBatch:
    cols = draw(st.integers(0, 3))
    return EventBatch(
        seq=draw(int64s),
        users=draw(texts),
        items=draw(texts),
        kind=draw(arrays(np.uint8)),
        ts=draw(arrays(np.float64)),
        label=draw(arrays(np.int8)),
        weight=draw(arrays(np.float64)),
        rank_eval=draw(arrays(np.bool_)),
        created_at=draw(st.floats(allow_nan=False)),
        namespaces=draw(texts),
        feat_ptr=draw(arrays(np.int64)),
        feat_ns=draw(arrays(np.uint32)),
        feat_data=draw(arrays(np.uint8, max_side=40)),
        feat_off=draw(arrays(np.int64)),
        feat_x=draw(arrays(np.float64)),
        col_names=draw(st.lists(st.text(max_size=8), min_size=cols, max_size=cols)),
        col_data=draw(st.lists(arrays(np.uint8), min_size=cols, max_size=cols)),
        col_off=draw(st.lists(arrays(np.int64), min_size=cols, max_size=cols)),
    )


@st.composite
def feature_batches(draw: Any) -> FeatureBatch:
    return FeatureBatch(
        seq=draw(int64s),
        users=draw(texts),
        item_rows=draw(arrays(np.int64)),
        ts=draw(arrays(np.float64)),
        label=draw(arrays(np.int8)),
        weight=draw(arrays(np.float64)),
        rank_eval=draw(arrays(np.bool_)),
        user_ptr=draw(arrays(np.int64)),
        user_ns=draw(arrays(np.uint32)),
        user_raw=draw(arrays(np.uint32)),
        user_x=draw(arrays(np.float64)),
        created_at=draw(st.floats(allow_nan=False)),
        dense=draw(arrays(np.uint32, dims=2, max_side=5)),
    )


MESSAGES = {
    EventBatch: event_batches(),
    FeatureBatch: feature_batches(),
    GradBatch: st.builds(
        GradBatch,
        seq=int64s,
        shard=st.integers(0, 1023),
        index=arrays(np.int64),
        grad=arrays(np.float64),
        trainer=st.text(max_size=20),
        created_at=st.floats(allow_nan=False),
    ),
    WeightDelta: st.builds(
        WeightDelta,
        seq=int64s,
        shard=st.integers(0, 1023),
        trainer=st.text(max_size=20),
        index=arrays(np.int64),
        w=arrays(np.float64),
        created_at=st.floats(allow_nan=False),
    ),
    WeightSnapshot: st.builds(
        WeightSnapshot,
        shard=st.integers(0, 1023),
        shards=st.integers(1, 1024),
        settings=st.text(max_size=40),
        generation=int64s,
        slot=st.integers(0, 1),
        piece=st.integers(0, 1000),
        pieces=st.integers(1, 1000),
        covers=int64s,
        index=arrays(np.int64),
        w=arrays(np.float64),
        z=arrays(np.float64),
        n=arrays(np.float64),
        factor_index=arrays(np.int64),
        factor_v=arrays(np.float64, dims=2, max_side=5),
        factor_n=arrays(np.float64),
        created_at=st.floats(allow_nan=False),
    ),
    DeadLetters: st.builds(
        DeadLetters,
        source=st.text(max_size=20),
        reasons=texts,
        payloads=texts,
        ts=st.floats(allow_nan=True, allow_infinity=True),
    ),
    UserRecommendations: st.builds(
        UserRecommendations,
        user=st.text(max_size=20),
        items=texts,
        scores=st.lists(st.floats(allow_nan=False), max_size=6),
        seq=int64s,
        trainer=st.text(max_size=20),
        events_partition=st.integers(-1, 1023),
        events_offset=int64s,
        weights_offsets=st.lists(int64s, max_size=6),
        items_offsets=st.lists(int64s, max_size=6),
        created_at=st.floats(allow_nan=False),
    ),
    EventScores: st.builds(
        EventScores,
        seq=int64s,
        trainer=st.text(max_size=20),
        events_partition=st.integers(-1, 1023),
        events_offset=int64s,
        users=texts,
        items=texts,
        labels=arrays(np.float64),
        scores=arrays(np.float64),
        ts=arrays(np.float64),
        created_at=st.floats(allow_nan=False),
    ),
    RecommendRequest: st.builds(
        RecommendRequest,
        correlation_id=st.text(max_size=32),
        user=st.text(max_size=20),
        k=st.integers(-5, 10_000),
        deadline=st.floats(allow_nan=False),
    ),
    RecommendReply: st.builds(
        RecommendReply,
        correlation_id=st.text(max_size=32),
        user=st.text(max_size=20),
        items=texts,
        scores=st.lists(st.floats(allow_nan=False), max_size=6),
        error=st.text(max_size=40),
        ranker=st.text(max_size=20),
    ),
}


def test_every_message_type_has_a_strategy() -> None:
    registered = {cls for cls in message_types().values() if cls.__module__ == "runtime.messages"}
    assert registered == set(MESSAGES)


def assert_same_value(got: Any, want: Any, where: str) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), where
        assert got.dtype == want.dtype, where
        assert got.shape == want.shape, where
        assert got.tobytes() == want.tobytes(), where  # bit for bit, NaN payloads included
        assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), where
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_value(g, w, f"{where}[{k}]")
    elif isinstance(want, float):
        assert isinstance(got, float), where
        assert (math.isnan(got) and math.isnan(want)) or got == want, where
    else:
        assert type(got) is type(want) and got == want, where


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
def test_message_codec_round_trip(cls: Any) -> None:
    @CODEC
    @given(MESSAGES[cls])
    def check(message: Any) -> None:
        decoded = decode_message(encode_message(message))
        assert type(decoded) is cls
        for f in dataclasses.fields(message):
            assert_same_value(getattr(decoded, f.name), getattr(message, f.name), f.name)

    check()


def real_event_batch() -> EventBatch:
    events = [
        validate_event(
            {
                "user": f"u{k}",
                "item": f"m{k % 7}",
                "ts": 874724710.0 + k,
                "label": k % 2 if k % 3 else None,
                "user_features": {"age": "25-34", "score": 0.5 * k},
                "context": {"device": "mobile", "tags": ["a", "ünï"]},
            }
        )
        for k in range(12)
    ]
    events.append(validate_event({"item": "m99", "item_features": {"genre": ["drama", "war"]}}))
    return batch_from_events(events, np.arange(13) % 4 == 0, seq=17)


def test_corrupt_or_truncated_event_batch_raises_codec_error() -> None:
    batch = real_event_batch()
    data = encode_message(batch)
    decoded = decode_message(data)
    assert isinstance(decoded, EventBatch)
    assert_same_value(decoded.feat_x, batch.feat_x, "feat_x")
    # every truncation is incomplete msgpack
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            decode_message(data[:cut])
    with pytest.raises(CodecError):
        decode_message(data + b"\x00")  # trailing bytes
    # random corruption: either a CodecError or some decoded message, never another exception
    rng = np.random.default_rng(1234)
    errors = 0
    trials = 3000
    for trial in range(trials):
        buf = bytearray(data)
        if trial % 3 == 0:
            for pos in rng.integers(0, len(buf), int(rng.integers(1, 4))):
                buf[pos] = int(rng.integers(0, 256))
        elif trial % 3 == 1:
            pos = int(rng.integers(0, len(buf)))
            del buf[pos : pos + int(rng.integers(1, 9))]
        else:
            pos = int(rng.integers(0, len(buf)))
            buf[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
        try:
            decode_message(bytes(buf))
        except CodecError:
            errors += 1
    assert errors > trials // 3


def test_rank_flags_keep_every_nth_interaction_no_closer_than_the_gap() -> None:
    stream = StreamPosition()
    events = [Event("u", "i")] * 50 + [Event(None, "i")] * 5 + [Event("u", "i")] * 50
    flags = stream.rank_flags(events, every=3, min_gap=7)
    ordinals = np.cumsum([e.user is not None for e in events])[flags]
    assert ordinals.tolist() == [9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99]
    assert stream.last_ranked == 99
    # a gap no wider than every changes nothing: every 3rd interaction
    again = StreamPosition()
    assert np.array_equal(
        again.rank_flags(events, every=3, min_gap=3), every_nth_interaction(events, 3)
    )
    restored = StreamPosition()
    restored.load_state({**stream.to_state()})
    assert restored.rank_flags(events[:20], every=3, min_gap=7).nonzero()[0].tolist() == [7, 16]


def every_nth_interaction(events: list[Event], every: int) -> np.ndarray:
    ordinals = np.cumsum([e.user is not None for e in events])
    return np.array([e.user is not None for e in events]) & (ordinals % every == 0)


async def test_ingest_ranks_about_rank_eval_rows_catalog_rows_per_interaction() -> None:
    items = [{"item": f"i{i}", "item_features": {"genre": f"g{i % 7}"}} for i in range(300)]
    events = [{"user": f"u{e % 40}", "item": f"i{(e * 7) % 300}"} for e in range(3000)]
    counts = {}
    for rows in (2.0, 0.0):
        settings = {"training": {"rank_eval_every": 20, "rank_eval_rows": rows}}
        async with System(Config.from_dict(settings)) as system:
            await system.ingest(items)
            await system.ingest(events)
            counts[rows] = system.statistics()["trainer"]["metrics"]["rank_evaluated"]
    # 300 rows / 2 per interaction: a gap of 150, so every 160th interaction (a multiple of 20)
    assert counts == {2.0: 3000 // 160, 0.0: 3000 // 20}
