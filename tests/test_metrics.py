"""Tests for actors.metrics: each metric against a plain reference implementation."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.metrics import (
    EPS,
    ROCAUC,
    Logloss,
    PopularityBaseline,
    ProgressiveMetrics,
    RankingMetrics,
    RunningMeanCTR,
    TimeDecayedPopularity,
    rank_of,
    ranks_of,
)

SETTINGS = settings(max_examples=150, deadline=None)


# ----------------------------------------------------------------------------- references


def ref_logloss(p: list[float], y: list[float], w: list[float] | None = None) -> float:
    if w is None:
        w = [1.0] * len(p)
    num = den = 0.0
    for pi, yi, wi in zip(p, y, w, strict=True):
        pc = min(max(pi, EPS), 1.0 - EPS)
        num += wi * -(yi * math.log(pc) + (1.0 - yi) * math.log(1.0 - pc))
        den += wi
    return num / den if den > 0 else math.nan


def ref_auc(s: list[float], y: list[int]) -> float:
    pos = [a for a, b in zip(s, y, strict=True) if b == 1]
    neg = [a for a, b in zip(s, y, strict=True) if b == 0]
    if not pos or not neg:
        return math.nan
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def ref_running_mean(y: list[float], w: list[float]) -> tuple[list[float], float]:
    sw = swy = 0.0
    preds = []
    for yi, wi in zip(y, w, strict=True):
        preds.append(swy / sw if sw > 0 else 0.5)
        sw += wi
        swy += wi * yi
    return preds, ref_logloss(preds, y, w)


def ref_rank(scores: list[float], t: int, exclude: list[int]) -> int:
    cands = [i for i in range(len(scores)) if i == t or i not in set(exclude)]
    cands.sort(key=lambda i: (-scores[i], i))
    return cands.index(t)


def split_points(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    bounds = sorted({0, n, *(c % (n + 1) for c in cuts)})
    return list(itertools.pairwise(bounds))


def msgpack_roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    blob = msgpack.packb(state, use_bin_type=True)
    out: dict[str, Any] = msgpack.unpackb(blob, raw=False)
    return out


def close(a: float, b: float, tol: float = 1e-12) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


probs = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
weights = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


# ----------------------------------------------------------------------------- Logloss


@SETTINGS
@given(
    data=st.lists(
        st.tuples(probs, st.sampled_from([0.0, 1.0, 0.3]), weights), min_size=0, max_size=200
    ),
    cuts=st.lists(st.integers(0, 200), max_size=6),
    weighted=st.booleans(),
)
def test_logloss_matches_reference_and_is_split_invariant(
    data: list[tuple[float, float, float]], cuts: list[int], weighted: bool
) -> None:
    p = np.array([d[0] for d in data])
    y = np.array([d[1] for d in data])
    w = np.array([d[2] for d in data]) if weighted else None
    expected = ref_logloss(list(p), list(y), None if w is None else list(w))

    one = Logloss()
    one.update(p, y, w)
    many = Logloss()
    for a, b in split_points(len(data), cuts):
        many.update(p[a:b], y[a:b], None if w is None else w[a:b])

    assert close(one.result(), expected)
    assert close(many.result(), one.result())
    assert one.count == many.count == len(data)


def test_logloss_clipping_and_empty() -> None:
    m = Logloss()
    assert math.isnan(m.result())
    m.update(np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    assert m.result() == pytest.approx(ref_logloss([0.0, 1.0], [1.0, 0.0]), rel=1e-12)
    assert m.result() == pytest.approx(34.5, abs=0.1)
    assert math.isfinite(m.result())
    m.reset()
    assert math.isnan(m.result()) and m.count == 0
    m.update(np.array([0.5]), np.array([1.0]), np.array([0.0]))
    assert math.isnan(m.result())  # zero total weight


def test_logloss_rejects_bad_input() -> None:
    m = Logloss()
    with pytest.raises(ValueError):
        m.update(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ValueError):
        m.update(np.array([0.5]), np.array([2.0]))
    with pytest.raises(ValueError):
        m.update(np.array([0.5, 0.5]), np.array([1.0]))
    with pytest.raises(ValueError):
        m.update(np.array([0.5]), np.array([1.0]), np.array([-1.0]))
    assert m.count == 0


def _each_updated(batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> ProgressiveMetrics:
    m = ProgressiveMetrics(threshold=0.4)
    for p, y, w in batches:
        m.logloss.update(p, y, w)
        m.auc.update(p, y)
        m.thresholded.update(p, y)
        m.mean_ctr.update(y, w)
    return m


@pytest.mark.parametrize("seed", range(4))
def test_one_labelled_pass_adds_what_the_four_updates_add(seed: int) -> None:
    rng = np.random.default_rng(seed)
    batches = []
    for size in rng.integers(0, 300, 6):
        p = np.round(rng.random(size), 1)  # ties, and scores on the threshold
        p[: size // 10] = rng.choice([0.0, 1.0], size // 10)  # clipped to EPS
        batches.append((p, (rng.random(size) < 0.3).astype(float), rng.random(size) * 2))
    one = ProgressiveMetrics(threshold=0.4)
    for p, y, w in batches:
        one.update_labelled(p, y, w)
    each = _each_updated(batches)
    assert one.summary().keys() == each.summary().keys()
    for key, value in each.summary().items():
        if isinstance(value, float) and not math.isnan(value):
            assert one.summary()[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        else:
            assert one.summary()[key] == value or math.isnan(value), key
    assert (one.thresholded.tp, one.thresholded.fp, one.thresholded.fn, one.thresholded.tn) == (
        each.thresholded.tp, each.thresholded.fp, each.thresholded.fn, each.thresholded.tn
    )  # fmt: skip
    assert one.logloss.count == each.logloss.count == one.mean_ctr.count
    assert (one.mean_ctr.sum_w, one.mean_ctr.sum_wy) == pytest.approx(
        (each.mean_ctr.sum_w, each.mean_ctr.sum_wy), rel=1e-12
    )


@pytest.mark.parametrize(
    ("p", "y", "w", "reason"),
    [
        ([0.5, np.nan], [1.0, 0.0], [1.0, 1.0], "p contains NaN"),
        ([0.5, 0.5], [1.0, 0.5], [1.0, 1.0], "labels must be 0 or 1"),
        ([0.5, 0.5], [1.0, 0.0], [1.0, -1.0], "weights must be finite and non-negative"),
        ([0.5, 0.5], [1.0, 0.0], [1.0, np.inf], "weights must be finite and non-negative"),
        ([0.5, 0.5], [1.0], [1.0, 1.0], "2 predictions, 1 labels, 2 weights"),
    ],
)
def test_a_labelled_pass_with_bad_input_adds_nothing(
    p: list[float], y: list[float], w: list[float], reason: str
) -> None:
    m = ProgressiveMetrics()
    m.update_labelled(np.array([0.2]), np.array([1.0]), np.array([1.0]))
    before = m.summary()
    with pytest.raises(ValueError, match=reason):
        m.update_labelled(np.array(p), np.array(y), np.array(w))
    assert m.summary() == before
    assert m.auc.count == 1


# ----------------------------------------------------------------------------- ROCAUC


@SETTINGS
@given(
    data=st.lists(
        st.tuples(
            # a handful of repeated values forces ties; the floats add distinct scores
            st.one_of(st.sampled_from([-1.0, 0.0, 0.25, 0.5, 3.0]), st.floats(-5, 5)),
            st.integers(0, 1),
        ),
        min_size=0,
        max_size=300,
    ),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_rocauc_matches_pairwise_reference(data: list[tuple[float, int]], cuts: list[int]) -> None:
    s = np.array([d[0] for d in data], dtype=np.float64)
    y = np.array([d[1] for d in data], dtype=np.float64)
    expected = ref_auc([d[0] for d in data], [d[1] for d in data])

    one = ROCAUC()
    one.update(s, y)
    many = ROCAUC()
    for a, b in split_points(len(data), cuts):
        many.update(s[a:b], y[a:b])

    assert close(one.result(), expected)
    assert close(many.result(), one.result())
    assert one.count == many.count == len(data)


def test_rocauc_simple_cases() -> None:
    m = ROCAUC()
    assert math.isnan(m.result())
    m.update(np.array([0.1, 0.2]), np.array([1, 1]))
    assert math.isnan(m.result())  # one class only
    m.update(np.array([0.0]), np.array([0]))
    assert m.result() == 1.0
    m.update(np.array([0.2]), np.array([0]))  # ties one positive
    assert m.result() == pytest.approx((2 + 0.5 + 0) / 4)
    m.reset()
    m.update(np.array([1.0, 1.0, 1.0]), np.array([1, 0, 1]))
    assert m.result() == 0.5


def test_rocauc_keeps_float64_resolution() -> None:
    # these scores collapse to one value in float32; the positive is strictly above
    m = ROCAUC()
    m.update(np.array([0.5, 0.5 + 1e-12]), np.array([0, 1]))
    assert m.result() == 1.0


def test_rocauc_rejects_non_binary_labels_and_nan() -> None:
    m = ROCAUC()
    with pytest.raises(ValueError):
        m.update(np.array([0.1]), np.array([0.5]))
    with pytest.raises(ValueError):
        m.update(np.array([np.nan]), np.array([1]))
    assert m.count == 0


def test_rocauc_on_a_million_tied_events_matches_the_binned_formula() -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    y = (rng.random(n) < 0.1).astype(np.float64)
    s = np.round(rng.normal(size=n) + y, 3)  # plenty of ties too
    m = ROCAUC()
    for a in range(0, n, 4096):
        m.update(s[a : a + 4096], y[a : a + 4096])
    auc = m.result()  # its speed is measured in bench/, not asserted here
    # cross-check against the binned computation on the same rounded (hence discrete) scores
    vals, inv = np.unique(s, return_inverse=True)
    pos = np.bincount(inv, weights=y, minlength=len(vals))
    neg = np.bincount(inv, weights=1 - y, minlength=len(vals))
    neg_below = np.cumsum(neg) - neg
    expected = float((pos * (neg_below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))
    assert auc == pytest.approx(expected, rel=1e-12)


def ref_auc_by_ranks(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney from mid-ranks, by a stable sort; twice U in exact integers."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n, n_pos = s.size, int(y.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    starts = np.flatnonzero(np.concatenate(([True], s_sorted[1:] != s_sorted[:-1])))
    sizes = np.diff(np.append(starts, n))
    # a tie group at 0-based [start, start + size) has the 1-based mid-rank
    # start + (size + 1) / 2; doubled, it is an integer
    twice_mid_rank = np.repeat(2 * starts + sizes + 1, sizes)
    twice_u = int(twice_mid_rank[y_sorted].sum()) - n_pos * (n_pos + 1)
    return twice_u / (2 * n_pos * n_neg)


# scores that stress the order: exact ties, signed zeros, subnormals, the ends of [0, 1]
EDGE_SCORES = [0.0, -0.0, 5e-324, 1e-300, 1e-16, 0.5, np.nextafter(0.5, 1.0), 1 - 2**-53, 1.0]
edge_or_any_score = st.one_of(st.sampled_from(EDGE_SCORES), st.floats(0.0, 1.0))


def same_auc(a: float, b: float) -> bool:
    """Equal, nan included: the AUC is exact, not an approximation."""
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("kind", ["random", "ties", "near_0_and_1", "infinite"])
@pytest.mark.parametrize("window", [None, 5_000])
def test_rocauc_equals_the_rank_reference_exactly(kind: str, window: int | None) -> None:
    rng = np.random.default_rng(11)
    n = 40_000
    y = (rng.random(n) < 0.2).astype(np.float64)
    if kind == "random":
        s = 1 / (1 + np.exp(-(rng.normal(size=n) + y)))
    elif kind == "ties":  # 7 distinct scores only
        s = np.round(rng.random(n) * 6 + y) / 7
    elif kind == "near_0_and_1":  # probabilities within a few ulps of 0 and of 1
        s = np.where(rng.random(n) < 0.5, 1e-300 * rng.integers(0, 4, n), 1 - 2**-53 * y)
        s[rng.random(n) < 0.1] = -0.0
    else:
        s = rng.choice([-np.inf, -1.0, 0.0, np.inf], size=n)
    m = ROCAUC(window)
    m.MIN_FOLD, m.MAX_PATCH = 1000, 2000  # folds inside update, reads patch or fold
    lo = 0
    for size in rng.integers(1, 3000, size=40):
        hi = min(n, lo + int(size))
        m.update(s[lo:hi], y[lo:hi])
        first = 0 if window is None else max(0, hi - window)
        if rng.random() < 0.5:
            assert same_auc(m.result(), ref_auc_by_ranks(s[first:hi], y[first:hi]))
        lo = hi
    first = 0 if window is None else max(0, lo - window)
    assert same_auc(m.result(), ref_auc_by_ranks(s[first:lo], y[first:lo]))


@SETTINGS
@given(
    batches=st.lists(
        st.lists(st.tuples(edge_or_any_score, st.integers(0, 1)), max_size=40), max_size=25
    ),
    window=st.integers(1, 60),
    min_fold=st.integers(1, 50),
    max_patch=st.integers(0, 50),
    reads=st.lists(st.booleans(), min_size=25, max_size=25),
)
def test_sliding_window_evicts_exactly_the_oldest_pairs(
    batches: list[list[tuple[float, int]]],
    window: int,
    min_fold: int,
    max_patch: int,
    reads: list[bool],
) -> None:
    m = ROCAUC(window)
    # fold at arbitrary points of the stream; reads either fold or patch the last fold
    m.MIN_FOLD, m.FOLD_FRACTION, m.MAX_PATCH = min_fold, 2, max_patch
    seen_s: list[float] = []
    seen_y: list[int] = []
    for batch, read in zip(batches, reads, strict=False):
        m.update(np.array([b[0] for b in batch]), np.array([b[1] for b in batch]))
        seen_s += [b[0] for b in batch]
        seen_y += [b[1] for b in batch]
        assert m.count <= 2 * window
        if read:
            expected = ref_auc_by_ranks(np.array(seen_s[-window:]), np.array(seen_y[-window:]))
            assert same_auc(m.result(), expected)
            assert same_auc(m.result(), expected)  # the cached value
    expected = ref_auc_by_ranks(np.array(seen_s[-window:]), np.array(seen_y[-window:]))
    assert same_auc(m.result(), expected)
    restored = ROCAUC.from_state(msgpack_roundtrip(m.to_state()))
    assert restored.window == window and same_auc(restored.result(), expected)


def test_result_on_a_full_million_window_sorts_only_new_pairs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = 1_000_000
    rng = np.random.default_rng(5)
    n = window + 200_000
    y = (rng.random(n) < 0.1).astype(np.float64)
    s = 1 / (1 + np.exp(-(rng.normal(size=n) - 2.5 + y)))
    m = ROCAUC(window)
    last = n - 4096
    for a in range(0, last, 3000):
        m.update(s[a : min(a + 3000, last)], y[a : min(a + 3000, last)])
    sorted_sizes: list[int] = []

    def spy(real: Any) -> Any:
        def counting(a: Any, *args: Any, **kwargs: Any) -> Any:
            sorted_sizes.append(int(np.size(a)))
            return real(a, *args, **kwargs)

        return counting

    monkeypatch.setattr(np, "sort", spy(np.sort))
    monkeypatch.setattr(np, "argsort", spy(np.argsort))
    m.result()  # pairs pending since the last fold inside update, never the whole window
    assert max(sorted_sizes, default=0) <= max(ROCAUC.MIN_FOLD, window // ROCAUC.FOLD_FRACTION)
    sorted_sizes.clear()
    m.update(s[last:], y[last:])
    auc = m.result()
    assert 0 < max(sorted_sizes) <= 4096  # a read after one batch sorts that batch only
    sorted_sizes.clear()
    assert m.result() == auc and sorted_sizes == []  # cached until the next update
    monkeypatch.undo()
    assert auc == ref_auc_by_ranks(s[n - window :], y[n - window :])


def test_rocauc_loads_states_of_the_old_layout() -> None:
    # the previous version wrote its whole buffer: up to 2 * window pairs, the oldest of
    # them already outside the window
    rng = np.random.default_rng(3)
    s = np.round(rng.random(1500), 2)
    y = (rng.random(1500) < s).astype(np.uint8)
    for window in (700, None):
        old = {"scores": s.astype("<f8").tobytes(), "labels": y.tobytes(), "window": window}
        m = ROCAUC.from_state(msgpack_roundtrip(old))
        kept = slice(-700, None) if window else slice(None)
        assert m.window == window
        assert m.result() == ref_auc_by_ranks(s[kept], y[kept])
        m.update(s[:300], y[:300])  # and it goes on from there
        s_all, y_all = np.concatenate((s, s[:300])), np.concatenate((y, y[:300]))
        kept = slice(-700, None) if window else slice(None)
        assert m.result() == ref_auc_by_ranks(s_all[kept], y_all[kept])


def test_rocauc_rejects_corrupt_states_with_a_reason() -> None:
    good = ROCAUC(10)
    good.update(np.array([0.2, 0.7]), np.array([0, 1]))
    state = good.to_state()
    with pytest.raises(ValueError, match="lacks"):
        ROCAUC.from_state({"labels": state["labels"]})
    with pytest.raises(ValueError, match="differ in length"):
        ROCAUC.from_state({**state, "labels": b"\x01"})
    with pytest.raises(ValueError, match="NaN"):
        ROCAUC.from_state({**state, "scores": np.array([np.nan, 1.0]).tobytes()})
    with pytest.raises(ValueError, match="0/1"):
        ROCAUC.from_state({**state, "labels": b"\x01\x02"})
    with pytest.raises(ValueError, match="window"):
        ROCAUC.from_state({**state, "window": 0})


# ----------------------------------------------------------------------------- RunningMeanCTR


@SETTINGS
@given(
    data=st.lists(
        st.tuples(st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 0.5, 1.0, 2.5])),
        min_size=0,
        max_size=200,
    ),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_running_mean_ctr_matches_loop(data: list[tuple[float, float]], cuts: list[int]) -> None:
    y = np.array([d[0] for d in data])
    w = np.array([d[1] for d in data])
    preds, expected = ref_running_mean(list(y), list(w))

    one = RunningMeanCTR()
    assert np.array_equal(one.predictions(y, w), np.array(preds))
    one.update(y, w)
    many = RunningMeanCTR()
    for a, b in split_points(len(data), cuts):
        many.update(y[a:b], w[a:b])

    assert close(one.result(), expected)
    assert close(many.result(), one.result())
    assert one.count == many.count == len(data)


def test_running_mean_ctr_unweighted_by_hand() -> None:
    m = RunningMeanCTR()
    m.update(np.array([1.0, 0.0, 1.0]))
    # predictions 0.5, 1.0 (clipped), 0.5
    expected = (math.log(2) - math.log(1.0 - (1.0 - EPS)) + math.log(2)) / 3
    assert m.result() == pytest.approx(expected, rel=1e-9)
    assert m.mean == pytest.approx(2 / 3)
    m.reset()
    assert math.isnan(m.result()) and m.mean == 0.5


# ----------------------------------------------------------------------------- rank_of


@SETTINGS
@given(
    scores=st.lists(st.integers(-3, 3), min_size=1, max_size=40),
    t=st.integers(0, 39),
    exclude=st.lists(st.integers(0, 39), max_size=15),
    as_float=st.booleans(),
)
def test_rank_of_matches_sort_reference(
    scores: list[int], t: int, exclude: list[int], as_float: bool
) -> None:
    n = len(scores)
    t %= n
    exclude = [e % n for e in exclude]  # duplicates and the target itself may occur
    arr = np.array(scores, dtype=np.float64 if as_float else np.int64)
    expected = ref_rank([float(v) for v in scores], t, exclude)
    assert rank_of(arr, t, np.array(exclude, dtype=np.int64)) == expected
    if not exclude:
        assert rank_of(arr, t) == expected
    many = np.vstack([arr, -arr, np.where(arr > arr[t], np.nan, arr)])
    want = [rank_of(row, t, np.array(exclude, dtype=np.int64)) for row in many]
    assert ranks_of(many, t, np.array(exclude, dtype=np.int64)).tolist() == want


def test_rank_of_hand_examples() -> None:
    s = np.array([0.3, 0.9, 0.3, 0.1, 0.3])
    assert rank_of(s, 1) == 0
    assert rank_of(s, 0) == 1  # below 0.9, first of the tied 0.3s
    assert rank_of(s, 2) == 2  # 0.9 and the tied 0.3 at row 0
    assert rank_of(s, 4) == 3
    assert rank_of(s, 3) == 4
    assert rank_of(s, 4, np.array([1, 0])) == 1
    assert rank_of(s, 4, np.array([4, 4, 2])) == 2  # target never excluded
    assert rank_of(s, 3, np.array([], dtype=np.int64)) == 4


def test_rank_of_nan_and_errors() -> None:
    s = np.array([np.nan, 0.5, 0.2])
    assert rank_of(s, 1) == 0  # NaN others rank below
    assert rank_of(s, 0) == 2  # a NaN target ranks last
    assert rank_of(s, 0, np.array([1])) == 1
    assert rank_of(s, 0, np.array([0, 1, 0])) == 1  # the NaN target itself is not excluded
    with pytest.raises(IndexError):
        rank_of(s, 3)
    assert ranks_of(np.vstack([s, s]), 0, np.array([0, 1])).tolist() == [1, 1]
    with pytest.raises(IndexError):
        ranks_of(s[None, :], 0, np.array([3]))
    with pytest.raises(IndexError):
        rank_of(s, 0, np.array([-1]))
    with pytest.raises(IndexError):
        rank_of(s, 0, np.array([3]))


# ----------------------------------------------------------------------------- RankingMetrics


def test_ranking_metrics_hand_computed() -> None:
    ranks: list[int | None] = [0, 2, 3, None, 1]
    m = RankingMetrics(k=3)
    assert math.isnan(m.hit_rate()) and math.isnan(m.ndcg())
    for r in ranks:
        m.update(r)
    assert m.count == 5
    assert m.hit_rate() == pytest.approx(3 / 5)
    assert m.ndcg() == pytest.approx((1.0 + 0.5 + 1.0 / math.log2(3)) / 5)

    b = RankingMetrics(k=3)
    b.update_many(np.array([0, 2, 3, -1, 1]))
    assert b.count == m.count and b.hits == m.hits
    assert b.ndcg() == pytest.approx(m.ndcg(), rel=1e-15)

    m.reset()
    assert m.count == 0 and m.k == 3


def test_ranking_metrics_k1_and_errors() -> None:
    m = RankingMetrics(k=1)
    m.update_many(np.array([0, 0, 1, -1], dtype=np.int32))
    assert m.hit_rate() == 0.5 and m.ndcg() == 0.5
    m.update_many(np.array([], dtype=np.int64))
    assert m.count == 4
    with pytest.raises(ValueError):
        m.update(-1)
    with pytest.raises(ValueError):
        m.update_many(np.array([-2]))
    with pytest.raises(TypeError):
        m.update_many(np.array([0.5]))
    with pytest.raises(ValueError):
        RankingMetrics(k=0)


# ----------------------------------------------------------------------------- popularity


events_strategy = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 30), st.integers(0, 8)),  # user, item, growth
    min_size=1,
    max_size=120,
)


@SETTINGS
@given(events=events_strategy, k=st.integers(1, 5))
def test_popularity_matches_dict_reference(events: list[tuple[int, int, int]], k: int) -> None:
    pop = PopularityBaseline(k=k)
    ref_metrics = RankingMetrics(k=k)
    metrics = RankingMetrics(k=k)
    counts: Counter[int] = Counter()
    seen: dict[int, list[int]] = {}
    n_items = 5
    for user, item, grow in events:
        n_items += grow % 3  # the catalog grows now and then
        user_seen = seen.setdefault(user, [])
        seen_arr = np.array(user_seen, dtype=np.int64)

        # reference: sort candidate rows by (-count, row)
        if item < n_items:
            cands = [i for i in range(n_items) if i == item or i not in set(user_seen)]
            cands.sort(key=lambda i: (-counts[i], i))
            expected: int | None = cands.index(item)
            top = [i for i in cands if i not in set(user_seen)][:k]
        else:
            expected = None
            top = [i for i in range(n_items) if i not in set(user_seen)]
            top.sort(key=lambda i: (-counts[i], i))
            top = top[:k]

        rank = pop.evaluate(seen_arr, item, n_items)
        assert rank == expected
        assert pop.recommend(seen_arr, n_items).tolist() == top
        metrics.update(rank)
        ref_metrics.update(expected)
        pop.learn(item)

        counts[item] += 1
        user_seen.append(item)

    assert pop.n_events == len(events)
    assert metrics.hits == ref_metrics.hits and metrics.count == ref_metrics.count
    assert metrics.ndcg() == ref_metrics.ndcg()
    for i in range(40):
        assert pop.count_of(i) == counts[i]


def test_popularity_step_and_hand_example() -> None:
    pop = PopularityBaseline(k=2)
    assert pop.evaluate(np.array([], dtype=np.int64), 2, 4) == 2  # all zero: row order
    for item in [3, 3, 1, 3, 1, 0]:
        pop.learn(item)
    # counts: 0:1, 1:2, 2:0, 3:3 -> order 3, 1, 0, 2
    none = np.array([], dtype=np.int64)
    assert [pop.evaluate(none, i, 4) for i in range(4)] == [2, 1, 3, 0]
    assert pop.evaluate(np.array([3]), 0, 4) == 1
    assert pop.evaluate(np.array([3, 0, 99]), 0, 4) == 1  # target kept, 99 not a row
    assert pop.evaluate(none, 7, 4) is None  # not in the catalog yet
    # never-seen rows tie at 0 and follow by row: 3, 1, 0, 2, 4, 5, 6, 7, 8
    assert pop.evaluate(none, 7, 9) == 7
    assert pop.recommend(none, 9).tolist() == [3, 1]
    assert pop.recommend(np.array([3]), 9).tolist() == [1, 0]

    stepper = PopularityBaseline(k=2)
    ranks = [stepper.step(none, i, 4) for i in [3, 3, 1, 2]]
    assert ranks == [3, 0, 2, 3]
    assert stepper.metrics.count == 4 and stepper.metrics.hits == 1
    stepper.reset()
    assert stepper.n_events == 0 and stepper.metrics.count == 0
    assert stepper.evaluate(none, 0, 4) == 0


def test_time_decayed_matches_reference() -> None:
    rng = np.random.default_rng(7)
    half_life = 3600.0
    tdp = TimeDecayedPopularity(half_life, k=5)
    history: dict[int, list[float]] = {}
    ts = 1.7e9
    n_items = 20
    for _ in range(300):
        ts += float(rng.exponential(600.0))
        item = int(rng.integers(0, n_items))
        seen = rng.choice(n_items, size=int(rng.integers(0, 4)), replace=False)

        def decayed(i: int, at: float = ts) -> float:
            return sum(2.0 ** (-(at - tj) / half_life) for tj in history.get(i, []))

        cands = [i for i in range(n_items) if i == item or i not in set(seen.tolist())]
        cands.sort(key=lambda i: (-decayed(i), i))
        assert tdp.evaluate(seen, item, n_items, ts) == cands.index(item)
        top = [i for i in cands if i not in set(seen.tolist())][:5]
        assert tdp.recommend(seen, n_items, ts).tolist() == top
        probe = int(rng.integers(0, n_items))
        assert tdp.score(probe, ts) == pytest.approx(decayed(probe), rel=1e-9, abs=1e-300)
        tdp.learn(item, ts)
        history.setdefault(item, []).append(ts)


def test_time_decayed_survives_years_of_timestamps() -> None:
    tdp = TimeDecayedPopularity(half_life_s=1.0, k=3)
    t0 = 1.0e9
    for _ in range(1000):
        tdp.learn(0, t0)  # heavily popular, but ten years ago
    t1 = t0 + 10 * 365 * 86400.0  # ~3e8 half-lives later
    tdp.learn(2, t1)
    tdp.learn(1, t1 + 1.0)
    none = np.array([], dtype=np.int64)
    assert [tdp.evaluate(none, i, 4, t1 + 2.0) for i in range(4)] == [2, 0, 1, 3]
    assert tdp.score(1, t1 + 1.0) == pytest.approx(1.0)
    assert tdp.score(2, t1 + 1.0) == pytest.approx(0.5)
    assert tdp.score(0, t1) == 0.0  # underflows, as it should
    state = msgpack_roundtrip(tdp.to_state())
    assert np.all(np.isfinite(np.frombuffer(state["log2"], dtype="<f8")))


def test_time_decayed_ties_and_step() -> None:
    tdp = TimeDecayedPopularity(half_life_s=10.0, k=2)
    none = np.array([], dtype=np.int64)
    assert tdp.step(none, 1, 3, 0.0) == 1
    assert tdp.step(none, 2, 3, 0.0) == 2  # row 1 has weight 1, rows 0 and 2 none yet
    # rows 1 and 2 now tie exactly; lower row first
    assert tdp.evaluate(none, 2, 3, 5.0) == 1
    tdp.learn(0, 10.0)  # one event, one half-life later: 1 vs 0.5 -> 0 leads
    assert tdp.evaluate(none, 0, 3, 10.0) == 0
    assert tdp.metrics.count == 2 and tdp.metrics.hits == 1
    with pytest.raises(ValueError):
        TimeDecayedPopularity(0.0)
    with pytest.raises(ValueError):
        tdp.learn(0, math.inf)
    tdp.reset()
    assert tdp.t0 is None and tdp.n_events == 0
    assert tdp.evaluate(none, 2, 3, 0.0) == 2


# ----------------------------------------------------------------------------- state round trips


def test_state_roundtrips_through_msgpack() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(np.float64)
    w = rng.random(500)
    ranks = rng.integers(-1, 30, size=50)

    def feed(objs: dict[str, Any], lo: int, hi: int) -> None:
        objs["ll"].update(p[lo:hi], y[lo:hi], w[lo:hi])
        objs["auc"].update(p[lo:hi], y[lo:hi])
        objs["ctr"].update(y[lo:hi], w[lo:hi])
        objs["rank"].update_many(ranks[lo // 10 : hi // 10])
        for i in range(lo, hi):
            item = (i * 7) % 25
            objs["pop"].step(np.array([i % 3]), item, 25)
            objs["tdp"].step(np.array([i % 3]), item, 25, 1e9 + 60.0 * i)

    def make() -> dict[str, Any]:
        return {
            "ll": Logloss(),
            "auc": ROCAUC(),
            "ctr": RunningMeanCTR(),
            "rank": RankingMetrics(k=5),
            "pop": PopularityBaseline(k=5),
            "tdp": TimeDecayedPopularity(120.0, k=5),
        }

    b = make()
    feed(b, 0, 300)
    restored = {
        name: type(obj).from_state(msgpack_roundtrip(obj.to_state())) for name, obj in b.items()
    }
    for name in b:
        assert restored[name].to_state() == msgpack_roundtrip(b[name].to_state())
    # continue both the original and the restored objects with the same stream
    feed(b, 300, 500)
    feed(restored, 300, 500)

    assert restored["ll"].result() == b["ll"].result()
    assert restored["auc"].result() == b["auc"].result()
    assert restored["ctr"].result() == b["ctr"].result()
    assert restored["rank"].ndcg() == b["rank"].ndcg()
    for name in ("pop", "tdp"):
        assert restored[name].metrics.to_state() == b[name].metrics.to_state()
        assert restored[name].to_state() == b[name].to_state()


def test_empty_states_roundtrip() -> None:
    for obj in (
        Logloss(),
        ROCAUC(),
        RunningMeanCTR(),
        RankingMetrics(),
        PopularityBaseline(),
        TimeDecayedPopularity(60.0),
    ):
        back = type(obj).from_state(msgpack_roundtrip(obj.to_state()))
        assert back.to_state() == obj.to_state()


def test_windowed_auc_is_the_exact_auc_of_the_newest_pairs() -> None:
    rng = np.random.default_rng(7)
    scores = np.round(rng.normal(size=5000), 1)  # ties on purpose
    labels = (rng.random(5000) < 1 / (1 + np.exp(-scores))).astype(int)
    windowed = ROCAUC(window=700)
    for lo in range(0, 5000, 333):
        windowed.update(scores[lo : lo + 333], labels[lo : lo + 333])
        hi = min(lo + 333, 5000)
        exact = ROCAUC()
        exact.update(scores[max(0, hi - 700) : hi], labels[max(0, hi - 700) : hi])
        assert windowed.result() == pytest.approx(exact.result(), abs=1e-12)
        assert windowed.count <= 2 * 700  # memory stays bounded
    restored = ROCAUC.from_state(windowed.to_state())
    assert restored.window == 700 and restored.result() == windowed.result()
