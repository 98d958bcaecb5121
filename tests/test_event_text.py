"""Events that carry text (reviews, queries) enter the profile, in the worker and in replay alike."""

from __future__ import annotations

import numpy as np
import pytest

from encoders import load_encoder
from store import LmdbStore
from stream.catalog import Catalogue
from stream.config import load_settings
from stream.events import Event
from stream.processor import Processor
from stream.windows import UserWindow

TS = 1_700_000_000_000
REVIEW = "A slow, haunting ghost story set in a Victorian mansion."


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(load_settings(None).encoder)


@pytest.fixture
def catalogue(encoder):
    catalogue = Catalogue(encoder.dim)
    texts = {"1": "Toy Story (1995). Genres: Animation, Children's, Comedy", "2": "Heat (1995). Genres: Action, Crime"}
    for item_id, vector in zip(texts, encoder.encode(list(texts.values()))):
        catalogue.upsert(item_id, vector)
    return catalogue


def flushed_profile(tmp_path, catalogue, encoder, event, **profile):
    settings = load_settings(None, profile=profile)
    with LmdbStore(tmp_path / f"s{len(list(tmp_path.iterdir()))}.lmdb") as store:
        processor = Processor(settings, store, catalogue, encoder)
        result = processor.flush([UserWindow("u", events=[event], handles=[0])], now_ms=1, recommend=False)
        with store.read() as txn:
            return processor, result, txn.get_profile("u")


def test_a_review_mixes_its_text_into_the_items_contribution(tmp_path, catalogue, encoder):
    review = Event("u", "1", TS, 2, "t.purchases:0", 0, text=REVIEW)
    text = encoder.encode([REVIEW])[0]
    item = catalogue.matrix[catalogue.index["1"]]
    processor, result, rec = flushed_profile(tmp_path, catalogue, encoder, review, event_text_weight=0.25)
    assert result.applied == 1
    weight = processor.kind_weights[2]
    np.testing.assert_allclose(rec.vectors[0], weight * (0.75 * item + 0.25 * text), atol=1e-5)
    _, _, plain = flushed_profile(tmp_path, catalogue, encoder, review, event_text_weight=0.0)
    np.testing.assert_allclose(plain.vectors[0], weight * item, atol=1e-6)


def test_a_query_event_on_an_unknown_id_counts_by_its_text(tmp_path, catalogue, encoder):
    query = Event("u", "q:ghost-stories", TS, 0, "t.views:0", 0, text="ghost stories")
    processor, result, rec = flushed_profile(tmp_path, catalogue, encoder, query)
    assert result.applied == 1 and not result.rejected
    np.testing.assert_allclose(rec.vectors[0], processor.kind_weights[0] * encoder.encode(["ghost stories"])[0], atol=1e-5)


@pytest.mark.parametrize("item_id", ["1", "q:ghost-stories"])
def test_replays_fold_equals_the_flush_for_events_with_text(tmp_path, catalogue, encoder, item_id):
    event = Event("u", item_id, TS, 1, "t.clicks:0", 0, text=REVIEW)
    processor, _, stored = flushed_profile(tmp_path, catalogue, encoder, event)
    folded = processor.fold(processor.new_profile("u"), event, processor.text_vectors([event]))
    np.testing.assert_allclose(folded.vectors, stored.vectors, atol=1e-6)
    np.testing.assert_allclose(folded.weights, stored.weights)
