"""The Faust application: topics, the event agent, catalogue sync and the idle-flush timer.

This module only wires; the maths lives in :mod:`stream.processor` and below. Data flow::

    views|clicks|purchases ─► events agent ─► WindowBuffer ─► Processor.flush (LMDB txn)
                                   │                               │
                                   └─► dlq                          └─► recommendations
    items (compacted) ─► catalogue sync (every worker reads every partition) ─► Catalogue
"""

from __future__ import annotations

import asyncio
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
from stream.catalog import Catalogue, InvalidItem, item_text, parse_item
from stream.changelog import Changelog
from stream.config import Settings
from stream.deadletter import dead_letter, reason_category
from stream.events import InvalidEvent, parse_event
from stream.processor import Processor
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
            int(settings.windows.size_s * 1000), settings.windows.max_events, settings.windows.max_pending
        )
        self.last_input = time.monotonic()
        self.stats: Counter[str] = Counter()
        self.store: LmdbStore | None = None
        self.encoder: Any = None
        self.catalogue: Catalogue | None = None
        self.processor: Processor | None = None
        self.stream: Any = None
        self.changelog: Any = None

    def open(self) -> None:
        """Open the store, load the encoder (exporting it once) and the stored catalogue."""
        from encoders import CachedEncoder, EmbeddingCache, load_encoder

        s = self.settings
        self.store = LmdbStore(s.store.path, map_size_mb=s.store.map_size_mb, vector_dtype=s.store.vector_dtype)
        encoder = load_encoder(s.encoder)
        self.encoder = CachedEncoder(encoder, EmbeddingCache(s.encoder.cache_dir / "embeddings.lmdb"))
        self.catalogue = Catalogue(encoder.dim)
        with self.store.read() as txn:
            for item in txn.iter_items():
                self.catalogue.upsert(item.item_id, item.vector)
        self.processor = Processor(s, self.store, self.catalogue, self.encoder)
        log.info("worker opened store %s with %d items, encoder %s", s.store.path, len(self.catalogue), encoder.providers)

    def upsert_items(self, items: list[Any]) -> int:
        """Encode new or changed items in one batch and store them; returns how many changed."""
        assert self.store is not None and self.catalogue is not None
        texts = [item_text(i) for i in items]
        with self.store.read() as txn:
            stored = {i.item_id: txn.get_item(i.item_id) for i in items}
        changed = [(i, t) for i, t in zip(items, texts) if (old := stored[i.item_id]) is None or old.text != t]
        if not changed:
            return 0
        vectors = self.encoder.encode([t for _, t in changed])
        stamp = now_ms()
        with self.store.write() as txn:
            for (item, text), vector in zip(changed, vectors):
                txn.put_item(ItemRecord(item.item_id, item.title, text, np.asarray(vector, np.float32), dict(item.attributes), stamp))
        for (item, _), vector in zip(changed, vectors):
            self.catalogue.upsert(item.item_id, vector)
        return len(changed)


def _faust_credentials(settings: Settings) -> Any:
    b = settings.broker
    if b.sasl_mechanism and b.sasl_username and b.sasl_password:
        return faust.SASLCredentials(
            username=b.sasl_username,
            password=b.sasl_password.get_secret_value(),
            mechanism=b.sasl_mechanism,
            ssl_context=None,
        )
    return None


