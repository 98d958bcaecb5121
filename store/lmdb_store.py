"""The LMDB environment that holds items, profiles, seen items, offsets and counters.

Layout: one environment (a directory), seven named databases, keys are UTF-8 ids of at most
511 bytes (LMDB's key limit; longer or empty ids raise ``ValueError``):

============  ==========================  =============================================
database      key                         value
============  ==========================  =============================================
items         item id                     :func:`store.records.encode_item`
profiles      user id                     :func:`store.records.encode_profile` (vectors,
                                          weights, counters, applied offsets)
history       user id                     :func:`store.records.encode_history` (bounded
                                          recent events, recent event-id hashes)
seen          user id (dupsort)           one value per item id the user interacted with
offsets       topic ``\\0`` partition u32  highest consumed input offset, int64 (for the
                                          profiles changelog: the next offset to restore from)
counters      counter name                int64
meta          name                        ``schema`` -> layout version
============  ==========================  =============================================

A profile and its history are always written and deleted together, in one transaction.
Schema 1 stores (no ``history`` database, histories inside version-2 profile records) are
upgraded on the first writable open; their records are rewritten as they change.

Commit order (exactly-once for profiles). A flush must:

1. write the profiles, seen items, counters **and the input offsets it consumed** in one
   :meth:`LmdbStore.write` block, which is one LMDB write transaction;
2. leave the block normally, which commits (fsync'd: ``sync=True``, ``map_async=False``);
3. only then ack / commit the Kafka events (the worker first sends the committed profiles to
   the changelog topic and waits for delivery, see :mod:`stream.changelog`).

A crash before 2 loses the whole flush, and Kafka redelivers it; a crash between 2 and 3
redelivers events the profiles already hold, and the per-profile ``applied`` offsets skip them.
The offsets database tells a restarted worker where its store stands.

Concurrency. One writer per environment: one :class:`LmdbStore` per path per process, and one
process writing. Write blocks are serialised by a lock and must run start-to-end on one thread
(py-lmdb write transactions are thread-bound); keep them off the event loop (an executor
thread). Read blocks are MVCC snapshots: they never block the writer nor wait for it, and any
thread may use them. Keep them short: a long reader pins old pages (the file grows) and
delays map growth.

Map growth. Before each write block, if the used pages exceed 70% of the map, the map
doubles. If a write still hits ``MDB_MAP_FULL`` (one large flush), the transaction is
aborted, the map doubled, and the writes made so far in the block replayed into a fresh
transaction, transparently; the block's code does not run twice. Each write block journals
its puts and deletes for that purpose (references to bytes already built; released at the
end of the block). Nothing is ever committed half-way and nothing is dropped: if the map
cannot grow (see ``max_map_size_mb``), the block raises :class:`StoreError` and commits nothing.
Growing needs no read transaction open in this process: growth before a block is skipped
while readers are open, and growth on a full map waits up to 30 s for them. A read-only
store in another process (``recstream inspect``) adopts the new size on its next read.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from store.records import (
    VECTOR_DTYPES,
    HistoryEntry,
    ItemRecord,
    ProfileRecord,
    decode_history,
    decode_item,
    decode_profile,
    encode_history,
    encode_item,
    encode_profile,
)

__all__ = ["LmdbStore", "ReadTxn", "StoreError", "WriteTxn"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: Older schemas this code opens: 1 lacks the ``history`` database (upgraded when opened writable).
READABLE_SCHEMAS = (1, SCHEMA_VERSION)
DB_NAMES = ("items", "profiles", "history", "seen", "offsets", "counters", "meta")
MAX_KEY_BYTES = 511
GROW_AT = 0.70
#: Waiting longer than this for read transactions to end before growing the map is an error.
READERS_TIMEOUT_S = 30.0

_I64 = struct.Struct("<q")
_PARTITION = struct.Struct(">I")
_MB = 1 << 20


class StoreError(RuntimeError):
    """The store cannot do what was asked (cannot open, read-only, disk or map full); one line."""


def _key(kind: str, value: str) -> bytes:
    b = value.encode("utf-8")
    if not b or len(b) > MAX_KEY_BYTES:
        raise ValueError(f"{kind} id must be 1..{MAX_KEY_BYTES} UTF-8 bytes, got {len(b)}: {value[:40]!r}")
    return b


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class ReadTxn:
    """Reads over one LMDB snapshot. Valid only inside its ``with`` block."""

    def __init__(self, store: LmdbStore, txn: lmdb.Transaction) -> None:
        self._store = store
        self._txn = txn
        self._dbs = store._dbs

    def get_profile(self, user_id: str) -> ProfileRecord | None:
        parts = self.get_profile_bytes(user_id)
        return None if parts is None else decode_profile(*parts)

    def get_profile_bytes(self, user_id: str) -> tuple[bytes, bytes | None] | None:
        """The encoded profile and history records as stored (for the changelog; no
        decode/encode round trip), or None without a profile."""
        key = _key("user", user_id)
        data = self._txn.get(key, db=self._dbs["profiles"])
        if data is None:
            return None
        return data, self._get_history(key)

    def _get_history(self, key: bytes) -> bytes | None:
        db = self._dbs["history"]
        return None if db is None else self._txn.get(key, db=db)

    def _stored_history(self, key: bytes, profile: bytes | None = None) -> list[HistoryEntry]:
        """The history stored under ``key`` ([] without a profile), vectors left undecoded."""
        data = self._get_history(key)
        if data is not None:
            return decode_history(data)[0]
        if profile is None:
            profile = self._txn.get(key, db=self._dbs["profiles"])
        return [] if profile is None else decode_profile(profile).history  # versions 1-2 keep it inside

    def iter_histories(self) -> Iterator[tuple[str, list[HistoryEntry]]]:
        """Every profile's (user id, history) in user-id byte order, without decoding vectors."""
        for key, value in self._txn.cursor(db=self._dbs["profiles"]):
            yield key.decode("utf-8"), self._stored_history(key, value)

    def get_profiles(self, user_ids: Iterable[str]) -> dict[str, ProfileRecord]:
        """The stored profiles among ``user_ids``; users without one are absent."""
        out = {}
        for user_id in user_ids:
            rec = self.get_profile(user_id)
            if rec is not None:
                out[user_id] = rec
        return out

    def get_seen(self, user_id: str) -> set[str]:
        cur = self._txn.cursor(db=self._dbs["seen"])
        if not cur.set_key(_key("user", user_id)):
            return set()
        return {v.decode("utf-8") for v in cur.iternext_dup(keys=False, values=True)}

    def get_item(self, item_id: str) -> ItemRecord | None:
        data = self._txn.get(_key("item", item_id), db=self._dbs["items"])
        return None if data is None else decode_item(data)

    def iter_items(self) -> Iterator[ItemRecord]:
        """All items in item-id byte order."""
        for value in self._txn.cursor(db=self._dbs["items"]).iternext(keys=False, values=True):
            yield decode_item(value)

    def iter_profiles(self) -> Iterator[ProfileRecord]:
        """All profiles in user-id byte order."""
        for key, value in self._txn.cursor(db=self._dbs["profiles"]):
            yield decode_profile(value, self._get_history(key))

    def get_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the highest input offset a committed flush consumed."""
        out = {}
        for k, v in self._txn.cursor(db=self._dbs["offsets"]):
            topic, partition = k[:-5].decode("utf-8"), _PARTITION.unpack(k[-4:])[0]
            out[(topic, partition)] = _I64.unpack(v)[0]
        return out

    def counters(self) -> dict[str, int]:
        return {
            k.decode("utf-8"): _I64.unpack(v)[0] for k, v in self._txn.cursor(db=self._dbs["counters"])
        }


class WriteTxn(ReadTxn):
    """Reads and writes in the one write transaction of a :meth:`LmdbStore.write` block.

    Reads see this block's own writes. Every mutation goes through :meth:`_apply`, which
    journals it so the store can replay the block after growing a full map.
    """

    def __init__(self, store: LmdbStore, txn: lmdb.Transaction) -> None:
        super().__init__(store, txn)
        self._journal: list[tuple[str, str, bytes, Any]] = []
        #: (before, after) history per profile written or forgot, if the store reports them.
        self.history_changes: list[tuple[list[HistoryEntry], list[HistoryEntry]]] | None = (
            [] if store.on_history_change is not None else None)

    def put_profile(self, rec: ProfileRecord, previous: list[HistoryEntry] | None = None) -> None:
        """Store ``rec`` and its history; ``previous``, the history stored before, when the
        caller has it (saves reading it back when history changes are reported)."""
        key = _key("user", rec.user_id)
        if self.history_changes is not None:
            before = self._stored_history(key) if previous is None else previous
            self.history_changes.append((before, list(rec.history)))
        self._apply("put", "profiles", key, encode_profile(rec, self._store.vector_dtype))
        self._apply("put", "history", key, encode_history(rec))

    def add_seen(self, user_id: str, item_ids: Iterable[str]) -> None:
        """Add ``item_ids`` to the user's seen set (already-present ids are ignored)."""
        key = _key("user", user_id)
        values = tuple(_key("item", item_id) for item_id in item_ids)
        if values:
            self._apply("put_each", "seen", key, values)

    def put_item(self, rec: ItemRecord) -> None:
        self._apply("put", "items", _key("item", rec.item_id), encode_item(rec))

    def delete_item(self, item_id: str) -> bool:
        """Delete the item; True if it existed. Users' seen sets keep the id."""
        return self._apply("delete", "items", _key("item", item_id), b"")

    def put_offset(self, topic: str, partition: int, offset: int) -> None:
        """Record the highest input offset consumed on (topic, partition); overwrites."""
        key = _key("topic", topic) + b"\0" + _PARTITION.pack(partition)
        self._apply("put", "offsets", key, _I64.pack(offset))

    def incr(self, counter: str, n: int = 1) -> None:
        key = _key("counter", counter)
        old = self._txn.get(key, db=self._dbs["counters"])
        value = (_I64.unpack(old)[0] if old is not None else 0) + n
        self._apply("put", "counters", key, _I64.pack(value))

    def forget(self, user_id: str) -> bool:
        """Delete the user's profile (history, counts, applied offsets, recent event ids) and
        seen set; True if any existed. Aggregate counters hold no user id and are kept.

        The ids leave every database. LMDB reuses freed pages later, so old bytes can remain
        in the file until then; copy the environment with compaction to purge them at once.
        """
        key = _key("user", user_id)
        if self.history_changes is not None:
            before = self._stored_history(key)
            if before:
                self.history_changes.append((before, []))
        had_profile = self._apply("delete", "profiles", key, b"")
        self._apply("delete", "history", key, b"")
        had_seen = self._apply("delete", "seen", key, b"")  # b"" value: all duplicates
        return bool(had_profile or had_seen)

    def _apply(self, op: str, db_name: str, key: bytes, value: bytes | tuple[bytes, ...]) -> bool:
        entry = (op, db_name, key, value)
        self._journal.append(entry)
        try:
            return self._run(entry)
        except lmdb.MapFullError:
            self._store._regrow(self)
            return self._last_result

    def _run(self, entry: tuple[str, str, bytes, Any]) -> bool:
        op, db_name, key, value = entry
        db = self._dbs[db_name]
        try:
            if op == "put":
                return self._txn.put(key, value, db=db, dupdata=False)
            if op == "put_each":  # many values under one key of a dupsort database: one call
                return self._txn.cursor(db=db).putmulti([(key, v) for v in value], dupdata=False)[1] > 0
            if op == "add":  # insert unless present; False when it was
                return self._txn.put(key, value, db=db, overwrite=False)
            return self._txn.delete(key, value, db=db)
        except lmdb.MapFullError:
            raise
        except lmdb.Error as exc:
            raise StoreError(f"LMDB write failed in {self._store.path}: {_one_line(exc)}") from None

    def _replay(self, txn: lmdb.Transaction) -> None:
        """Re-apply the journal on a fresh transaction (after the map grew)."""
        self._txn = txn
        self._last_result = False
        for entry in self._journal:
            self._last_result = self._run(entry)


