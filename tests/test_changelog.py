"""stream.changelog without a broker: the changelog record, the merge rule, collect."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent / "store"))
from store_helpers import make_profile  # noqa: E402

from store import (  # noqa: E402
    LmdbStore, RecordError, decode_changelog, encode_changelog, encode_history, encode_profile,
)
from stream.changelog import Changelog, advance_positions, collect, holds_more, merge  # noqa: E402
from stream.events import Event  # noqa: E402
from stream.windows import UserWindow  # noqa: E402


def profile(user: str, applied: dict[str, int], seed: int = 0):
    rec = make_profile(user, dim=8, history=3, seed=seed)
    rec.applied = applied
    return rec


def record(rec, seen) -> bytes:
    return encode_changelog(encode_profile(rec), encode_history(rec), seen)


#: A version-1 changelog value (history inside its version-2 profile): must stay readable.
CHANGELOG_V1_HEX = (
    "01b5000000020300752d32b873e5cf8b01000003000000000000000200000000000000288be5cf8b010000020004000000000000003f"
    "0000a0bf00004040000000006f12833a0000004000008040000000c1000000000000f83f000000000000024003010000000000000000"
    "00000000000000010000000000000001000800742e766965773a3129000000000000000200000000020231303230e86be5cf8b010000"
    "d0070000000202000700000000000000050000000000008002000000010061010062"
)


def test_version_1_changelog_values_are_still_read():
    rec, seen = decode_changelog(bytes.fromhex(CHANGELOG_V1_HEX))
    assert (rec.user_id, rec.applied, [h.item_id for h in rec.history], rec.recent_ids, seen) == (
        "u-2", {"t.view:1": 41}, ["10", "20"], [7, 2**63 + 5], {"a", "b"}
    )


def test_changelog_record_round_trip_and_errors():
    rec = profile("u1", {"t.view:1": 5})
    data = record(rec, {"b", "a", "ü"})
    assert decode_changelog(data) == (rec, {"a", "b", "ü"})
    assert decode_changelog(record(rec, [])) == (rec, set())
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
        "ahead": record(profile("ahead", {"t.view:0": 4}, seed=4), ["x"]),
        "behind": record(newer_behind, ["2"]),
        "new": record(profile("new", {"t.view:0": 2}, seed=5), ["3"]),
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
    merge(store, {"u": record(profile("u", {"t.view:0": 1}), [])}, "cl", {0: 5, 3: 0})
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


def test_publish_does_not_wait_for_the_checkpoint_and_stop_does():
    """The checkpoint queues behind every flush already sent to the store's owner; the
    acks after a publish must not wait for them. Stop waits, then checkpoints once more."""

    async def scenario() -> None:
        held = asyncio.Event()
        calls: list[tuple] = []

        async def run_on_owner(fn, *args):  # the owner, still busy with earlier flushes
            calls.append((fn, *args))
            await held.wait()

        app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: None))
        changelog = Changelog(SimpleNamespace(get_topic_name=lambda: "cl", app=app), ["t"], {}, run_on_owner, checkpoint_s=0.0)
        changelog.opened = True
        changelog._delivered = {0: 5}  # as after a delivered publish
        await asyncio.wait_for(changelog.publish([]), 1.0)  # returns while the checkpoint waits
        assert calls == [(advance_positions, "cl", {0: 5})]
        await changelog.publish([])
        assert len(calls) == 1  # one in flight at a time
        stopping = asyncio.ensure_future(changelog.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done() and len(calls) == 1
        held.set()
        await asyncio.wait_for(stopping, 1.0)
        assert len(calls) == 2  # stop's own checkpoint, after the one in flight

    asyncio.run(scenario())


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
