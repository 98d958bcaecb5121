"""Batched produce (stream.produce) against the real (embedded) broker: same partitions and
per-partition order as sending record by record, and exact offsets after each batch."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from stream.kafka_io import ensure_topics
from stream.produce import send_batched
from stream.security import aiokafka_config


class _FaustProducerCalls:
    """The two calls send_batched makes on ``app.producer``, answered as Faust's aiokafka
    driver answers them (its ``_ensure_producer`` and ``key_partition``), on a real producer."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = self
        self._producer = producer

    def _ensure_producer(self) -> AIOKafkaProducer:
        return self._producer

    def key_partition(self, topic: str, key: bytes) -> TP:
        return TP(topic, self._producer._partition(topic, None, None, None, key, None))


async def _read(settings, topic: str) -> dict[int, list[tuple[bytes, bytes, int]]]:
    consumer = AIOKafkaConsumer(**aiokafka_config(settings.broker), group_id=None, auto_offset_reset="earliest",
                                fetch_max_wait_ms=20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list] = {tp.partition: [] for tp in tps}
        while any(len(out[tp.partition]) < ends[tp] for tp in tps):
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                out[tp.partition] += [(m.key, m.value, m.offset) for m in messages]
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer.topics()
    return consumer.partitions_for_topic(topic)


def test_batched_records_land_where_and_in_the_order_single_sends_put_them(settings):
    ensure_topics(settings)
    batched, single = settings.topics.recommendations, settings.topics.dlq  # same partition count
    records = [(None, f"user-{i % 37}".encode(), f"value-{i}".encode() * (1 + i % 50)) for i in range(400)]

    async def main():
        # small batches: several per partition, so the "batch full" path runs too
        producer = AIOKafkaProducer(**aiokafka_config(settings.broker), max_batch_size=2048, linger_ms=5)
        await producer.start()
        try:
            sent = await send_batched(_FaustProducerCalls(producer), batched, records)
            metas = await asyncio.gather(*(b.future for b in sent))
            for _, key, value in records:
                await producer.send(single, key=key, value=value)
            await producer.flush()
        finally:
            await producer.stop()
        return sent, metas, await _read(settings, batched), await _read(settings, single)

    sent, metas, got, want = asyncio.run(main())
    strip = {p: [(k, v) for k, v, _ in rows] for p, rows in got.items()}
    assert strip == {p: [(k, v) for k, v, _ in rows] for p, rows in want.items()}
    assert sum(len(rows) for rows in got.values()) == len(records)
    assert len(sent) > len(got)  # some partition needed more than one batch
    for batch, meta in zip(sent, metas):  # offsets: base of the batch + its record count
        offsets = [o for _, _, o in got[batch.partition]]
        assert meta.offset in offsets and batch.next_offset(meta) - 1 in offsets
    last = {}
    for batch, meta in zip(sent, metas):
        last[batch.partition] = max(last.get(batch.partition, 0), batch.next_offset(meta))
    assert last == {p: rows[-1][2] + 1 for p, rows in got.items() if rows}
