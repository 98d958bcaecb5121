"""Metric functions against hand-computed cases; baselines' incremental state."""

import math

import numpy as np
import pytest

from stream.baselines import AllTimePopularity, DecayedPopularity, ItemKNN, RecentPopularity
from stream.metrics import MetricAccumulator, metrics_from_ranks, rank_of_targets


def test_metrics_by_hand():
    m = metrics_from_ranks(np.array([0, 3, 12]), k=10)
    assert m["hr"] == pytest.approx(2 / 3)
    assert m["recall"] == m["hr"]
    assert m["ndcg"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(5)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 13) / 3)


def test_rank_counts_higher_items_and_half_the_ties():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [1.0, 1.0, 1.0, 1.0], [-np.inf, 0.2, 0.3, 0.1]])
    ranks = rank_of_targets(scores, np.array([2, 0, 1]))
    assert list(ranks) == [2.0, 1.5, 1.0]


def test_coverage_counts_distinct_recommended_items():
    acc = MetricAccumulator(k=2, n_items=10)
    acc.add(np.array([0.0]), np.array([1, 2]))
    acc.add(np.array([5.0]), np.array([2, 3]))
    assert acc.summary()["coverage"] == pytest.approx(0.3)
    assert acc.summary()["hr"] == pytest.approx(0.5)


def test_popularity_baselines_follow_event_time():
    pop, decayed, recent = AllTimePopularity(3), DecayedPopularity(3, half_life_ms=1000), RecentPopularity(3, window_ms=1000)
    for b in (pop, decayed, recent):
        b.update("u", 0, 0)
        b.update("u", 0, 100)
        b.update("v", 1, 5000)
    assert list(pop.scores("x", 5000)) == [2, 1, 0]
    assert decayed.scores("x", 5000)[1] > decayed.scores("x", 5000)[0]  # old events faded
    assert list(recent.scores("x", 5000)) == [0, 1, 0]  # outside the trailing window


def test_itemknn_recommends_co_occurring_items():
    knn = ItemKNN(4)
    for user in ("a", "b", "c"):
        knn.update(user, 0, 1)
        knn.update(user, 1, 2)
    knn.update("d", 2, 3)
    knn.update("e", 0, 4)
    s = knn.scores("e", 5)
    assert np.argmax(s) in (0, 1) and s[1] > s[2] and s[1] > s[3]
