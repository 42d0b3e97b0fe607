"""Precision, recall and F1 (actors/metrics.py) equal plain reference computations: of
the next-item protocol at k, of labelled events at a threshold, and at the threshold
that maximises F1 over the AUC window; and the System reports them."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.metrics import (
    ROCAUC,
    NextItemMetrics,
    ProgressiveMetrics,
    ThresholdedCounts,
    rank_of,
    top_rows,
)
from runtime.config import Config
from runtime.prometheus import StatisticsCollector
from runtime.system import System

TOL = 1e-12


def reference_next_item(
    stream: list[tuple[str, int]], tops: dict[int, list[int]], k: int, n: int
) -> tuple[float, float, float, int]:
    """Mean precision@k, recall@k, F1@k over the evaluated events (keys of ``tops``) whose
    user has at least n interactions from that event on, and their number."""
    precision, recall, f1, count = [], [], [], 0
    for e, top in tops.items():
        user = stream[e][0]
        following = [item for u, item in stream[e:] if u == user][:n]
        if len(following) < n:
            continue
        relevant = set(following)
        hits = len(set(top[:k]) & relevant)
        p, r = hits / k, hits / len(relevant)
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if hits else 0.0)
        count += 1
    return float(np.mean(precision)), float(np.mean(recall)), float(np.mean(f1)), count


@pytest.mark.parametrize("n", [1, 2, 5])
def test_next_item_metrics_equal_the_reference(n: int) -> None:
    rng = random.Random(n)
    k = 4
    stream = [(f"u{rng.randint(0, 9)}", rng.randint(0, 14)) for _ in range(3000)]
    tops = {
        e: rng.sample(range(15), k) for e in range(len(stream)) if rng.random() < 0.2
    }  # the model's top k at each evaluated event
    metrics = NextItemMetrics(k, n)
    late: list[tuple[int, int]] = []  # rankings arrive after the batch's walk, as in the trainer
    for e, (user, item) in enumerate(stream):
        metrics.observe(user, item)
        if e in tops:
            late.append((metrics.begin(user, item), e))
        if e % 64 == 63:
            for evaluation, event in late:
                metrics.ranked(evaluation, np.array(tops[event]))
            late.clear()
    for evaluation, event in late:
        metrics.ranked(evaluation, np.array(tops[event]))
    precision, recall, f1, count = reference_next_item(stream, tops, k, n)
    assert metrics.count == count > 400
    assert metrics.pending == len(tops) - count
    assert metrics.precision() == pytest.approx(precision, abs=TOL)
    assert metrics.recall() == pytest.approx(recall, abs=TOL)
    assert metrics.f1() == pytest.approx(f1, abs=TOL)
    restored = NextItemMetrics.from_state(metrics.to_state())
    assert restored.to_state() == metrics.to_state()


def test_pending_next_item_evaluations_are_bounded() -> None:
    metrics = NextItemMetrics(k=2, relevant_next=3, max_pending=5)
    for e in range(8):
        metrics.ranked(metrics.begin(f"u{e}", e), np.array([e, 0]))
    assert (metrics.pending, metrics.expired, metrics.count) == (5, 3, 0)
    for _ in range(2):
        metrics.observe("u7", 7)
    assert (metrics.pending, metrics.count, metrics.recall()) == (4, 1, 1.0)
    assert metrics.begin("", 3) == -1  # an anonymous visitor cannot be followed


def test_top_rows_are_the_rows_rank_of_puts_first() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        scores = rng.integers(0, 6, 40).astype(float)  # many ties
        scores[rng.integers(0, 40, 2)] = np.nan
        exclude = rng.integers(0, 40, int(rng.integers(0, 10)))
        keep = int(rng.integers(0, 40))
        k = int(rng.integers(1, 12))
        top = top_rows(scores, k, exclude, keep)
        competing = exclude[exclude != keep]  # keep competes with every row
        allowed = [r for r in range(40) if r not in set(competing.tolist())]
        ranks = {r: rank_of(scores, r, competing) for r in allowed}
        assert top.tolist() == sorted((r for r in allowed if ranks[r] < k), key=ranks.get), trial


def reference_confusion(p: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float, float]:
    tp = sum(1 for pi, yi in zip(p, y, strict=True) if pi >= t and yi == 1)
    fp = sum(1 for pi, yi in zip(p, y, strict=True) if pi >= t and yi == 0)
    fn = sum(1 for pi, yi in zip(p, y, strict=True) if pi < t and yi == 1)
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return precision, recall, f1


def test_thresholded_precision_recall_f1_equal_the_reference() -> None:
    rng = np.random.default_rng(1)
    p = np.round(rng.uniform(size=2000), 2)  # ties at the threshold
    y = (rng.uniform(size=2000) < p * 0.8).astype(float)
    for threshold in (0.3, 0.5, 0.71):
        counts = ThresholdedCounts(threshold)
        for lo in range(0, 2000, 300):
            counts.update(p[lo : lo + 300], y[lo : lo + 300])
        expected = reference_confusion(p, y, threshold)
        assert (counts.precision(), counts.recall(), counts.f1()) == pytest.approx(expected)
        assert ThresholdedCounts.from_state(counts.to_state()).to_state() == counts.to_state()


def test_best_f1_is_the_maximum_over_every_threshold_of_the_window() -> None:
    rng = np.random.default_rng(2)
    p = np.round(rng.uniform(size=5000), 3)
    y = (rng.uniform(size=5000) < p).astype(float)
    auc = ROCAUC(window=1200)
    for lo in range(0, 5000, 700):
        auc.update(p[lo : lo + 700], y[lo : lo + 700])
        end = min(lo + 700, p.size)
        window_p, window_y = p[max(0, end - 1200) : end], y[max(0, end - 1200) : end]
        f1s = {t: reference_confusion(window_p, window_y, t)[2] for t in np.unique(window_p)}
        best = max(f1s.values())
        at = max(t for t, f in f1s.items() if f == best)
        got, got_at = auc.best_f1()
        assert got == pytest.approx(best, abs=TOL)
        assert got_at == at
    assert math.isnan(ROCAUC().best_f1()[0])


# --------------------------------------------------------------------------- the System


def stream(count: int) -> list[dict[str, Any]]:
    rng = random.Random(5)
    events = []
    for k in range(count):
        event: dict[str, Any] = {
            "user": f"u{rng.randint(0, 20)}",
            "item": f"i{rng.randint(0, 30)}",
            "ts": 1_700_000_000.0 + k,
        }
        if k % 4 == 0:
            event["label"] = rng.randint(0, 1)
        events.append(event)
    return events


def config(tmp_path: Path, **training: Any) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 14, "factor_bits": 10},
            "training": {
                "batch_size": 32,
                "rank_eval_every": 3,
                "rank_eval_rows": 0,
                "rank_k": 5,
                **training,
            },
            "state": {"snapshot_path": str(tmp_path / "s.msgpack")},
            "ingest": {"dead_letter_path": ""},
            "http": {"enabled": False},
        }
    )


async def test_with_the_next_item_alone_precision_recall_and_f1_follow_the_hit_rate(
    tmp_path: Path,
) -> None:
    async with System(config(tmp_path)) as system:
        await system.ingest(stream(900))
        m = system.statistics()["metrics"]
    hr = m["hr@5"]
    assert 0 < hr < 1
    assert m["next_item_evaluated"] == m["rank_evaluated"] == 300
    assert m["precision@5"] == pytest.approx(hr / 5, abs=TOL)
    assert m["recall@5"] == pytest.approx(hr, abs=TOL)
    assert m["f1@5"] == pytest.approx(hr * 2 / 6, abs=TOL)
    assert m["relevant_next"] == 1 and m["threshold"] == 0.5
    for key in ("precision", "recall", "f1", "best_f1"):
        assert 0 <= m[key] <= 1, key
    assert m["best_f1"] >= m["f1"] - 1e-12  # the window holds every labelled event here


async def test_the_system_reports_and_restores_the_next_item_metrics(tmp_path: Path) -> None:
    cfg = config(tmp_path, relevant_next=3, threshold=0.4)
    events = stream(900)
    async with System(cfg) as system:
        await system.ingest(events)
        m = system.statistics()["metrics"]
        system.write_snapshot()
        state = system.metrics.to_state()
        families = {f.name: f for f in StatisticsCollector(system.statistics).collect()}
    assert m["next_item_evaluated"] + m["next_item_pending"] == m["rank_evaluated"]
    assert m["next_item_pending"] > 0 and m["relevant_next"] == 3
    assert 0 < m["recall@5"] < 1
    async with System(cfg) as restored:
        assert restored.metrics.to_state() == state
    samples = {
        (f.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    next_key = ("freshrank_progressive_next_item_recall", (("k", "5"), ("relevant_next", "3")))
    assert samples[next_key] == pytest.approx(m["recall@5"])
    labelled_key = ("freshrank_progressive_labelled_f1", (("threshold", "0.4"),))
    assert samples[labelled_key] == pytest.approx(m["f1"])
    assert samples[("freshrank_progressive_labelled_best_f1", ())] == pytest.approx(m["best_f1"])


def test_an_old_snapshot_without_the_new_metrics_still_loads() -> None:
    old = ProgressiveMetrics(5)
    state = old.to_state()
    del state["thresholded"], state["next_item"]
    fresh = ProgressiveMetrics(5, relevant_next=2, threshold=0.3)
    fresh.load_state(state)
    assert fresh.next_item.relevant_next == 2 and fresh.thresholded.threshold == 0.3
