"""The Faust application: topics, the event agent, catalogue sync and the idle-flush timer.

This module only wires; the maths lives in :mod:`stream.processor` and below. Data flow::

    views|clicks|purchases ─► events agent ─► WindowBuffer ─► Processor.flush (LMDB txn)
                                   │                               │
                                   └─► dlq                          └─► recommendations
    items (compacted) ─► catalogue sync (every worker reads every partition) ─► Catalogue
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from store import ItemRecord, LmdbStore
from stream.catalog import (Catalogue, InvalidItem, ItemMessage, item_text, item_vectors, parse_item,
                            split_stored_attributes, stored_attributes)
from stream.changelog import Changelog, collect
from stream.config import Settings
from stream.deadletter import dead_letter, reason_category
from stream.control import parse_control, publish_tombstones
from stream.events import InvalidEvent, parse_event
from stream.heap import SliceCollector
from stream.lag import OneBehind
from stream.privacy import Pseudonymiser, guard_payload_logs
from stream.processor import Processor
from stream.produce import log_failures, send_batched
from stream.telemetry import WorkerMetrics
from stream.security import aiokafka_config, faust_credentials
from stream.windows import UserWindow, WindowBuffer

__all__ = ["WorkerContext", "create_app"]

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class WorkerContext:
    """Everything one worker process holds: store, encoder, catalogue, window buffer.

    All LMDB writes and encoder calls run on ``executor``, a single thread, so the store has
    exactly one writer and the event loop never blocks on inference or fsync.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recstream-store")
        self.ready = asyncio.Event()
        self.flush_lock = asyncio.Lock()
        self.buffer: WindowBuffer[Any] = WindowBuffer(
            int(settings.windows.size_s * 1000), settings.windows.max_events, settings.windows.max_pending,
            settings.windows.catchup_pending,
        )
        self.last_input = time.monotonic()
        #: the input holds a backlog (see WindowSettings.catchup_pending)
        self.catching_up = False
        #: per assigned input partition, the offset of the last record taken from it
        self.read_to: dict[Any, int] = {}
        self.stats: Counter[str] = Counter()
        self.store: LmdbStore | None = None
        self.encoder: Any = None
        self.catalogue: Catalogue | None = None
        self.processor: Processor | None = None
        self.stream: Any = None
        self.stopping = False  # set on shutdown: the agent then closes every window at once
        self.revoking = False  # set from a revocation until the next assignment: likewise
        self.metrics = WorkerMetrics(self.stats, self.gauges)
        self.close_all_windows: Any = None  # set by create_app; awaited by stream.worker.Worker
        self.changelog: Any = None

    def open(self) -> None:
        """Open the store, load the encoder (exporting it once) and the stored catalogue."""
        from encoders import CachedEncoder, EmbeddingCache, load_encoder

        s = self.settings
        if s.ranking.blas_threads:
            from threadpoolctl import threadpool_limits

            threadpool_limits(s.ranking.blas_threads, user_api="blas")  # process-wide, kept
        self.store = LmdbStore(s.store.path, map_size_mb=s.store.map_size_mb, vector_dtype=s.store.vector_dtype)
        self.store.on_commit = self.metrics.observe_commit
        self.metrics.watch_gc()
        encoder = load_encoder(s.encoder)
        timed = self.metrics.timed_encoder(encoder)
        self.encoder = CachedEncoder(timed, EmbeddingCache(s.encoder.cache_dir / "embeddings.lmdb"))
        self.catalogue = Catalogue(encoder.dim)
        with self.store.read() as txn:
            stored = list(txn.iter_items())
        self.stale_items = _made_by_another_model(self.encoder, stored)
        if self.stale_items:
            log.warning("stored item vectors come from another model: re-encoding the catalogue as it is read")
        else:
            for item in stored:
                self.catalogue.upsert(item.item_id, item.vector, split_stored_attributes(item.attributes)[0], item.text)
        self.reencoded: set[str] = set()
        self.processor = Processor(s, self.store, self.catalogue, self.encoder)
        self.processor.follow_store()  # rebuilt from the store once the catalogue is in: rebuild_signals
        log.info("worker opened store %s with %d items, encoder %s", s.store.path, len(self.catalogue), encoder.providers)

    def rebuild_signals(self) -> None:
        """Recompute the hybrid's signals from the stored histories, once the catalogue
        (their rows) is loaded; on the store thread, like every change to them."""
        if self.processor is not None and self.processor.signals is not None:
            started = time.perf_counter()
            users = self.processor.signals.rebuild(self.store)
            log.info("hybrid signals rebuilt from %d stored histories in %.2f s", users, time.perf_counter() - started)

    def gauges(self) -> dict[str, float]:
        return {"pending_events": self.buffer.pending, "catalogue_items": len(self.catalogue or ()),
                "catalogue_ready": float(self.ready.is_set())}

    def upsert_items(self, items: list[Any]) -> int:
        """Encode new or changed items in one batch and store them; returns how many changed."""
        assert self.store is not None and self.catalogue is not None
        texts = [item_text(i) for i in items]
        with self.store.read() as txn:
            stored = {i.item_id: txn.get_item(i.item_id) for i in items}
        changed = [(i, t) for i, t in zip(items, texts)
                   if (old := stored[i.item_id]) is None or old.text != t or old.attributes != stored_attributes(i)
                   or (self.stale_items and i.item_id not in self.reencoded)]
        if self.stale_items:
            self.reencoded.update(i.item_id for i, _ in changed)
        if not changed:
            return 0
        vectors = item_vectors(self.encoder, [i for i, _ in changed], [t for _, t in changed])
        stamp = now_ms()
        with self.store.write() as txn:
            for (item, text), vector in zip(changed, vectors):
                txn.put_item(ItemRecord(item.item_id, item.title, text, np.asarray(vector, np.float32), stored_attributes(item), stamp))
        for (item, text), vector in zip(changed, vectors):
            self.catalogue.upsert(item.item_id, vector, item.attributes, text)
        return len(changed)


