"""Ranking: exclusions, order, blending and explanations."""

import numpy as np
import pytest

from stream.profile import normalised
from stream.ranking import blend_queries, explain, explain_positions, iter_blocks, score, top_k

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


def _reference_top_k(scores, k):
    """Full sort by (score descending, column ascending): what top_k promises."""
    k = min(k, scores.shape[1])
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
    best = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isneginf(best), -1, order), best


@pytest.mark.parametrize("n_items", [20_000, 20_003])  # equal column blocks, and a short last one
def test_top_k_matches_a_full_sort_on_a_large_catalogue_with_ties_and_exclusions(n_items):
    rng = np.random.default_rng(3)
    items = normalised(rng.standard_normal((n_items, 8)).astype(np.float32))  # block-maxima path
    items[5000:5010] = items[42]  # exact ties across the top
    items[n_items - 2] = items[42]  # and one in the last column block
    queries = np.vstack([items[42], rng.standard_normal((29, 8)).astype(np.float32)])
    exclude = [rng.choice(n_items, size=int(rng.integers(0, 300)), replace=False) for _ in range(30)]
    exclude[1] = np.arange(n_items - 5)  # only 5 items left: the rest of the slots are -1
    scores = score(queries, items, exclude)
    idx, best = top_k(scores, 12)
    ref_idx, ref_best = _reference_top_k(scores, 12)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(best, ref_best)
    assert list(idx[0][:12]) == [42, *range(5000, 5010), n_items - 2]  # ties: lower row first
    assert list(idx[1][5:]) == [-1] * 7 and set(idx[1][:5]) == set(range(n_items - 5, n_items))


def test_scoring_in_blocks_of_users_gives_the_same_top_k_as_all_at_once():
    rng = np.random.default_rng(4)
    items = normalised(rng.standard_normal((9_000, 16)).astype(np.float32))
    queries = rng.standard_normal((600, 16)).astype(np.float32)
    exclude = [rng.choice(9_000, size=50, replace=False) for _ in range(600)]
    whole = top_k(score(queries, items, exclude), 10)
    blocks = [top_k(score(queries[b], items, exclude[b]), 10) for b in iter_blocks(600, 256)]
    assert [b.stop - b.start for b in iter_blocks(600, 256)] == [256, 256, 88]
    np.testing.assert_array_equal(whole[0], np.concatenate([b[0] for b in blocks]))
    # the same items; scores may differ in the last bit (BLAS blocks a 600-row product differently)
    np.testing.assert_allclose(whole[1], np.concatenate([b[1] for b in blocks]), rtol=1e-6)


def test_explain_positions_match_explain_user_by_user():
    """The batched product the worker's ``because`` uses, -1-padded histories included."""
    rng = np.random.default_rng(6)
    items = ITEMS.copy()
    items[40] = items[41]  # a tie inside a history: the earlier position wins in both
    recs = [rng.choice(50, size=s, replace=False) for s in (10, 7, 0, 10)]
    histories = [np.array([41, 40, 3, 9]), rng.choice(50, size=30, replace=False), np.array([1]), np.array([], np.int64)]
    padded_recs = np.zeros((len(recs), 10), np.int64)  # any valid row pads
    padded_hist = np.full((len(histories), 30), -1, np.int64)
    for u, (r, h) in enumerate(zip(recs, histories)):
        padded_recs[u, : len(r)], padded_hist[u, : len(h)] = r, h
    for n in (0, 1, 3):
        got = explain_positions(items, padded_recs, padded_hist, n)
        for u, (r, h) in enumerate(zip(recs, histories)):
            names = [f"h{j}" for j in range(len(h))]
            want = explain(items[r], items[h], names, n) if len(r) else []
            # padding positions sort after every real one: keep the user's own min(n, len(h))
            assert [[names[j] for j in row[: min(n, len(h))]] for row in got[u, : len(r)].tolist()] == want


def test_explain_positions_are_the_stable_sort_of_the_similarities():
    """The argmax passes give exactly the stable descending sort's first ``n`` positions:
    ties (rounded vectors), co-occurrence extras, padding at the end or anywhere, n up to m."""
    rng = np.random.default_rng(11)
    for _ in range(400):
        n_items, users, k, m = int(rng.integers(1, 30)), int(rng.integers(1, 6)), int(rng.integers(0, 5)), int(rng.integers(1, 12))
        items = rng.standard_normal((n_items, 4)).astype(np.float32)
        if rng.random() < 0.3:
            items = np.round(items)
        recs, hist = rng.integers(0, n_items, (users, k)), rng.integers(0, n_items, (users, m))
        for u in range(users):
            if rng.random() < 0.8:
                hist[u, int(rng.integers(0, m + 1)):] = -1
            else:
                hist[u, rng.random(m) < 0.3] = -1
        extra = rng.standard_normal((users, k, m)).astype(np.float32) if rng.random() < 0.3 else None
        sims = items[recs] @ items[np.maximum(hist, 0)].transpose(0, 2, 1)
        if extra is not None:
            sims += extra
        sims[np.broadcast_to((hist < 0)[:, None, :], sims.shape)] = -np.inf
        for n in {0, 1, min(3, m), m}:
            want = np.argsort(-sims, axis=2, kind="stable")[:, :, :n]
            np.testing.assert_array_equal(explain_positions(items, recs, hist, n, extra), want)
