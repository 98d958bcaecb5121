"""The latency phase's client: a paced producer and the output consumer on one asyncio loop.

Why not the kafka-python clients the CLI uses: at 700 events/s their producer and consumer
threads took some 42% of a core, on a 2-core machine that also runs the worker and the
broker, so the load generator itself lengthened the tail it measured. With aiokafka (record
batches built and parsed in C) the whole client, event generation included, takes about 20%
(``cpu_pct["client"]`` in the phase's result).

Latency is what :class:`stream.demo._Tracker` measures: from handing an event to the
producer to the arrival of the first recommendation whose ``event_count`` includes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson

from stream.config import Settings

__all__ = ["drive"]


async def drive(settings: Settings, tracker: Any, batches: Callable[[int, int], list[dict[str, Any]]],
                rate: float, seconds: float, drain_timeout_s: float = 30.0, tick_s: float = 0.01) -> float:
    """Publish ``rate`` × ``seconds`` events, ``batches(n, seed)`` at a time every ``tick_s``,
    while consuming the recommendations into ``tracker``; return once every event is
    covered by a recommendation or none arrived for ``drain_timeout_s``. Returns the
    seconds the publishing took (the rate actually sent is the count over it)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from stream.security import aiokafka_config

    inputs = settings.topics.inputs
    config = aiokafka_config(settings.broker)
    consumer = AIOKafkaConsumer(settings.topics.recommendations, **config, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=10)
    # linger 0: a tick's records are sent without waiting (the tick is the batching)
    producer = AIOKafkaProducer(**config, acks="all", linger_ms=0, max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()

    async def follow() -> None:
        while not stop.is_set():
            for messages in (await consumer.getmany(timeout_ms=50)).values():
                for message in messages:
                    tracker.on_recommendation(orjson.loads(message.value))

    follower = asyncio.create_task(follow())
    try:
        await asyncio.sleep(2)  # the consumer has its partitions and fetch positions
        total, sent, seed = int(rate * seconds), 0, 1
        t0 = time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - t0) * rate) + 1)
            if due > sent:
                for event in batches(due - sent, seed):
                    event["event_id"] = f"lat-{sent}"
                    sent += 1
                    tracker.on_sent(event["user_id"])
                    kind = event.pop("kind", "view")
                    await producer.send(inputs[kind], key=event["user_id"].encode(), value=orjson.dumps(event))
                seed += 1
            await asyncio.sleep(tick_s)
        await producer.flush()
        publish_s = time.perf_counter() - t0
        idle_since, last = time.monotonic(), -1
        while tracker.events_applied < total and time.monotonic() - idle_since < drain_timeout_s:
            if tracker.events_applied != last:
                idle_since, last = time.monotonic(), tracker.events_applied
            await asyncio.sleep(0.2)
        return publish_s
    finally:
        stop.set()
        await follower
        await producer.stop()
        await consumer.stop()
