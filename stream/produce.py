"""Producing a flush's records in batches: one aiokafka batch per partition, not one send each.

A flush produces two records per user it changed (changelog and recommendation). Sent one
by one through ``Topic.send`` each record costs a Faust message object, a send sensor and an
aiokafka future with its callback on the event loop; appended here to one
``BatchBuilder`` per partition (aiokafka's ``create_batch``/``send_batch``) it costs a few
microseconds, and the flush waits on one future per batch. Records keep their order within a
partition, and keys are partitioned exactly as ``Topic.send`` would (the Faust producer's own
partitioner), so consumers see the same partitions and order as before.

The records go through the app's own producer (same connection, configuration and shutdown
flush as every other send of the worker); Faust does not expose its aiokafka producer
publicly, hence the one private ``_ensure_producer`` call below.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["SentBatch", "log_failures", "send_batched"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SentBatch:
    """One submitted batch: its delivery future (resolves to the first record's metadata;
    ``offset`` is the batch's base offset), partition and number of records."""

    future: asyncio.Future
    partition: int
    records: int

    def next_offset(self, metadata: Any) -> int:
        """The offset after this batch's last record, from its delivered ``metadata``."""
        return metadata.offset + self.records


async def send_batched(app: Any, topic: str, records: Iterable[tuple[int | None, bytes | None, bytes | None]]) -> list[SentBatch]:
    """Submit ``(partition, key, value)`` records to ``topic`` in one batch per partition
    (more when a batch fills up: ``producer_max_batch_size``). ``partition`` None: by key, as
    ``Topic.send`` would. Returns once all are queued; await the futures for delivery."""
    producer = app.producer._ensure_producer()  # the AIOKafkaProducer under Faust's producer
    batches: dict[int, Any] = {}
    counts: dict[int, int] = {}
    sent: list[SentBatch] = []
    partitions_known = False
    for partition, key, value in records:
        if partition is None:
            if not partitions_known:  # key_partition reads the metadata; fetch it once if missing
                await producer.partitions_for(topic)
                partitions_known = True
            partition = app.producer.key_partition(topic, key).partition
        batch = batches.get(partition)
        if batch is None:
            batch = batches[partition] = producer.create_batch()
            counts[partition] = 0
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: submit, start another
            sent.append(SentBatch(await producer.send_batch(batch, topic, partition=partition), partition, counts[partition]))
            batch = batches[partition] = producer.create_batch()
            counts[partition] = 0
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes does not fit in a batch for {topic}")
        counts[partition] += 1
    for partition, batch in batches.items():
        sent.append(SentBatch(await producer.send_batch(batch, topic, partition=partition), partition, counts[partition]))
    return sent


def log_failures(sent: list[SentBatch], what: str) -> None:
    """For batches nobody awaits (recommendations): log a failed delivery instead of leaving
    the exception unretrieved."""

    def done(future: asyncio.Future, partition: int, n: int) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("%s: %d records to partition %d not delivered: %s", what, n, partition, future.exception())

    for batch in sent:
        batch.future.add_done_callback(lambda f, p=batch.partition, n=batch.records: done(f, p, n))
