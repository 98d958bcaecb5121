"""Ranking: exclusions, order, blending and explanations."""

import numpy as np

from stream.profile import normalised
from stream.ranking import blend_queries, explain, score, top_k

ITEMS = normalised(np.random.default_rng(1).normal(size=(50, 16)).astype(np.float32))


def test_top_k_is_sorted_and_never_returns_excluded_items():
    queries = ITEMS[[3, 7]] * 2.0
    exclude = [np.array([3, 4, 5]), np.array([], np.int64)]
    idx, scores = top_k(score(queries, ITEMS, exclude), 10)
    assert idx.shape == (2, 10)
    assert not set(idx[0]) & {3, 4, 5}
    assert idx[1][0] == 7  # an item is its own nearest neighbour
    assert np.all(np.diff(scores, axis=1) <= 0)
    brute = np.argsort(-(queries[1] @ ITEMS.T))[:10]
    assert list(idx[1]) == list(brute)


def test_top_k_when_everything_is_excluded():
    idx, scores = top_k(score(ITEMS[:1], ITEMS[:3], [np.array([0, 1, 2])]), 5)
    assert idx.shape == (1, 3) and np.all(idx == -1) and np.all(np.isneginf(scores))


def test_blend_is_the_weighted_sum_of_cosines():
    vectors = np.stack([ITEMS[0] * 5.0, ITEMS[1] * 0.1])[None]  # (1, H=2, D)
    q = blend_queries(vectors, np.array([0.25, 0.75]))
    expected = 0.25 * (ITEMS @ ITEMS[0]) + 0.75 * (ITEMS @ ITEMS[1])
    np.testing.assert_allclose(ITEMS @ q[0], expected, rtol=1e-5, atol=1e-6)


def test_empty_horizon_drops_out_of_the_blend():
    vectors = np.stack([ITEMS[0], np.zeros(16, np.float32)])[None]
    q = blend_queries(vectors, np.array([0.5, 0.5]))
    np.testing.assert_allclose(q[0], ITEMS[0], rtol=1e-6)


def test_explain_picks_the_most_similar_history_items():
    because = explain(ITEMS[[10, 20]], ITEMS[[20, 10, 30]], ["b", "a", "c"], 1)
    assert because == [["a"], ["b"]]
    assert explain(ITEMS[[10]], ITEMS[:0], [], 3) == [[]]
