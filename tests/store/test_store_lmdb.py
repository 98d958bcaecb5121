"""LmdbStore: durability across reopen, atomic write blocks, forget, map growth, MVCC readers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from store_helpers import dump_all, make_item, make_profile

from store import LmdbStore, StoreError


class Boom(Exception):
    pass


def fill(store: LmdbStore) -> None:
    with store.write() as w:
        w.put_profile(make_profile("u1"))
        w.put_profile(make_profile("ü-2", seed=2, history=3))
        w.add_seen("u1", ["10", "20", "30"])
        w.add_seen("u1", ["20"])  # already there: ignored
        w.put_item(make_item("10"))
        w.put_offset("t.view", 0, 41)
        w.put_offset("t.view", 3, 7)
        w.incr("events.view", 5)
        w.incr("events.view")


def test_write_close_reopen_reads_equal_records(store_path: Path):
    store = LmdbStore(store_path, map_size_mb=16)
    fill(store)
    store.close()
    store = LmdbStore(store_path, map_size_mb=16)
    with store.read() as r:
        assert r.get_profile("u1") == make_profile("u1")
        assert r.get_profiles(["u1", "ü-2", "nobody"]) == {
            "u1": make_profile("u1"), "ü-2": make_profile("ü-2", seed=2, history=3)}
        assert r.get_seen("u1") == {"10", "20", "30"}
        assert r.get_seen("nobody") == set()
        assert r.get_item("10") == make_item("10")
        assert r.get_item("11") is None
        assert [i.item_id for i in r.iter_items()] == ["10"]
        assert sorted(p.user_id for p in r.iter_profiles()) == ["u1", "ü-2"]
        assert r.get_offsets() == {("t.view", 0): 41, ("t.view", 3): 7}
        assert r.counters() == {"events.view": 6}
    stats = store.stats()
    assert (stats["profiles"], stats["seen"], stats["items"], stats["offsets"]) == (2, 3, 1, 2)
    assert 0 < stats["used_bytes"] <= stats["map_size_bytes"]
    store.close()
    ro = LmdbStore(store_path, readonly=True)
    with ro.read() as r:
        assert r.get_profile("u1") == make_profile("u1")
    with pytest.raises(StoreError, match="read-only"):
        with ro.write():
            pass
    ro.close()


def test_write_block_reads_its_own_writes(store):
    with store.write() as w:
        w.add_seen("u1", ["a"])
        w.put_profile(make_profile("u1"))
        assert w.get_seen("u1") == {"a"}
        assert w.get_profile("u1") == make_profile("u1")


def test_raising_write_block_aborts_everything(store):
    fill(store)
    before = dump_all_live(store)
    with pytest.raises(Boom):
        with store.write() as w:
            w.put_profile(make_profile("u9"))
            w.add_seen("u9", ["1"])
            w.put_item(make_item("99"))
            assert w.delete_item("10")
            assert w.forget("u1")
            w.incr("events.view", 100)
            raise Boom
    assert dump_all_live(store) == before


def test_offsets_and_profiles_commit_together_or_not_at_all(store):
    """Commit order step 1: the flush's offsets ride in the same transaction as its profiles."""
    with pytest.raises(Boom):
        with store.write() as w:
            w.put_profile(make_profile("u1"))
            w.put_offset("t.click", 1, 100)
            raise Boom
    with store.read() as r:
        assert r.get_profile("u1") is None and r.get_offsets() == {}
    with store.write() as w:
        w.put_profile(make_profile("u1"))
        w.put_offset("t.click", 1, 100)
    with store.read() as r:
        assert r.get_profile("u1") is not None and r.get_offsets() == {("t.click", 1): 100}


