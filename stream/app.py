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
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.catalog import InvalidItem, parse_item
from stream.changelog import Changelog
from stream.config import Settings
from stream.deadletter import dead_letter, reason_category
from stream.control import parse_control, publish_tombstones
from stream.events import InvalidEvent, parse_event
from stream.heap import SliceCollector
from stream.lag import InOrder, OneBehind
from stream.owner import Applied, StoreOwner, StoreState, detached, now_ms, on_store
from stream.privacy import Pseudonymiser, guard_payload_logs
from stream.produce import log_failures, send_batched
from stream.telemetry import WorkerMetrics
from stream.security import aiokafka_config, faust_credentials
from stream.windows import UserWindow, WindowBuffer

__all__ = ["WorkerContext", "create_app"]

log = logging.getLogger(__name__)


class WorkerContext:
    """Everything one worker process holds on its event loop: the window buffer, the
    metrics and the store's owner (stream.owner), which runs every LMDB write and encoder
    call off the loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
        self.stream: Any = None
        self.stopping = False  # set on shutdown: the agent then closes every window at once
        self.revoking = False  # set from a revocation until the next assignment: likewise
        self.opened = False  #: the owner opened the store
        self.catalogue_items = 0
        #: the store's applied input offsets, as of the last flush (the consumer-lag gauge)
        self.applied_offsets: dict[tuple[str, int], int] = {}
        self.metrics = WorkerMetrics(self.stats, self.gauges)  # reads the gauges at once
        self.owner = StoreOwner(settings, self.metrics)
        self.close_all_windows: Any = None  # set by create_app; awaited by stream.worker.Worker
        self.changelog: Any = None

    def gauges(self) -> dict[str, float]:
        return {"pending_events": self.buffer.pending, "catalogue_items": self.catalogue_items,
                "catalogue_ready": float(self.ready.is_set())}


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
        lambda fn, *args: ctx.owner.call(on_store, fn, *args),
    )
    ctx.changelog = changelog
    # A flush in two stages: applying (the owner's transaction, then the recommendations
    # sent), in order and up to a slice of events in flight, so the agent goes on consuming
    # while the owner applies; and settling (changelog delivered, acks), one flush behind.
    applying = InOrder(max(s.windows.catchup_pending, s.windows.max_pending))  # events in flight
    behind = OneBehind()

    async def drain_flushes() -> None:
        """Wait until every submitted flush is applied and settled."""
        await applying.drain()
        await behind.drain()

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
            if pending and ctx.opened:
                await flush(ctx.buffer.drain())
                log.info("rebalance: flushed %d pending events before the revocation", pending)
            await drain_flushes()  # the previous flushes' acks, too
        except Exception as exc:  # as a crash: un-acked records go to the next owner
            log.exception("rebalance: flushing open windows failed; stopping the worker")
            await app.crash(exc)  # Faust would otherwise wait for their acks forever

    app.recstream_before_revoke = before_revoke  # called by stream.transport before Faust revokes

    async def send_dead_letter(raw_value: bytes | None, topic: str, partition: int, offset: int, reason: str) -> None:
        ctx.stats[f"dlq.{reason_category(reason)}"] += 1
        value = dead_letter(raw_value, topic=topic, partition=partition, offset=offset, reason=reason, now_ms=now_ms())
        await dlq.send(key=None, value=value)

    async def flush(windows: list[UserWindow[Any]]) -> None:
        """Apply ``windows`` in transactions of at most ``windows.flush_users`` users."""
        step = s.windows.flush_users or len(windows) or 1
        for start in range(0, len(windows), step):
            await flush_part(windows[start:start + step])

    async def flush_part(windows: list[UserWindow[Any]]) -> None:
        """Submit ``windows`` to the owner; their recommendations, changelog delivery and
        acks follow (stream.lag), at once while revoking or stopping."""
        if not windows:
            return
        async with ctx.flush_lock:
            started = time.perf_counter()
            # pseudonymised store ids need the input's keys back for the output (stream.owner.Applied)
            keys = {w.user_id: w.handles[0].message.key for w in windows if w.handles} if pseudonyms.enabled else None
            answer = ctx.owner.call(StoreState.apply, detached(windows), now_ms(), keys)  # queued in order
            await applying.submit(sum(len(w.events) for w in windows), finish, windows, answer, started)
            if ctx.stopping or ctx.revoking:
                await drain_flushes()  # nothing left un-acked while Faust commits or stops

    async def finish(windows: list[UserWindow[Any]], answer: asyncio.Future, started: float) -> None:
        """A flush's first half, once the owner applied it: the recommendations sent."""
        try:
            applied: Applied = await answer
            ctx.applied_offsets = applied.applied_offsets
            result = applied.result
            # Recommendations first: they need no changelog round trip (a crash before the acks
            # replays the events, already-applied ones as duplicates, and re-sends them).
            records = [(None, key, value) for key, value in applied.records]
            log_failures(await send_batched(app, s.topics.recommendations, records), "recommendations")
        except Exception as exc:  # as a crash: the un-acked records go to the next owner
            log.exception("flush: applying the windows failed; stopping the worker")
            await app.crash(exc)
            return
        recommended = set(applied.recommended)
        ctx.metrics.observe_events(time.time(), (h.message.timestamp for w in windows if w.user_id in recommended for h in w.handles))
        ctx.stats["recommendations"] += len(records)
        await behind.submit(settle, windows, result, applied.snapshot, started)

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
        ctx.stats["flushes"] += 1
        ctx.metrics.observe_flush(time.perf_counter() - started, result.applied, len(windows))
        log.debug("flush: %d users, %d events in %.1f ms", result.users, result.applied, (time.perf_counter() - started) * 1e3)

    @app.task
    async def catalogue_sync() -> None:
        """Open the worker, then read every partition of the items topic, forever.

        No consumer group: each worker reads the whole catalogue. The event agent waits on
        ``ctx.ready``, set once the topic's end offsets at start-up have been consumed.
        """
        opened = await ctx.owner.call(StoreState.open)
        ctx.catalogue_items, ctx.applied_offsets = opened.items, opened.applied_offsets
        ctx.opened = True
        changelog.open()
        log.info("store owner: %s", "a child process" if ctx.owner.in_process else "a thread")
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
                    changed, ctx.catalogue_items = await ctx.owner.call(StoreState.upsert_items, list(valid.values()))
                    ctx.stats["items.encoded"] += changed
                    log.info("catalogue: %d items received, %d encoded, %d in catalogue", len(valid), changed, ctx.catalogue_items)
                if not ctx.ready.is_set() and await _caught_up(consumer, tps):
                    await ctx.owner.call(StoreState.rebuild_signals)
                    # Start-up's objects (modules, Faust, the catalogue: ~115k on ml-100k) never die;
                    # frozen, full collections stop re-scanning them. They were pauses of ~37 ms,
                    # 18 in a 30 s run at 1,127 events/s (BENCHMARKS.md).
                    await ctx.owner.call(StoreState.freeze_heap)
                    ctx.metrics.freeze_heap()
                    ctx.ready.set()
                    log.info("catalogue ready: %d items", ctx.catalogue_items)
        finally:
            await consumer.stop()
            await changelog.stop()
            await ctx.owner.aclose()

    async def control(fevent: Any) -> None:
        """Run one control command; everything consumed before it is applied first."""
        m = fevent.message
        try:
            command = parse_control(fevent.value, key=m.key, limits=s.limits)
        except InvalidEvent as exc:
            await send_dead_letter(fevent.value, m.topic, m.partition, m.offset, str(exc))
            return
        await flush(ctx.buffer.drain())
        async with ctx.flush_lock:
            await drain_flushes()  # the user's last profile is in the changelog before its tombstone
            erased = await ctx.owner.call(StoreState.forget_user, pseudonyms.store_id(command.user_id))
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
    sources: dict[Any, str] = {}  # "topic:partition" per partition: one string object each, pickled once per window batch
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
                source = sources.get(m.tp) or sources.setdefault(m.tp, f"{m.topic}:{m.partition}")
                try:
                    event = parse_event(
                        fevent.value, key=m.key, kind=kind, source=source, offset=m.offset,
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
        await drain_flushes()

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
    """The raw Kafka value of a buffered event (for its dead letter); found by its source and
    offset, as the owner's answer holds a copy of it (stream.owner)."""
    for window in windows:
        if window.user_id == event.user_id:
            for candidate, handle in zip(window.events, window.handles):
                if candidate.offset == event.offset and candidate.source == event.source:
                    return handle.value
    return None