def create_app(settings: Settings) -> tuple[faust.App, WorkerContext]:
    """Build the Faust app and its worker context for ``settings``."""
    s = settings
    app = faust.App(
        s.app_id,
        broker=s.broker.url,
        broker_consumer=s.broker.url.replace("kafka://", "recstream://", 1),
        broker_credentials=faust_credentials(s.broker),
        store="memory://",
        autodiscover=False,
        datadir=str(s.store.path.parent / "faust"),
        topic_partitions=s.topics.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.broker.session_timeout_s,
        broker_rebalance_timeout=s.broker.rebalance_timeout_s,
        broker_heartbeat_interval=s.broker.heartbeat_interval_s,
        web_enabled=s.web_port > 0,
        web_port=s.web_port or 6066,
        web_bind=s.web_host,
        canonical_url=s.web_advertised_url,  # None: http://<hostname>:<web_port>
        producer_linger_ms=s.broker.producer_linger_ms,
    )
    app.recstream_fetch_max_wait_ms = s.broker.fetch_max_wait_ms  # read by stream.transport
    ctx = WorkerContext(s)
    kind_of_topic = {topic: kind for kind, topic in s.topics.inputs.items()}
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    # The control topic rides with the inputs: same group, same partitions (stream.control).
    inputs = app.topic(*s.topics.inputs.values(), s.topics.control, **raw)
    pseudonyms = Pseudonymiser(s.privacy)
    if pseudonyms.enabled:
        guard_payload_logs()
    recommendations = app.topic(s.topics.recommendations, **raw)
    dlq = app.topic(s.topics.dlq, **raw)
    changelog = Changelog(
        app.topic(s.topics.changelog, **raw), s.topics.inputs.values(), aiokafka_config(s.broker),
        lambda fn, *args: asyncio.get_running_loop().run_in_executor(ctx.executor, fn, *args),
    )
    ctx.changelog = changelog
    behind = OneBehind()

    @app.on_partitions_assigned.connect
    async def on_partitions_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        ctx.revoking = False
        for tp in [tp for tp in ctx.read_to if tp not in assigned]:  # in place: the agent holds it
            del ctx.read_to[tp]
        changelog.on_assigned(assigned)  # restores start now; the agent waits for them

    async def before_revoke(revoked: Any) -> None:
        """Apply and ack every open window before a revocation (see stream.transport).

        Until the next assignment each batch flushes whole, so no record is left pending
        behind an acked one while Faust commits the revoked partitions.
        """
        ctx.revoking = True
        pending = ctx.buffer.pending
        try:
            if pending and ctx.processor is not None:
                await flush(ctx.buffer.drain())
                log.info("rebalance: flushed %d pending events before the revocation", pending)
            await behind.drain()  # the previous flush's acks, too
        except Exception as exc:  # as a crash: un-acked records go to the next owner
            log.exception("rebalance: flushing open windows failed; stopping the worker")
            await app.crash(exc)  # Faust would otherwise wait for their acks forever

    app.recstream_before_revoke = before_revoke  # called by stream.transport before Faust revokes

    async def send_dead_letter(raw_value: bytes | None, topic: str, partition: int, offset: int, reason: str) -> None:
        ctx.stats[f"dlq.{reason_category(reason)}"] += 1
        value = dead_letter(raw_value, topic=topic, partition=partition, offset=offset, reason=reason, now_ms=now_ms())
        await dlq.send(key=None, value=value)

    def apply(windows: list[UserWindow[Any]], stamp_ms: int) -> tuple[Any, list[tuple[int, bytes, bytes]]]:
        """On the store thread: the flush's transaction, then its changelog snapshot."""
        assert ctx.processor is not None and ctx.store is not None
        return ctx.processor.flush(windows, stamp_ms), collect(ctx.store, windows)

    async def flush(windows: list[UserWindow[Any]]) -> None:
        """Apply ``windows`` in transactions of at most ``windows.flush_users`` users."""
        step = s.windows.flush_users or len(windows) or 1
        for start in range(0, len(windows), step):
            await flush_part(windows[start:start + step])

    async def flush_part(windows: list[UserWindow[Any]]) -> None:
        """Apply ``windows`` and send their recommendations; the changelog delivery and the
        acks follow one flush behind (stream.lag), except while revoking or stopping."""
        if not windows:
            return
        async with ctx.flush_lock:
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            result, snapshot = await loop.run_in_executor(ctx.executor, apply, windows, now_ms())
            # Recommendations first: they need no changelog round trip (a crash before the acks
            # replays the events, already-applied ones as duplicates, and re-sends them).
            original = {w.user_id: w.handles[0].message.key for w in windows if w.handles}  # pseudonym -> id
            recommended = {rec["user_id"] for rec in result.recommendations}
            records = []
            for rec in result.recommendations:
                key = original.get(rec["user_id"]) or rec["user_id"].encode()
                rec["user_id"] = key.decode()
                records.append((None, key, orjson.dumps(rec)))
            log_failures(await send_batched(app, s.topics.recommendations, records), "recommendations")
            ctx.metrics.observe_events(time.time(), (h.message.timestamp for w in windows if w.user_id in recommended for h in w.handles))
            await behind.submit(settle, windows, result, snapshot, started)
            if ctx.stopping or ctx.revoking:
                await behind.drain()  # nothing left un-acked while Faust commits or stops

    async def settle(windows: list[UserWindow[Any]], result: Any, snapshot: list[tuple[int, bytes, bytes]], started: float) -> None:
        """A flush's second half: changelog delivered, dead letters sent, then the acks."""
        try:
            await changelog.publish(snapshot)  # delivered before any ack: see stream.changelog
            for event, reason in result.rejected:
                topic, partition = event.source.rsplit(":", 1)
                await send_dead_letter(_raw_of(windows, event), topic, int(partition), event.offset, reason)
            for window in windows:
                for handle in window.handles:
                    await ctx.stream.ack(handle)
        except Exception as exc:  # as a crash: the un-acked records go to the next owner
            log.exception("flush: changelog delivery or acks failed; stopping the worker")
            await app.crash(exc)
            return
        ctx.stats["events.applied"] += result.applied
        ctx.stats["events.duplicates"] += result.duplicates
        ctx.stats["recommendations"] += len(result.recommendations)
        ctx.stats["flushes"] += 1
        ctx.metrics.observe_flush(time.perf_counter() - started, result.applied, len(windows))
        log.debug("flush: %d users, %d events in %.1f ms", result.users, result.applied, (time.perf_counter() - started) * 1e3)

    @app.task
    async def catalogue_sync() -> None:
        """Open the worker, then read every partition of the items topic, forever.

        No consumer group: each worker reads the whole catalogue. The event agent waits on
        ``ctx.ready``, set once the topic's end offsets at start-up have been consumed.
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(ctx.executor, ctx.open)
        changelog.open(ctx.store)
        consumer = AIOKafkaConsumer(**aiokafka_config(s.broker), group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(s.topics.items)
            while partitions is None:  # metadata is fetched lazily; ask until the topic shows
                await consumer.topics()
                partitions = consumer.partitions_for_topic(s.topics.items)
                if partitions is None:
                    await asyncio.sleep(0.5)
            tps = [TopicPartition(s.topics.items, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                valid = {}
                for tp, messages in batches.items():
                    for m in messages:
                        try:
                            valid[m.key or b""] = parse_item(m.value, s.limits)
                        except InvalidItem as exc:
                            await send_dead_letter(m.value, tp.topic, tp.partition, m.offset, str(exc))
                if valid:
                    changed = await loop.run_in_executor(ctx.executor, ctx.upsert_items, list(valid.values()))
                    ctx.stats["items.encoded"] += changed
                    log.info("catalogue: %d items received, %d encoded, %d in catalogue", len(valid), changed, len(ctx.catalogue or ()))
                if not ctx.ready.is_set() and await _caught_up(consumer, tps):
                    await loop.run_in_executor(ctx.executor, ctx.rebuild_signals)
                    # Start-up's objects (modules, Faust, the catalogue: ~115k on ml-100k) never die;
                    # frozen, full collections stop re-scanning them. They were pauses of ~37 ms,
                    # 18 in a 30 s run at 1,127 events/s (BENCHMARKS.md).
                    ctx.metrics.freeze_heap()
                    ctx.ready.set()
                    log.info("catalogue ready: %d items", len(ctx.catalogue or ()))
        finally:
            await consumer.stop()
            await changelog.stop()

    async def control(fevent: Any) -> None:
        """Run one control command; everything consumed before it is applied first."""
        m = fevent.message
        try:
            command = parse_control(fevent.value, key=m.key, limits=s.limits)
        except InvalidEvent as exc:
            await send_dead_letter(fevent.value, m.topic, m.partition, m.offset, str(exc))
            return
        await flush(ctx.buffer.drain())
        assert ctx.store is not None
        async with ctx.flush_lock:
            await behind.drain()  # the user's last profile is in the changelog before its tombstone
            loop = asyncio.get_running_loop()
            erased = await loop.run_in_executor(ctx.executor, ctx.store.forget_user, pseudonyms.store_id(command.user_id))
        try:
            topics = await publish_tombstones(s, command.user_id, m.partition)
        except Exception as exc:  # noqa: BLE001 - the erasure stands; the agent must not die
            log.error("forget request at %s:%d: store erased, tombstones not sent (%s); run recstream forget again",
                      m.topic, m.partition, type(exc).__name__)
            topics = []
        ctx.stats["users.forgotten"] += 1
        log.info("forget request at %s:%d done: %s; tombstones to %s", m.topic, m.partition,
                 "profile erased" if erased else "nothing was stored", ", ".join(topics) or "no topic")

    control_topic = s.topics.control  # a computed property: read once, not per record
    collector = SliceCollector()  # no automatic garbage collection while a slice fills (stream.heap)

    @app.agent(inputs)
    async def events(stream: faust.StreamT) -> None:
        ctx.stream = stream
        await ctx.ready.wait()
        async for batch in stream.noack_take(s.windows.max_pending, within=s.windows.batch_timeout_s):
            ctx.metrics.observe_input()  # the batch's arrival, as bench.floor times its first
            await changelog.ensure({fevent.message.partition for fevent in batch})
            ctx.last_input = time.monotonic()
            received = now_ms()
            read_to = ctx.read_to
            for fevent in batch:
                m = fevent.message
                read_to[m.tp] = m.offset  # in offset order within a partition
                if m.topic == control_topic:
                    await control(fevent)
                    await stream.ack(fevent)
                    continue
                kind = kind_of_topic[m.topic]
                try:
                    event = parse_event(
                        fevent.value, key=m.key, kind=kind, source=f"{m.topic}:{m.partition}", offset=m.offset,
                        now_ms=received, limits=s.limits, windows=s.windows,
                    )
                except InvalidEvent as exc:
                    await send_dead_letter(fevent.value, m.topic, m.partition, m.offset, str(exc))
                    await stream.ack(fevent)
                    continue
                ctx.stats[f"consumed.{kind}"] += 1
                if pseudonyms.enabled:
                    event = dataclasses.replace(event, user_id=pseudonyms.store_id(event.user_id))
                ctx.buffer.add(event, fevent)
            if ctx.stopping or ctx.revoking:
                await flush(ctx.buffer.drain())
            else:
                unread = _unread(app.consumer, read_to) if ctx.buffer.catches_up else 0
                if (unread >= s.windows.max_pending) != ctx.catching_up:
                    ctx.catching_up = not ctx.catching_up
                    if ctx.catching_up:
                        collector.hold()
                        log.info("catching up: %d input records unread, windows stay open up to %d events",
                                 unread, s.windows.catchup_pending)
                    else:
                        log.info("caught up: windows close on time again")
                await flush(ctx.buffer.pop_ready(catching_up=ctx.catching_up))
            if collector.held and (not ctx.buffer.pending or not ctx.catching_up):  # a slice flushed
                ctx.stats["catchup.slices"] += 1
                log.info("catch-up slice flushed; full garbage collection in %.0f ms", collector.collect() * 1000)
                if not ctx.catching_up:  # the last one: automatic collection again
                    collector.release()

    @app.timer(interval=max(0.05, s.windows.idle_flush_s / 4))
    async def idle_flush() -> None:
        """Close every open window once no input arrived for ``idle_flush_s``."""
        if ctx.buffer.pending and time.monotonic() - ctx.last_input >= s.windows.idle_flush_s:
            await flush(ctx.buffer.drain())

    async def close_all_windows() -> None:
        """Graceful shutdown: flush every open window now; later batches flush at once too."""
        ctx.stopping = True
        await flush(ctx.buffer.drain())
        await behind.drain()

    ctx.close_all_windows = close_all_windows
    if s.web_port > 0:
        from stream.web import register_views

        register_views(app, ctx)

    if s.store.standby:

        @app.timer(interval=s.store.standby_interval_s)
        async def standby() -> None:
            await changelog.standby()  # warm copies of the partitions other workers own

    @app.timer(interval=10.0)
    async def report() -> None:
        if ctx.stats:
            log.info("stats: %s pending=%d", dict(sorted(ctx.stats.items())), ctx.buffer.pending)

    return app, ctx


def _made_by_another_model(encoder: Any, stored: list[ItemRecord], sample: int = 8) -> bool:
    """True when the stored item vectors are not what ``encoder`` makes of their texts (the
    worker was restarted with another or a re-tuned model): checked on a few items."""
    probe = stored[:: max(1, len(stored) // sample)][:sample]
    if not probe:
        return False
    if any(item.vector.shape != (encoder.dim,) for item in probe):
        return True
    messages = [ItemMessage(item.item_id, item.title, None, {}, split_stored_attributes(item.attributes)[1]) for item in probe]
    fresh = item_vectors(encoder, messages, [item.text for item in probe])
    return not np.allclose(fresh, np.stack([item.vector for item in probe]), atol=1e-4)


async def _caught_up(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    """True once every partition's position reached the high-water mark of its last fetch.

    The fetch high-water mark is used rather than ``end_offsets``: Tansu 0.6 answers a
    ListOffsets(latest) with the start of the last batch + 1, which would declare the
    catalogue complete while its last batch is still unread.
    """
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


def _unread(consumer: Any, read_to: dict[Any, int]) -> int:
    """Records the worker's input partitions hold past what it has taken from them: the
    high-water mark of each one's last fetch minus the offset after its last record taken
    (partitions not yet fetched count 0). A few thousand mean the worker is behind.

    Summed over every partition read so far, not just those of the current batch: a batch
    can come from a few nearly-read partitions while the others still hold most of the
    backlog (three topics of unequal size), and catch-up would stop and start with it.
    """
    unread = 0
    for tp, offset in read_to.items():
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - revoked meanwhile: nothing unread of ours
            highwater = None
        if highwater is not None:
            unread += max(0, highwater - offset - 1)
    return unread


def _raw_of(windows: list[UserWindow[Any]], event: Any) -> bytes | None:
    """The raw Kafka value of a buffered event (for its dead letter)."""
    for window in windows:
        if window.user_id == event.user_id:
            for candidate, handle in zip(window.events, window.handles):
                if candidate is event:
                    return handle.value
    return None