def test_forget_leaves_no_trace_of_the_user(store_path: Path):
    user = "forget-me-7f3a"
    store = LmdbStore(store_path, map_size_mb=16)
    fill(store)
    with store.write() as w:
        w.put_profile(make_profile(user, seed=5))
        w.add_seen(user, ["10", "42"])
    with store.write() as w:
        assert w.forget(user) is True
        assert w.forget(user) is False
        assert w.forget("never-seen") is False
    with store.read() as r:
        assert r.get_profile(user) is None and r.get_seen(user) == set()
        assert r.get_seen("u1") == {"10", "20", "30"}  # others untouched
    store.close()
    rows = dump_all(store_path)
    assert {db for db, _, _ in rows} >= {"", "items", "profiles", "seen", "offsets", "counters", "meta"}
    needle = user.encode()
    assert [(db, k) for db, k, v in rows if needle in k or needle in v] == []


def test_delete_item(store):
    fill(store)
    with store.write() as w:
        assert w.delete_item("10") is True
        assert w.delete_item("10") is False
    with store.read() as r:
        assert r.get_item("10") is None


@pytest.mark.parametrize("bad", ["", "x" * 512, "ü" * 256])
def test_ids_beyond_lmdb_key_limit_raise_value_error(store, bad):
    with pytest.raises(ValueError, match="1..511 UTF-8 bytes"):
        with store.write() as w:
            w.put_profile(make_profile(bad))
    with store.write() as w:
        w.put_profile(make_profile("x" * 511))  # the limit itself is fine
    with pytest.raises(ValueError):
        with store.read() as r:
            r.get_seen(bad)


def test_map_grows_from_1mb_without_losing_writes(store_path: Path):
    store = LmdbStore(store_path, map_size_mb=1)
    assert store.stats()["map_size_bytes"] == 1 << 20
    profiles = [make_profile(f"user-{i}", seed=i) for i in range(1500)]  # ~5.4 MB of values
    with store.write() as w:  # one block far bigger than the map: MAP_FULL, grow, replay
        for p in profiles[:600]:
            w.put_profile(p)
            w.add_seen(p.user_id, [f"i{len(p.user_id)}", p.user_id, p.user_id])  # one id twice
            w.incr("n")
    for start in range(600, 1500, 100):  # then many small blocks: growth before the txn
        with store.write() as w:
            for p in profiles[start : start + 100]:
                w.put_profile(p)
                w.add_seen(p.user_id, [f"i{len(p.user_id)}", p.user_id, p.user_id])
                w.incr("n")
    grown = store.stats()["map_size_bytes"]
    store.close()
    assert grown >= 8 << 20
    store = LmdbStore(store_path, map_size_mb=1)
    with store.read() as r:
        assert r.counters() == {"n": 1500}
        stored = {p.user_id: p for p in r.iter_profiles()}
        assert all(r.get_seen(p.user_id) == {f"i{len(p.user_id)}", p.user_id} for p in profiles)
    assert len(stored) == 1500 and all(stored[p.user_id] == p for p in profiles)
    with store.write() as w:  # a reopened store at 100% of its map still takes writes
        w.put_profile(make_profile("one-more"))
    store.close()


def test_map_full_at_the_cap_raises_and_commits_nothing(store_path: Path):
    store = LmdbStore(store_path, map_size_mb=1, max_map_size_mb=2)
    with pytest.raises(StoreError, match="map full"):
        with store.write() as w:
            for i in range(1000):
                w.put_profile(make_profile(f"user-{i}", seed=i))
    with store.read() as r:
        assert list(r.iter_profiles()) == []
    store.close()


def test_open_reader_does_not_block_writer_and_keeps_its_snapshot(store):
    fill(store)
    done = threading.Event()

    def writer():
        for i in range(5):
            with store.write() as w:
                w.put_profile(make_profile(f"new-{i}", seed=i))
                w.incr("events.view")
        done.set()

    with store.read() as snapshot:
        t = threading.Thread(target=writer)
        t.start()
        assert done.wait(10), "writer blocked by an open read transaction"
        assert snapshot.get_profile("new-0") is None
        assert snapshot.counters() == {"events.view": 6}
        with store.read() as fresh:
            assert fresh.get_profile("new-4") is not None
            assert fresh.counters() == {"events.view": 11}
    t.join()


