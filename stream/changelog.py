"""Profiles follow their partitions: a compacted changelog topic is the source of truth.

Each worker keeps its partitions' profiles in its own LMDB, and after every flush sends the
profiles it wrote to ``<prefix>profiles-changelog`` (compacted, partitioned like the inputs,
keyed by user id, value :func:`store.encode_changelog`: profile and history records + seen item ids). The
profile record carries its per-partition ``applied`` offsets, so a changelog value says
exactly which events it holds.

Flush order (see docs/architecture.md): LMDB commit → recommendations → changelog records
sent **and delivered** → ack input. Whatever a worker acked is therefore in the changelog.

When a worker is assigned a partition it did not hold, it restores that changelog partition
into its LMDB before it processes any event of the partition (:meth:`Changelog.ensure` gates
the agent; the ``on_partitions_assigned`` signal only starts the restore early). Per user the
restore keeps whichever of the local and the changelog record holds more events
(:func:`holds_more`); both are prefixes of the same per-partition event sequence, so the one
with the higher applied offsets is the later state. A tombstone (``None`` value) deletes the
user. The next changelog offset to read per partition is kept in the store's ``offsets``
database in the same transaction, so a later restore of that partition reads only what was
written since (the whole partition the first time). A worker also checkpoints there, every
few seconds and when it stops, the offset after its own last delivered record: everything
before it in the partition is already in its LMDB, so a restart reads only the tail.

Standby (``store.standby``): a worker also tails the changelog partitions it does not own,
so that when one of them moves to it the restore reads only the last few records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from store import LmdbStore, ProfileRecord, decode_changelog, encode_changelog
from stream.produce import send_batched
from stream.windows import UserWindow

__all__ = ["Changelog", "RestoreStats", "advance_positions", "collect", "holds_more", "merge", "stored_positions"]

log = logging.getLogger(__name__)

#: Reading one changelog partition to its end must not take longer than this.
RESTORE_TIMEOUT_S = 300.0


def partition_of(window: UserWindow[Any]) -> int:
    """The input partition of a user's window (inputs are co-partitioned by user id)."""
    return int(window.events[0].source.rsplit(":", 1)[1])


def collect(store: LmdbStore, windows: list[UserWindow[Any]]) -> list[tuple[int, bytes, bytes]]:
    """``(partition, key, value)`` changelog records for the users of ``windows``, as stored now.

    Call right after the flush committed, in the store's owner in the same job, so that the
    snapshot is that flush's state. Users whose events were all duplicates are sent too: after a crash
    between an LMDB commit and the changelog delivery, the redelivered events find the
    profile already applied locally, and this re-send is what brings the changelog level.
    """
    out = []
    with store.read() as txn:
        for window in windows:
            parts = txn.get_profile_bytes(window.user_id)
            if parts is not None:
                value = encode_changelog(*parts, txn.get_seen(window.user_id))
                out.append((partition_of(window), window.user_id.encode("utf-8"), value))
    return out


def holds_more(a: ProfileRecord, b: ProfileRecord) -> bool:
    """True if ``a`` holds events that ``b`` lacks: some applied offset of ``a`` is higher.

    Both records are states of one user, built by applying that user's events in offset
    order per input partition, so the applied offsets order them.
    """
    return any(offset > b.applied.get(source, -1) for source, offset in a.applied.items())


@dataclass(slots=True)
class RestoreStats:
    """What a restore did to the local store."""

    records: int = 0  #: distinct users in the changelog partition
    taken: int = 0  #: changelog record written (newer than local, or no local profile)
    kept: int = 0  #: local profile kept (it already holds everything the changelog has)
    deleted: int = 0  #: tombstones applied


