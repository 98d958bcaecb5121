"""stream.changelog without a broker: the changelog record, the merge rule, collect."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "store"))
from store_helpers import make_profile  # noqa: E402

from store import LmdbStore, RecordError, decode_changelog, encode_changelog, encode_profile  # noqa: E402
from stream.changelog import advance_positions, collect, holds_more, merge  # noqa: E402
from stream.events import Event  # noqa: E402
from stream.windows import UserWindow  # noqa: E402


def profile(user: str, applied: dict[str, int], seed: int = 0):
    rec = make_profile(user, dim=8, history=3, seed=seed)
    rec.applied = applied
    return rec


def test_changelog_record_round_trip_and_errors():
    rec = profile("u1", {"t.view:1": 5})
    data = encode_changelog(encode_profile(rec), {"b", "a", "ü"})
    assert decode_changelog(data) == (rec, {"a", "b", "ü"})
    assert decode_changelog(encode_changelog(encode_profile(rec), [])) == (rec, set())
    with pytest.raises(RecordError, match="version 7"):
        decode_changelog(bytes([7]) + data[1:])
    with pytest.raises(RecordError, match="truncated"):
        decode_changelog(data[:-1])
    with pytest.raises(RecordError, match="trailing"):
        decode_changelog(data + b"x")


def test_holds_more_compares_applied_offsets_per_partition():
    a = profile("u", {"t.view:1": 5, "t.click:1": 2})
    assert not holds_more(a, profile("u", {"t.view:1": 5, "t.click:1": 2}))
    assert holds_more(a, profile("u", {"t.view:1": 4, "t.click:1": 2}))
    assert holds_more(a, profile("u", {"t.view:1": 9}))  # b lacks the click partition
    assert not holds_more(profile("u", {}), a)


def test_merge_keeps_the_record_with_more_events_and_unions_seen(tmp_path: Path):
    store = LmdbStore(tmp_path / "s", map_size_mb=16)
    ahead, behind = profile("ahead", {"t.view:0": 9}, seed=1), profile("behind", {"t.view:0": 3}, seed=2)
    with store.write() as w:
        w.put_profile(ahead)  # committed locally, changelog delivery lost (crash)
        w.put_profile(behind)  # another worker applied more since
        w.put_profile(profile("gone", {"t.view:0": 1}))
        w.add_seen("behind", ["1"])
        w.add_seen("gone", ["1"])
    newer_behind = profile("behind", {"t.view:0": 7}, seed=3)
    records = {
        "ahead": encode_changelog(encode_profile(profile("ahead", {"t.view:0": 4}, seed=4)), ["x"]),
        "behind": encode_changelog(encode_profile(newer_behind), ["2"]),
        "new": encode_changelog(encode_profile(profile("new", {"t.view:0": 2}, seed=5)), ["3"]),
        "gone": None,
    }
    stats = merge(store, records)
    assert (stats.records, stats.taken, stats.kept, stats.deleted) == (4, 2, 1, 1)
    with store.read() as r:
        assert r.get_profile("ahead") == ahead
        assert r.get_profile("behind") == newer_behind
        assert r.get_profile("new") == profile("new", {"t.view:0": 2}, seed=5)
        assert r.get_profile("gone") is None and r.get_seen("gone") == set()
        assert r.get_seen("behind") == {"1", "2"} and r.get_seen("ahead") == {"x"}
    store.close()


def test_merge_stores_the_next_changelog_offsets_in_the_same_transaction(tmp_path: Path):
    store = LmdbStore(tmp_path / "s", map_size_mb=16)
    merge(store, {"u": encode_changelog(encode_profile(profile("u", {"t.view:0": 1})), [])}, "cl", {0: 5, 3: 0})
    with store.read() as r:
        assert r.get_offsets() == {("cl", 0): 5, ("cl", 3): 0}
        assert r.get_profile("u") is not None
    with pytest.raises(RecordError):  # a bad record: nothing of the merge is committed
        merge(store, {"v": b"\x09junk"}, "cl", {0: 9})
    with store.read() as r:
        assert r.get_offsets()[("cl", 0)] == 5 and r.get_profile("v") is None
    store.close()


def test_checkpoints_only_raise_restore_positions(tmp_path: Path):
    store = LmdbStore(tmp_path / "s", map_size_mb=16)
    merge(store, {}, "cl", {0: 10, 1: 3})
    advance_positions(store, "cl", {0: 7, 1: 8, 2: 1})
    with store.read() as r:
        assert r.get_offsets() == {("cl", 0): 10, ("cl", 1): 8, ("cl", 2): 1}
    store.close()


def test_collect_sends_stored_profiles_to_their_input_partition(tmp_path: Path):
    store = LmdbStore(tmp_path / "s", map_size_mb=16)
    rec = profile("u1", {"t.view:3": 0})
    with store.write() as w:
        w.put_profile(rec)
        w.add_seen("u1", ["7", "8"])
    windows = [
        UserWindow("u1", [Event("u1", "7", 0, 0, "t.view:3", 0)]),
        UserWindow("nobody", [Event("nobody", "7", 0, 0, "t.view:1", 4)]),  # wrote nothing
    ]
    ((partition, key, value),) = collect(store, windows)
    assert (partition, key) == (3, b"u1")
    assert decode_changelog(value) == (rec, {"7", "8"})
    store.close()