def test_reader_in_another_process_follows_map_growth(store_path: Path):
    """``recstream inspect`` (read-only) keeps working while the worker grows the map.

    A child process, since LMDB forbids opening one environment twice in a process.
    """
    writer = LmdbStore(store_path, map_size_mb=1)
    fill(writer)
    script = (
        "import sys\n"
        "from store import LmdbStore\n"
        "s = LmdbStore(sys.argv[1], map_size_mb=1, readonly=True)\n"
        "with s.read() as r: print(len(list(r.iter_profiles())), flush=True)\n"
        "sys.stdin.readline()\n"
        "with s.read() as r: print(len(list(r.iter_profiles())), flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", script, str(store_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "2"
        for start in range(0, 1000, 100):
            with writer.write() as w:
                for i in range(start, start + 100):
                    w.put_profile(make_profile(f"user-{i}", seed=i))
        assert writer.stats()["map_size_bytes"] > 1 << 20
        out, err = child.communicate("go\n", timeout=30)
        assert out.strip() == "1002", err
    finally:
        child.kill()
        writer.close()


def test_unopenable_paths_raise_one_line_store_error(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="a-file") as exc:
        LmdbStore(blocker / "store.lmdb")
    assert "\n" not in str(exc.value)
    with pytest.raises(StoreError, match="no LMDB store"):
        LmdbStore(tmp_path / "missing", readonly=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_directory_raises_store_error(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(StoreError, match="locked"):
            LmdbStore(locked / "store.lmdb")
    finally:
        locked.chmod(0o700)


def test_concurrent_write_blocks_are_serialised(store):
    def bump():
        for _ in range(50):
            with store.write() as w:
                w.incr("c")
                time.sleep(0)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with store.read() as r:
        assert r.counters() == {"c": 200}


def dump_all_live(store: LmdbStore) -> dict[str, list[tuple[bytes, bytes]]]:
    """The contents of every named db through the store's own handles."""
    with store.read() as r:
        return {name: list(r._txn.cursor(db=db)) for name, db in store._dbs.items()}


def _schema_1_store(path: Path, profile_v2: bytes) -> None:
    """A store as schema 1 wrote it: no ``history`` database, the history inside the profile."""
    import lmdb  # noqa: PLC0415

    env = lmdb.open(str(path), max_dbs=8, map_size=1 << 24)
    with env.begin(write=True) as txn:
        dbs = {n: env.open_db(n.encode(), txn=txn, dupsort=n == "seen")
               for n in ("items", "profiles", "seen", "offsets", "counters", "meta")}
        txn.put(b"schema", (1).to_bytes(8, "little"), db=dbs["meta"])
        txn.put(b"u-2", profile_v2, db=dbs["profiles"])
    env.close()


def test_schema_1_stores_are_read_and_upgraded_in_place(tmp_path: Path):
    from test_store_records import PROFILE_V2_HEX  # noqa: PLC0415

    path = tmp_path / "old"
    _schema_1_store(path, bytes.fromhex(PROFILE_V2_HEX))
    with LmdbStore(path, readonly=True) as old:  # a reader of an old store: no history database yet
        with old.read() as r:
            before = r.get_profile("u-2")
        assert [h.item_id for h in before.history] == ["10", "20"] and old.stats()["history"] == 0
    with LmdbStore(path) as store:  # the first writable open upgrades the schema
        with store.read() as r:
            assert r.get_profile("u-2") == before
        before.event_count += 1
        with store.write() as w:
            w.put_profile(before)  # rewritten in the new layout: profile + history records
        assert store.stats()["history"] == 1
    with LmdbStore(path, readonly=True) as store, store.read() as r:
        assert r.get_profile("u-2") == before
        assert list(r.iter_profiles()) == [before]


def test_newer_schemas_are_refused(tmp_path: Path):
    import lmdb  # noqa: PLC0415

    path = tmp_path / "future"
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"schema", (99).to_bytes(8, "little"), db=env.open_db(b"meta", txn=txn))
    env.close()
    for readonly in (False, True):
        with pytest.raises(StoreError, match="schema 99"):
            LmdbStore(path, readonly=readonly)
