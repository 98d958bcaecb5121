"""Business rules over relevance: excluded categories, the freshness boost, MMR diversity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from store import LmdbStore
from stream.catalog import Catalogue
from stream.config import load_settings
from stream.events import Event
from stream.processor import Processor
from stream.profile import normalised
from stream.rerank import excluded_rows, freshness, mmr, published_ms
from stream.windows import UserWindow

DIM = 8
DAY_MS = 86_400_000
NOW_MS = 1_700_000_000_000


def test_excluded_rows_match_any_value_case_insensitively():
    attrs = [{"genres": ["Horror", "Comedy"]}, {"genres": "horror"}, {"genres": ["Drama"]}, {}, {"lang": "Horror"}]
    assert excluded_rows(attrs, {"genres": ["HORROR"]}).tolist() == [True, True, False, False, False]
    assert excluded_rows(attrs, {"genres": ["drama"], "lang": ["horror"]}).tolist() == [False, False, True, False, True]
    assert not excluded_rows(attrs, {}).any() and not excluded_rows(attrs, {"genres": []}).any()


@pytest.mark.parametrize(
    ("value", "iso"),
    [
        ("1995", "1995-01-01T00:00:00+00:00"),
        (["2024-03-05"], "2024-03-05T00:00:00+00:00"),
        ("2024-03-05T10:00:00Z", "2024-03-05T10:00:00+00:00"),
        ("2024-03-05T12:00:00+02:00", "2024-03-05T10:00:00+00:00"),
        ("1700000000", "2023-11-14T22:13:20+00:00"),
    ],
)
def test_published_ms_reads_years_iso_dates_and_epoch_seconds(value, iso):
    from datetime import datetime

    assert published_ms(value) == datetime.fromisoformat(iso).timestamp() * 1000


@pytest.mark.parametrize("value", [None, "", [], "soon", "2024-13-01"])
def test_published_ms_is_nan_without_a_readable_time(value):
    assert math.isnan(published_ms(value))


def test_freshness_halves_per_half_life_and_is_zero_without_a_time():
    published = np.array([NOW_MS, NOW_MS - DAY_MS, NOW_MS - 2 * DAY_MS, NOW_MS + DAY_MS, np.nan])
    got = freshness(published, np.array([NOW_MS, NOW_MS + DAY_MS]), half_life_s=86_400)
    np.testing.assert_allclose(got, [[1, 0.5, 0.25, 1, 0], [0.5, 0.25, 0.125, 1, 0]])


def test_mmr_without_diversity_keeps_the_relevance_order():
    rng = np.random.default_rng(0)
    matrix = normalised(rng.normal(size=(20, DIM)).astype(np.float32))
    rows = np.array([[5, 2, 9, 1, -1], [3, 4, -1, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.1, -np.inf], [0.5, 0.4, -np.inf, -np.inf, -np.inf]], np.float32)
    got_rows, got_scores = mmr(rows, scores, matrix, 4, 0.0)
    assert got_rows.tolist() == [[5, 2, 9, 1], [3, 4, -1, -1]]
    assert got_scores[1, 2:].tolist() == [-np.inf, -np.inf]


def test_mmr_lifts_an_item_unlike_the_near_duplicates_above_it():
    base, other = np.eye(DIM, dtype=np.float32)[0], np.eye(DIM, dtype=np.float32)[1]
    twins = [normalised(base + 0.05 * np.eye(DIM, dtype=np.float32)[j]) for j in range(2, 5)]
    matrix = np.stack([base, *twins, other])  # rows 0-3 nearly identical, row 4 different
    rows = np.array([[0, 1, 2, 3, 4]])
    scores = np.array([[1.0, 0.99, 0.98, 0.97, 0.9]], np.float32)
    assert mmr(rows, scores, matrix, 3, 0.0)[0].tolist() == [[0, 1, 2]]
    assert mmr(rows, scores, matrix, 3, 0.5)[0].tolist() == [[0, 4, 1]]


@pytest.fixture
def catalogue():
    rng = np.random.default_rng(0)
    catalogue = Catalogue(DIM)
    for i in range(40):
        year = str(2004 + i % 20)
        genres = ["Horror"] if i % 3 == 0 else ["Comedy"]
        catalogue.upsert(str(i), normalised(rng.normal(size=DIM).astype(np.float32)), {"genres": genres, "year": year})
    return catalogue


def recommend(tmp_path, catalogue, **ranking):
    store = LmdbStore(tmp_path / f"s{len(list(tmp_path.iterdir()))}.lmdb")
    processor = Processor(load_settings(None, ranking={"k": 8, "because": 0, **ranking}), store, catalogue)
    ts = NOW_MS  # 2023-11-14
    events = [Event("u", item, ts + n, 1, "t.clicks:0", n) for n, item in enumerate(["1", "2", "4", "5"])]
    (rec,) = processor.flush([UserWindow("u", events=events, handles=list(range(4)))], now_ms=1).recommendations
    store.close()
    return [i["item_id"] for i in rec["items"]], [i["score"] for i in rec["items"]]


def test_excluded_categories_are_never_recommended(tmp_path, catalogue):
    plain, _ = recommend(tmp_path, catalogue)
    assert any(int(i) % 3 == 0 for i in plain)  # some horror in the plain ranking
    ids, _ = recommend(tmp_path, catalogue, exclude={"genres": ["horror"]})
    assert len(ids) == 8 and not any(int(i) % 3 == 0 for i in ids)


def test_a_fresh_item_boost_lifts_recent_items(tmp_path, catalogue):
    plain, _ = recommend(tmp_path, catalogue)
    # 2023's items get ~88, 2022's ~5, older ones < 0.4: more than any cosine difference
    boosted, scores = recommend(tmp_path, catalogue, fresh_boost=1000.0, fresh_attribute="year", fresh_half_life_s=90 * 86_400)
    newest = {str(i) for i in range(40) if 2004 + i % 20 >= 2022} - {"1", "2", "4", "5"}
    assert not newest <= set(plain)
    assert set(boosted[: len(newest)]) == newest and scores == sorted(scores, reverse=True)


def test_diversity_lowers_the_similarity_within_the_list(tmp_path, catalogue):
    def mean_similarity(ids):
        v = catalogue.matrix[catalogue.indices(ids)]
        sims = v @ v.T
        return (sims.sum() - len(ids)) / (len(ids) * (len(ids) - 1))

    plain, _ = recommend(tmp_path, catalogue)
    diverse, _ = recommend(tmp_path, catalogue, diversity=0.7, diversity_pool=30)
    assert diverse[0] == plain[0]  # the first pick is the most relevant either way
    assert diverse != plain and mean_similarity(diverse) < mean_similarity(plain)
