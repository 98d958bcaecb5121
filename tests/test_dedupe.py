"""Event-id dedupe: an event whose id the user's profile remembers is applied once; the
repeat goes to the dead-letter topic with its reason."""

from __future__ import annotations

import numpy as np
import pytest

from store import LmdbStore, event_id_hash
from stream.catalog import Catalogue
from stream.config import load_settings
from stream.events import Event
from stream.processor import Processor
from stream.profile import normalised
from stream.windows import UserWindow

DIM = 8
T0 = 1_700_000_000_000


def make_processor(tmp_path, name: str, dedupe_ids: int) -> Processor:
    rng = np.random.default_rng(0)
    catalogue = Catalogue(DIM)
    for i in range(10):
        catalogue.upsert(str(i), normalised(rng.normal(size=DIM).astype(np.float32)))
    store = LmdbStore(tmp_path / name)
    return Processor(load_settings(None, store={"dedupe_ids": dedupe_ids}), store, catalogue)


@pytest.fixture
def processor(tmp_path):
    p = make_processor(tmp_path, "s.lmdb", dedupe_ids=3)
    yield p
    p.store.close()


def window(user: str, events: list[tuple[str, str | None]], first_offset: int, source: str = "t.views:0") -> UserWindow:
    """``events``: (item id, event id); offsets count up from ``first_offset``."""
    return UserWindow(user, [Event(user, item, T0 + n * 1000, 0, source, n, event_id=eid)
                             for n, (item, eid) in enumerate(events, first_offset)])


def profile(p: Processor, user: str):
    with p.store.read() as r:
        return r.get_profile(user)


def test_an_event_id_seen_recently_is_applied_once_at_a_new_offset(processor):
    # a producer retried: the same event at new offsets, also on another input topic
    first = processor.flush([window("u", [("1", "e1"), ("2", "e2"), ("2", "e2")], 0)], now_ms=1)
    assert (first.applied, [r for _, r in first.rejected]) == (2, ["duplicate event_id 'e2'"])
    again = processor.flush([window("u", [("1", "e1"), ("3", None), ("3", None)], 3),
                             window("v", [("1", "e1")], 0)], now_ms=2)
    assert (again.applied, len(again.rejected)) == (3, 1)  # events without an id are never deduped
    rec = profile(processor, "u")
    assert rec.event_count == 4 and rec.applied == {"t.views:0": 5}
    assert rec.recent_ids == [event_id_hash("e1"), event_id_hash("e2")]
    assert profile(processor, "v").event_count == 1  # ids are remembered per user


def test_only_the_last_n_ids_are_remembered(processor):
    processor.flush([window("u", [(str(i), f"e{i}") for i in range(5)], 0)], now_ms=1)
    assert profile(processor, "u").recent_ids == [event_id_hash(f"e{i}") for i in (2, 3, 4)]
    result = processor.flush([window("u", [("0", "e0"), ("4", "e4")], 5)], now_ms=2)
    assert (result.applied, len(result.rejected)) == (1, 1)  # e0 was forgotten, e4 was not


def test_dedupe_result_equals_applying_the_unique_events(processor, tmp_path):
    processor.flush([window("u", [("1", "a"), ("2", "b"), ("1", "a"), ("3", "c")], 0)], now_ms=1)
    plain = make_processor(tmp_path, "plain.lmdb", dedupe_ids=0)
    unique = window("u", [("1", "a"), ("2", "b"), ("1", "a"), ("3", "c")], 0)
    del unique.events[2]  # the same events at the same event times, without the repeat
    plain.flush([unique], now_ms=1)
    got, want = profile(processor, "u"), profile(plain, "u")
    assert got.event_count == want.event_count == 3
    np.testing.assert_allclose(got.vectors, want.vectors, rtol=0, atol=1e-6)
    assert plain.flush([window("u", [("1", "a")], 4)], now_ms=2).applied == 1  # 0 disables dedupe
    plain.store.close()


def test_a_rejected_event_does_not_burn_its_id(processor):
    result = processor.flush([window("u", [("no-such-item", "x")], 0)], now_ms=1)
    assert len(result.rejected) == 1
    assert processor.flush([window("u", [("1", "x")], 1)], now_ms=2).applied == 1