class LmdbStore:
    """One LMDB environment at ``path`` (a directory, created if missing).

    :param path: the environment directory.
    :param map_size_mb: initial map size; never less than the data already in ``path``.
        The map grows by doubling (see the module docstring); the size is not persisted
        beyond the data, so a reopened store may grow again on its first write.
    :param readonly: open for reading only; :meth:`write` then raises :class:`StoreError`.
    :param max_map_size_mb: growth stops here; a write that needs more raises StoreError.
    :param durable: fsync on every commit (default). ``False`` is for scratch stores (replay):
        a crash may then lose recent commits, so never use it where offsets are kept.
    :param vector_dtype: how profile vectors are written (``float32`` or ``float16``); records
        of either dtype are read.
    :raises StoreError: the path cannot be created or opened (permissions, read-only file
        system, not a recstream store, newer schema).
    """

    def __init__(
        self,
        path: Path,
        map_size_mb: int = 1024,
        readonly: bool = False,
        max_map_size_mb: int = 1 << 20,
        durable: bool = True,
        vector_dtype: str = "float32",
    ) -> None:
        if vector_dtype not in VECTOR_DTYPES:
            raise ValueError(f"vector_dtype must be one of {', '.join(VECTOR_DTYPES)}, got {vector_dtype!r}")
        self.vector_dtype = vector_dtype
        self.path = Path(path)
        self.readonly = readonly
        self.max_map_size = max_map_size_mb * _MB
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._readers = 0
        #: Called with the seconds each successful commit took (metrics); on the writer thread.
        self.on_commit: Callable[[float], None] | None = None
        #: When set, called after each successful commit with the (before, after) histories of
        #: every profile the block wrote or forgot, in order; on the writer thread. Derived
        #: state (``stream.signals``) follows the stored histories through it.
        self.on_history_change: Callable[[list[tuple[list[HistoryEntry], list[HistoryEntry]]]], None] | None = None
        try:
            if not readonly:
                self.path.mkdir(parents=True, exist_ok=True)
            elif not (self.path / "data.mdb").exists():
                raise StoreError(f"no LMDB store at {self.path}")
            self._env = lmdb.open(
                str(self.path), map_size=max(1, map_size_mb) * _MB, max_dbs=len(DB_NAMES) + 2,
                subdir=True, readonly=readonly, lock=True, writemap=False, map_async=False,
                sync=durable, metasync=durable, create=not readonly,
            )
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"cannot open LMDB store at {self.path}: {_one_line(exc)}") from None
        try:
            self._dbs = self._open_dbs()
        except BaseException:
            self._env.close()
            raise

    def _open_dbs(self) -> dict[str, Any]:
        try:
            if self.readonly:
                # py-lmdb: handles opened inside a read txn die with it; without one they persist.
                dbs = {n: self._open_existing(n) for n in DB_NAMES}
                if dbs["meta"] is not None:
                    with self._env.begin() as txn:
                        self._check_schema(txn.get(b"schema", db=dbs["meta"]))
                if any(db is None for n, db in dbs.items() if n != "history"):  # history: schema 1
                    raise lmdb.NotFoundError("missing databases")
            else:
                with self._env.begin(write=True) as txn:
                    raw = txn.get(b"schema", db=self._env.open_db(b"meta", txn=txn))
                    if raw is not None:
                        self._check_schema(raw)
                    dbs = {n: self._env.open_db(n.encode(), txn=txn, dupsort=n == "seen") for n in DB_NAMES}
                    txn.put(b"schema", _I64.pack(SCHEMA_VERSION), db=dbs["meta"])  # new, or upgraded
        except lmdb.NotFoundError:
            raise StoreError(f"{self.path} is not a recstream store (missing databases)") from None
        except lmdb.Error as exc:
            raise StoreError(f"cannot open LMDB store at {self.path}: {_one_line(exc)}") from None
        return dbs

    def _open_existing(self, name: str) -> Any:
        try:
            return self._env.open_db(name.encode(), create=False, dupsort=name == "seen")
        except lmdb.NotFoundError:
            return None

    def _check_schema(self, raw: bytes | None) -> None:
        schema = _I64.unpack(raw)[0] if raw else None
        if schema not in READABLE_SCHEMAS:
            readable = ", ".join(map(str, READABLE_SCHEMAS))
            raise StoreError(f"{self.path} has store schema {schema}, this code reads {readable}")

    def forget_user(self, user_id: str) -> bool:
        """Erase everything the store holds about ``user_id`` in one write transaction.

        True if anything was there. Call it on the store's writer thread (the worker's
        store owner, stream.owner), like any write block.
        """
        with self.write() as w:
            return w.forget(user_id)

    def close(self) -> None:
        """Close the environment; idempotent. No transaction may be open."""
        self._env.close()

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def read(self) -> Iterator[ReadTxn]:
        """A read-only snapshot; it does not see writes committed after it began."""
        with self._cond:
            self._readers += 1
        try:
            try:
                txn = self._env.begin(buffers=False)
            except lmdb.MapResizedError:  # another process grew the map: adopt its size
                self._adopt_mapsize(others=1)
                txn = self._env.begin(buffers=False)
            try:
                yield ReadTxn(self, txn)
            finally:
                txn.abort()
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[WriteTxn]:
        """One LMDB write transaction: commits on normal exit, aborts if the block raises.

        Blocks are serialised; see the module docstring for commit order and map growth.
        :raises StoreError: read-only store, disk full, map cannot grow, other LMDB failures.
        """
        if self.readonly:
            raise StoreError(f"store at {self.path} is open read-only")
        with self._write_lock:
            self._grow_if_needed()
            wtxn = WriteTxn(self, self._begin_write())
            try:
                yield wtxn
            except BaseException:
                wtxn._txn.abort()
                raise
            self._commit(wtxn)
            if wtxn.history_changes and self.on_history_change is not None:
                self.on_history_change(wtxn.history_changes)

    def stats(self) -> dict[str, int | float]:
        """Entries per database, map size and used bytes (a point-in-time snapshot)."""
        out: dict[str, int | float] = {}
        with self.read() as r:
            for name in DB_NAMES:
                db = self._dbs[name]
                out[name] = 0 if db is None else r._txn.stat(db)["entries"]
        info, psize = self._env.info(), self._env.stat()["psize"]
        out["map_size_bytes"] = info["map_size"]
        out["used_bytes"] = (info["last_pgno"] + 1) * psize
        out["used_fraction"] = out["used_bytes"] / info["map_size"]
        out["readers"] = info["num_readers"]
        return out

    # -- internals (caller holds _write_lock) ----------------------------------------------

    def _begin_write(self) -> lmdb.Transaction:
        try:
            return self._env.begin(write=True, buffers=False)
        except lmdb.MapResizedError:
            self._adopt_mapsize(others=0)
            return self._env.begin(write=True, buffers=False)
        except lmdb.Error as exc:
            raise StoreError(f"cannot begin a write on {self.path}: {_one_line(exc)}") from None

    def _commit(self, wtxn: WriteTxn) -> None:
        for _ in range(8):
            try:
                started = time.perf_counter()
                wtxn._txn.commit()  # LMDB ends the transaction even when commit fails
                if self.on_commit is not None:
                    self.on_commit(time.perf_counter() - started)
                return
            except lmdb.MapFullError:
                self._regrow(wtxn, aborted=True)
            except lmdb.Error as exc:
                raise StoreError(f"LMDB commit failed on {self.path}: {_one_line(exc)}") from None
        raise StoreError(f"LMDB map full at {self._env.info()['map_size'] // _MB} MB after growing; raise store.map_size_mb")

    def _used_and_size(self) -> tuple[int, int]:
        info = self._env.info()
        return (info["last_pgno"] + 1) * self._env.stat()["psize"], info["map_size"]

    def _grow_if_needed(self) -> None:
        used, size = self._used_and_size()
        if used <= GROW_AT * size or size >= self.max_map_size:
            return
        with self._cond:
            if self._readers:  # not safe now; MAP_FULL handling will grow later if needed
                return
            self._set_mapsize(size * 2)

    def _regrow(self, wtxn: WriteTxn, aborted: bool = False) -> None:
        """Abort, double the map, replay the block's writes; raise StoreError if it cannot grow."""
        if not aborted:
            wtxn._txn.abort()
        size = self._env.info()["map_size"]
        if size >= self.max_map_size:
            raise StoreError(f"LMDB map full at {size // _MB} MB (max_map_size_mb reached) in {self.path}")
        with self._cond:
            if not self._cond.wait_for(lambda: self._readers == 0, timeout=READERS_TIMEOUT_S):
                raise StoreError(
                    f"LMDB map full at {size // _MB} MB in {self.path} and read transactions stayed open "
                    f"{READERS_TIMEOUT_S:.0f} s; cannot grow it"
                )
            self._set_mapsize(min(size * 2, self.max_map_size))
        txn = self._begin_write()
        try:
            wtxn._replay(txn)
        except lmdb.MapFullError:
            self._regrow(wtxn)

    def _set_mapsize(self, size: int) -> None:
        """Caller holds ``_cond`` with no readers and no write transaction open."""
        size = -(-size // _MB) * _MB
        try:
            self._env.set_mapsize(size)
        except lmdb.Error as exc:
            raise StoreError(f"cannot grow LMDB map of {self.path} to {size // _MB} MB: {_one_line(exc)}") from None
        log.info("grew LMDB map of %s to %d MB", self.path, size // _MB)

    def _adopt_mapsize(self, others: int) -> None:
        """Take the map size another process set; ``others``: this thread's own reader count."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._readers <= others, timeout=READERS_TIMEOUT_S):
                raise StoreError(f"LMDB map of {self.path} grew elsewhere and read transactions stay open here")
            self._env.set_mapsize(0)
