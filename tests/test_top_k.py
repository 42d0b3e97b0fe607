"""``actors.ranker.top_k``: the k best positions, ties to the lower position, whatever the
array's length, so two replicas holding equal scores answer the same list."""

from __future__ import annotations

import numpy as np

from actors.ranker import top_k


def reference(scores: np.ndarray, k: int, excluded: np.ndarray) -> list[int]:
    allowed = [i for i in range(scores.size) if i not in set(excluded.tolist())]
    return sorted(allowed, key=lambda i: (-scores[i], i))[:k]


def test_ties_at_the_kth_score_go_to_the_lower_positions() -> None:
    rng = np.random.default_rng(7)
    for size in (5, 17, 64, 1000, 4099):
        scores = rng.integers(0, 4, size).astype(np.float64)  # many ties
        excluded = rng.choice(size, size // 5, replace=False)
        for k in (1, 3, 10, size):
            got = top_k(scores, k, excluded).tolist()
            assert got == reference(scores, k, excluded), (size, k)


def test_equal_scores_answer_the_same_list_in_arrays_of_other_lengths() -> None:
    scores = np.zeros(300)
    scores[[3, 90, 200]] = 1.0
    first = top_k(scores, 10, np.array([90])).tolist()
    longer = top_k(np.concatenate((scores, np.zeros(700))), 10, np.array([90])).tolist()
    assert first == longer == [3, 200, 0, 1, 2, 4, 5, 6, 7, 8]
