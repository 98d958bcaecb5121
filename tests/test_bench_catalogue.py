"""bench/catalogue.py: the synthetic catalogue behind `python -m bench e2e-large`."""

from __future__ import annotations

import numpy as np
import orjson

from bench.catalogue import synthetic_items
from stream.catalog import item_text, parse_item
from stream.config import Settings


def test_items_are_valid_distinct_sentences_and_deterministic():
    items, weights = synthetic_items(2_000, seed=7)
    limits = Settings().limits
    texts = [item_text(parse_item(orjson.dumps(i), limits)) for i in items]
    assert len(set(texts)) == len(texts)  # no repeated text for the encoder's cache to absorb
    assert all(15 <= len(t.split()) <= 45 for t in texts)
    assert len({i["item_id"] for i in items}) == len(items)
    again, again_weights = synthetic_items(2_000, seed=7)
    assert again == items and np.array_equal(again_weights, weights)
    assert synthetic_items(2_000, seed=8)[0] != items


def test_popularity_is_a_shuffled_zipf_law():
    _, weights = synthetic_items(10_000)
    ranked = np.sort(weights)[::-1]
    np.testing.assert_allclose(ranked, 1.0 / np.arange(1, 10_001) ** 0.9)
    assert not np.all(np.diff(weights) <= 0)  # not in id order