def merge(
    store: LmdbStore, records: dict[str, bytes | None], topic: str = "", positions: dict[int, int] | None = None
) -> RestoreStats:
    """Merge the latest changelog value per user into ``store`` in one write transaction.

    The local profile is kept when it holds everything the changelog record holds (a worker
    that committed locally but crashed before the changelog delivery); otherwise the
    changelog record replaces it. Seen sets are unioned. ``positions`` (partition → next
    offset to read of changelog ``topic``) are stored in the same transaction. Runs in the
    store's owner (stream.owner), the only writer.
    """
    stats = RestoreStats(records=len(records))
    with store.write() as txn:
        for partition, offset in (positions or {}).items():
            txn.put_offset(topic, partition, offset)
        for user_id, value in records.items():
            if value is None:
                stats.deleted += txn.forget(user_id)
                continue
            incoming, seen = decode_changelog(value)
            local = txn.get_profile(user_id)
            if local is not None and not holds_more(incoming, local):
                stats.kept += 1
            else:
                txn.put_profile(incoming)
                stats.taken += 1
            txn.add_seen(user_id, seen)
    return stats


def stored_positions(store: LmdbStore, topic: str) -> dict[int, int]:
    """Partition → next offset to read of changelog ``topic``, as stored."""
    with store.read() as txn:
        return {p: offset for (t, p), offset in txn.get_offsets().items() if t == topic}


def advance_positions(store: LmdbStore, topic: str, positions: dict[int, int]) -> None:
    """Raise the stored restore positions of ``topic`` to ``positions`` (never lowers them)."""
    with store.write() as txn:
        stored = {p: o for (t, p), o in txn.get_offsets().items() if t == topic}
        for partition, offset in positions.items():
            if offset > stored.get(partition, -1):
                txn.put_offset(topic, partition, offset)


