"""The flush: exactly-once application under redelivery, rejections, and ranking output."""

from __future__ import annotations

import numpy as np
import pytest

from store import LmdbStore
from stream.catalog import Catalogue
from stream.config import load_settings
from stream.events import Event
from stream.processor import Processor
from stream.profile import normalised
from stream.windows import UserWindow

DIM = 8


@pytest.fixture
def processor(tmp_path):
    rng = np.random.default_rng(0)
    catalogue = Catalogue(DIM)
    for i in range(30):
        catalogue.upsert(str(i), normalised(rng.normal(size=DIM).astype(np.float32)))
    store = LmdbStore(tmp_path / "s.lmdb")
    yield Processor(load_settings(None, ranking={"k": 5}), store, catalogue)
    store.close()


def window(user, items, first_offset=0, source="recstream.clicks:0", ts0=1_700_000_000_000):
    events = [Event(user, item, ts0 + (first_offset + n) * 1000, 1, source, first_offset + n) for n, item in enumerate(items)]
    return UserWindow(user, events=events, handles=list(range(len(events))))


def test_the_stored_position_is_the_highest_offset_consumed_whatever_the_flush_order(processor):
    # two parts of one slice (or a user whose window stayed open): the later flush ends lower
    processor.flush([window("a", ["1", "2"], first_offset=10)], now_ms=1)
    processor.flush([window("b", ["3"], first_offset=4)], now_ms=2)
    with processor.store.read() as txn:
        assert txn.get_offsets() == {("recstream.clicks", 0): 11}


def test_a_redelivered_window_is_not_counted_twice(processor):
    first = processor.flush([window("u", ["1", "2", "3"])], now_ms=1)
    assert (first.applied, first.duplicates) == (3, 0)
    with processor.store.read() as txn:
        before = txn.get_profile("u")
    # Kafka redelivers offsets 1..4 after a crash: 1 and 2 were applied, 3 and 4 are new
    again = processor.flush([window("u", ["2", "3", "4", "5"], first_offset=1)], now_ms=2)
    assert (again.applied, again.duplicates) == (2, 2)
    with processor.store.read() as txn:
        after = txn.get_profile("u")
        offsets = txn.get_offsets()
    assert after.event_count == 5 and after.version == before.version + 1
    assert after.applied == {"recstream.clicks:0": 4}
    assert offsets[("recstream.clicks", 0)] == 4
    # the result equals applying the five events once
    fresh = Processor(processor.settings, LmdbStore(processor.store.path.parent / "fresh.lmdb"), processor.catalogue)
    fresh.flush([window("u", ["1", "2", "3", "4", "5"])], now_ms=3)
    with fresh.store.read() as txn:
        once = txn.get_profile("u")
    np.testing.assert_allclose(after.vectors, once.vectors, atol=1e-6)
    np.testing.assert_allclose(after.weights, once.weights)


def test_unknown_items_are_rejected_and_the_rest_applied(processor):
    result = processor.flush([window("u", ["1", "nope", "2"])], now_ms=1)
    assert result.applied == 2
    assert [(e.item_id, r) for e, r in result.rejected] == [("nope", "unknown item 'nope' and no text to encode")]


def test_late_events_are_rejected_only_when_a_lateness_bound_is_set(tmp_path, processor):
    processor.flush([window("u", ["1"], ts0=10 * 86_400_000)], now_ms=1)
    late = window("u", ["2"], first_offset=1, ts0=1 * 86_400_000 - 1000)
    assert processor.flush([late], now_ms=2).applied == 1  # default: applied exactly
    strict = Processor(load_settings(None, windows={"allowed_lateness_s": 3600}), processor.store, processor.catalogue)
    result = strict.flush([window("u", ["3"], first_offset=2, ts0=2 * 86_400_000 - 2000)], now_ms=3)
    assert result.applied == 0 and "late event" in result.rejected[0][1]


def test_recommendations_exclude_history_and_explain_from_it(processor):
    result = processor.flush([window("u", ["1", "2", "3", "4"])], now_ms=1)
    (rec,) = result.recommendations
    ids = [i["item_id"] for i in rec["items"]]
    assert len(ids) == 5 and not set(ids) & {"1", "2", "3", "4"}
    assert all(i["because"] and set(i["because"]) <= {"1", "2", "3", "4"} for i in rec["items"])
    assert rec["event_count"] == 4 and rec["profile_version"] == 1 and rec["ts"] == 1_700_000_000_000 + 3000


def test_a_profile_stored_under_another_model_is_rebuilt_from_its_history(processor, tmp_path):
    processor.flush([window("u", ["1", "2", "3"])], now_ms=1)
    # the worker restarts with a model of another dimension: same items, new vectors
    rng = np.random.default_rng(1)
    wider = Catalogue(DIM * 2)
    for i in range(30):
        wider.upsert(str(i), normalised(rng.normal(size=DIM * 2).astype(np.float32)))
    restarted = Processor(processor.settings, processor.store, wider)
    result = restarted.flush([window("u", ["4"], first_offset=3)], now_ms=2)
    assert result.applied == 1 and result.recommendations
    with restarted.store.read() as txn:
        after = txn.get_profile("u")
    assert after.vectors.shape == (2, DIM * 2) and after.event_count == 4
    # equal to a profile built from scratch under the new model with the same four events
    fresh = Processor(processor.settings, LmdbStore(tmp_path / "fresh.lmdb"), wider)
    fresh.flush([window("u", ["1", "2", "3", "4"])], now_ms=3)
    with fresh.store.read() as txn:
        want = txn.get_profile("u")
    np.testing.assert_allclose(after.vectors, want.vectors, rtol=1e-5, atol=1e-6)