def create_app(settings: Settings) -> tuple[faust.App, WorkerContext]:
    """Build the Faust app and its worker context for ``settings``."""
    s = settings
    app = faust.App(
        s.app_id,
        broker=s.broker.url,
        broker_consumer=s.broker.url.replace("kafka://", "recstream://", 1),
        broker_credentials=_faust_credentials(s),
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
        producer_linger_ms=5,
    )
    app.recstream_fetch_max_wait_ms = s.broker.fetch_max_wait_ms  # read by stream.transport
    ctx = WorkerContext(s)
    kind_of_topic = {topic: kind for kind, topic in s.topics.inputs.items()}
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    inputs = app.topic(*s.topics.inputs.values(), **raw)
    recommendations = app.topic(s.topics.recommendations, **raw)
    dlq = app.topic(s.topics.dlq, **raw)
    changelog = Changelog(
        app.topic(s.topics.changelog, **raw), s.topics.inputs.values(), s.broker.bootstrap,
        lambda fn, *args: asyncio.get_running_loop().run_in_executor(ctx.executor, fn, *args),
    )
    ctx.changelog = changelog

    @app.on_partitions_assigned.connect
    async def on_partitions_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        changelog.on_assigned(assigned)  # restores start now; the agent waits for them

    async def send_dead_letter(raw_value: bytes | None, topic: str, partition: int, offset: int, reason: str) -> None:
        ctx.stats[f"dlq.{reason_category(reason)}"] += 1
        value = dead_letter(raw_value, topic=topic, partition=partition, offset=offset, reason=reason, now_ms=now_ms())
        await dlq.send(key=None, value=value)

    async def flush(windows: list[UserWindow[Any]]) -> None:
        if not windows:
            return
        assert ctx.processor is not None
        async with ctx.flush_lock:
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            result = await loop.run_in_executor(ctx.executor, ctx.processor.flush, windows, now_ms())
            await changelog.publish(windows)  # delivered before any ack: see stream.changelog
            for event, reason in result.rejected:
                topic, partition = event.source.rsplit(":", 1)
                await send_dead_letter(_raw_of(windows, event), topic, int(partition), event.offset, reason)
            for rec in result.recommendations:
                await recommendations.send(key=rec["user_id"].encode(), value=orjson.dumps(rec))
            for window in windows:
                for handle in window.handles:
                    await ctx.stream.ack(handle)
            ctx.stats["events.applied"] += result.applied
            ctx.stats["events.duplicates"] += result.duplicates
            ctx.stats["recommendations"] += len(result.recommendations)
            ctx.stats["flushes"] += 1
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
        consumer = AIOKafkaConsumer(bootstrap_servers=s.broker.bootstrap, group_id=None, enable_auto_commit=False)
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
                    ctx.ready.set()
                    log.info("catalogue ready: %d items", len(ctx.catalogue or ()))
        finally:
            await consumer.stop()
            await changelog.stop()

    @app.agent(inputs)
    async def events(stream: faust.StreamT) -> None:
        ctx.stream = stream
        await ctx.ready.wait()
        async for batch in stream.noack_take(s.windows.max_pending, within=s.windows.batch_timeout_s):
            await changelog.ensure({fevent.message.partition for fevent in batch})
            ctx.last_input = time.monotonic()
            received = now_ms()
            for fevent in batch:
                m = fevent.message
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
                ctx.buffer.add(event, fevent)
            await flush(ctx.buffer.pop_ready())

    @app.timer(interval=max(0.05, s.windows.idle_flush_s / 4))
    async def idle_flush() -> None:
        """Close every open window once no input arrived for ``idle_flush_s``."""
        if ctx.buffer.pending and time.monotonic() - ctx.last_input >= s.windows.idle_flush_s:
            await flush(ctx.buffer.drain())

    if s.store.standby:

        @app.timer(interval=s.store.standby_interval_s)
        async def standby() -> None:
            await changelog.standby()  # warm copies of the partitions other workers own

    @app.timer(interval=10.0)
    async def report() -> None:
        if ctx.stats:
            log.info("stats: %s pending=%d", dict(sorted(ctx.stats.items())), ctx.buffer.pending)

    return app, ctx


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


def _raw_of(windows: list[UserWindow[Any]], event: Any) -> bytes | None:
    """The raw Kafka value of a buffered event (for its dead letter)."""
    for window in windows:
        if window.user_id == event.user_id:
            for candidate, handle in zip(window.events, window.handles):
                if candidate is event:
                    return handle.value
    return None