class Changelog:
    """Publishes flushed profiles and restores newly assigned partitions; one per worker.

    :param topic: the Faust topic of the changelog (raw bytes key and value).
    :param inputs: the input topic names, to pick input partitions out of an assignment.
    :param run: ``run(fn, *args)`` awaits ``fn(store, *args)`` run by the store's single owner
        (stream.owner), the worker's only writer.
    :param checkpoint_s: how often :meth:`publish` starts storing, in the background, the
        positions after this worker's own delivered records (one small extra LMDB commit).
    Call :meth:`open` once the owner opened the store; restores wait for it.
    """

    def __init__(self, topic: Any, inputs: Iterable[str], client_config: dict[str, Any], run: Any, checkpoint_s: float = 5.0) -> None:
        self.opened = False
        self.topic = topic
        self.name = topic.get_topic_name()
        self.inputs = set(inputs)
        self.client_config = client_config  #: aiokafka connection kwargs (bootstrap, security)
        self.run = run
        self.restored: set[int] = set()
        self.assigned: set[int] = set()
        self._generation = 0
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: set[int] = set()  #: all partitions of the changelog topic
        self._delivered: dict[int, int] = {}  #: partition -> offset after our last delivered record
        self._checkpoint_s = checkpoint_s
        self._checkpointed = time.monotonic()
        self._checkpointing: asyncio.Future | None = None  #: the checkpoint in flight, if any

    async def publish(self, records: list[tuple[int, bytes, bytes]]) -> int:
        """Send ``records`` (from :func:`collect`) and wait until the broker has them all."""
        sent = await send_batched(self.topic.app, self.name, records)  # one batch per partition
        for batch, meta in zip(sent, await asyncio.gather(*(b.future for b in sent))):
            self._delivered[batch.partition] = max(self._delivered.get(batch.partition, 0), batch.next_offset(meta))
        if time.monotonic() - self._checkpointed >= self._checkpoint_s and self._checkpointing is None:
            # In the background: the owner runs it after every flush queued before it, and
            # the acks must not wait for those (a catch-up slice's: ~2 s, BENCHMARKS.md).
            self._checkpointing = asyncio.ensure_future(self.checkpoint())
            self._checkpointing.add_done_callback(self._checkpoint_done)
        return len(records)

    def _checkpoint_done(self, task: asyncio.Future) -> None:
        self._checkpointing = None
        if not task.cancelled() and task.exception() is not None:  # the next one retries
            log.warning("changelog checkpoint failed: %s", task.exception())

    async def checkpoint(self) -> None:
        """Store the positions after this worker's own delivered records (see the module doc)."""
        self._checkpointed = time.monotonic()
        if self.opened and self._delivered:
            await self.run(advance_positions, self.name, dict(self._delivered))

    def open(self) -> None:
        """Start restoring the partitions assigned so far (the store is open now)."""
        self.opened = True
        self._prefetch()

    def on_assigned(self, assigned: Iterable[Any]) -> None:
        """Rebalance hook: forget partitions not held any more, start restoring new ones.

        Synchronous bookkeeping first, so that a partition lost and later regained is
        restored again (another worker may have changed it in between).
        """
        self.assigned = {tp.partition for tp in assigned if tp.topic in self.inputs}
        self._generation += 1
        self.restored &= self.assigned
        self._prefetch()

    def _prefetch(self) -> None:
        if self.opened and self.assigned - self.restored:
            task = asyncio.ensure_future(self.ensure(set(self.assigned)))
            task.add_done_callback(_log_failure)

    async def ensure(self, partitions: set[int]) -> None:
        """Return once every partition in ``partitions`` is restored; the agent awaits this."""
        while partitions - self.restored:
            async with self._lock:
                missing = partitions - self.restored
                if missing:
                    generation = self._generation
                    await self.restore(missing)
                    if generation == self._generation:
                        self.restored |= missing

    async def standby(self) -> None:
        """One standby pass: catch up on the partitions this worker does not own."""
        if not self.opened:
            return
        async with self._lock:
            if not self._partitions:
                consumer = await self._get_consumer()
                self._partitions = consumer.partitions_for_topic(self.name) or set()
                if not self._partitions:
                    await consumer.topics()  # metadata is fetched lazily
                    return
            others = self._partitions - self.assigned
            if others:
                await self.restore(others, standby=True)

    async def restore(self, partitions: set[int], standby: bool = False) -> RestoreStats:
        """Read the changelog ``partitions`` from the stored positions to their ends and merge them."""
        if not self.opened:
            raise RuntimeError("changelog restore before the store was opened")
        started = time.monotonic()
        start = await self.run(stored_positions, self.name)
        records, positions = await asyncio.wait_for(self._read(partitions, start), RESTORE_TIMEOUT_S)
        stats = await self.run(merge, records, self.name, positions)
        log.log(logging.DEBUG if standby else logging.INFO,
                "%s %s partitions %s: %d users, %d taken, %d kept, %d deleted in %.2f s",
                "standby" if standby else "restored", self.name, sorted(partitions), stats.records, stats.taken,
                stats.kept, stats.deleted, time.monotonic() - started)
        return stats

    async def _get_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            # A short fetch wait: brokers that park empty fetches (Tansu) answer at its expiry.
            # "earliest": a stored position beyond the log (topic recreated) reads it all again.
            self._consumer = AIOKafkaConsumer(**self.client_config, group_id=None, enable_auto_commit=False,
                                              fetch_max_wait_ms=20, auto_offset_reset="earliest")
            await self._consumer.start()
        return self._consumer

    async def _read(self, partitions: set[int], start: dict[int, int]) -> tuple[dict[str, bytes | None], dict[int, int]]:
        """The latest value per key from ``start`` (partition → offset) to the end, and the end positions."""
        consumer = await self._get_consumer()
        tps = [TopicPartition(self.name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        positions = {}
        for tp in tps:
            if ends[tp] == 0 or tp.partition not in start:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start[tp.partition])
        pending = {tp for tp in tps if ends[tp] > 0}
        positions.update({tp.partition: 0 for tp in tps if ends[tp] == 0})
        latest: dict[str, bytes | None] = {}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=200, max_records=5000)
            for messages in batches.values():
                for message in messages:
                    if message.key:
                        latest[message.key.decode("utf-8")] = message.value
            # The fetch high-water mark, not end_offsets: see stream.app._caught_up (Tansu).
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None and (position := await consumer.position(tp)) >= highwater:
                    pending.discard(tp)
                    positions[tp.partition] = position
        return latest, positions

    async def stop(self) -> None:
        """Checkpoint, then close the restore consumer."""
        try:
            if self._checkpointing is not None:
                await asyncio.wait([self._checkpointing])  # its failure is logged; this one retries
            await self.checkpoint()
        finally:
            await self._close_consumer()

    async def _close_consumer(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("changelog restore failed (the agent retries before processing): %s", task.exception())