def test_a_flush_of_more_users_than_a_scoring_block_ranks_each_as_if_alone(processor):
    """recommend() scores in blocks of ranking.BLOCK_USERS; every user's top-K must equal
    the one computed for that user on its own (one scoring path, any flush size)."""
    rng = np.random.default_rng(5)
    windows = [window(f"u{n}", [str(i) for i in rng.choice(30, size=3, replace=False)]) for n in range(300)]
    result = processor.flush(windows, now_ms=1)
    assert len(result.recommendations) == 300
    with processor.store.read() as txn:
        profiles = {p: txn.get_profile(p) for p in ("u0", "u255", "u256", "u299")}
        seen = {p: txn.get_seen(p) for p in profiles}
    for rec in (r for r in result.recommendations if r["user_id"] in profiles):
        alone = processor.recommend([profiles[rec["user_id"]]], seen)[0]
        assert [i["item_id"] for i in rec["items"]] == [i["item_id"] for i in alone["items"]]
        assert not {i["item_id"] for i in rec["items"]} & seen[rec["user_id"]]


def test_scores_round_like_python_round():
    """Records show round(score, 6); the vectorised rounding must give the same floats."""
    from stream.processor import _round6

    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.uniform(-1, 1, 20_000), rng.integers(-10**6, 10**6, 5_000) / 1e6 + 5e-7,
                             [0.0, -0.0, 1.0, -1.0, 0.5000005, 0.1234565]]).astype(np.float32).reshape(-1, 1)
    got = _round6(scores).ravel().tolist()
    assert got == [round(s, 6) for s in scores.ravel().tolist()]


def test_a_user_twice_in_one_flush_gets_both_windows_in_order(processor):
    """The profile maths of a flush is batched; a user's second window (a caller that passes
    two) must still see the first one applied: counted once each, duplicates skipped."""
    result = processor.flush([window("u", ["1", "2"]), window("v", ["3"]), window("u", ["2", "4"], first_offset=1)], now_ms=1)
    assert (result.applied, result.duplicates) == (4, 1)
    fresh = Processor(processor.settings, LmdbStore(processor.store.path.parent / "fresh.lmdb"), processor.catalogue)
    fresh.flush([window("u", ["1", "2", "4"])], now_ms=1)
    with processor.store.read() as a, fresh.store.read() as b:
        got, want = a.get_profile("u"), b.get_profile("u")
    assert got.event_count == 3 and got.applied == {"recstream.clicks:0": 2}
    np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-6)


def test_an_item_listed_twice_is_one_item_to_the_user(processor):
    """ml-100k lists some films twice (same title, year, genres, two ids): one item to a user."""
    catalogue = processor.catalogue
    catalogue.upsert("0-again", catalogue.matrix[0].copy())  # same vector, same (no) attributes
    catalogue.upsert("1-other-cut", catalogue.matrix[1].copy(), {"edition": "director's cut"})
    canonical, repeats = catalogue.duplicates
    assert repeats.tolist() == [catalogue.index["0-again"]]  # attributes differ: not a repeat
    assert canonical[catalogue.index["0-again"]] == catalogue.index["0"]
    item = catalogue.matrix[0]
    # "u" watched items close to item 0: both of its entries would rank first
    near = np.argsort(-(catalogue.matrix[:30] @ item))[1:4]
    result = processor.flush([window("u", [str(i) for i in near])], now_ms=1)
    (rec,) = result.recommendations
    ids = [r["item_id"] for r in rec["items"]]
    assert "0" in ids and "0-again" not in ids
    # having seen the repeat is having seen the item
    (rec,) = processor.flush([window("u", ["0-again"], first_offset=3)], now_ms=2).recommendations
    ids = [r["item_id"] for r in rec["items"]]
    assert "0" not in ids and "0-again" not in ids
    # with both entries in the history, an explanation names the item once
    (rec,) = processor.flush([window("u", ["0"], first_offset=4)], now_ms=3).recommendations
    assert any(set(r["because"]) & {"0", "0-again"} for r in rec["items"])
    assert all(len(set(r["because"]) & {"0", "0-again"}) <= 1 for r in rec["items"])
    catalogue.upsert("0-again", normalised(np.arange(1, DIM + 1, dtype=np.float32)))  # re-encoded: distinct now
    assert len(catalogue.duplicates[1]) == 0


def test_a_tuned_models_repeats_are_found_by_their_text(processor):
    """A tuned model gives each id its own residual: the two entries of one film differ in
    vector, and the item text with the attributes is what shows they are one item."""
    catalogue = processor.catalogue
    text = "Sliding Doors (1998). Genres: Drama, Romance."
    catalogue.upsert("sd-1", normalised(np.arange(1, DIM + 1, dtype=np.float32)), {"year": "1998"}, text)
    catalogue.upsert("sd-2", normalised(np.arange(DIM, 0, -1, dtype=np.float32)), {"year": "1998"}, text)
    catalogue.upsert("sd-3", normalised(np.ones(DIM, np.float32)), {"year": "1999"}, text)  # another year
    canonical, repeats = catalogue.duplicates
    assert repeats.tolist() == [catalogue.index["sd-2"]]
    assert canonical[catalogue.index["sd-2"]] == catalogue.index["sd-1"]
    # a row upserted without its text is compared by its vector, and never with a row that has one
    catalogue.upsert("sd-1-vector", catalogue.matrix[catalogue.index["sd-1"]].copy(), {"year": "1998"})
    assert catalogue.duplicates[1].tolist() == [catalogue.index["sd-2"]]
    catalogue.upsert("sd-2", catalogue.matrix[catalogue.index["sd-2"]].copy(), {"year": "1998"}, text + " Re-cut.")
    assert len(catalogue.duplicates[1]) == 0
