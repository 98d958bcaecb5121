"""The floors for the end-to-end benchmark: bare Faust agents on the worker's input topics.

``decode``, the floor of issue 6: the agent only decodes the JSON. ``io``: it also does the
worker's Kafka output for each batch, with none of its work: per user in the batch, one
recommendation-shaped JSON record (10 items with scores and reasons, ~750 bytes, sent
without waiting, as the worker sends them) and one changelog-sized record (3,445 bytes, the
mean of ``python -m bench flush``'s snapshots), whose delivery it awaits before the acks, as
the worker does. Both go in one batch per partition (:func:`stream.produce.send_batched`) to
topics of their own. The worker's throughput over ``io``'s is the share of the cost of its
data flow in Faust and Kafka that its own code adds.

Same app settings as :func:`stream.app.create_app` where they touch consumption: the
``recstream://`` consumer transport with the configured fetch wait, the same input topics
(raw bytes), ``noack_take`` batches of ``windows.max_pending`` within ``batch_timeout_s``,
an ack per record. Run as ``python -m bench.floor OUT_JSON EVENTS [decode|io]`` with the
worker's ``RECSTREAM_*`` settings in the environment; it writes ``{"first", "last", "count"}``
(wall clock seconds of the first and the ``EVENTS``-th decoded event, and the process's CPU
seconds in between) to ``OUT_JSON`` and keeps running until stopped.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import faust
import orjson

from stream.config import load_settings
from stream.produce import log_failures, send_batched

__all__ = ["CHANGELOG_BYTES", "MODES", "create_floor_app", "recommendation_like"]

MODES = ("decode", "io")
#: Mean changelog value of ``python -m bench flush`` (users with about 11 events).
CHANGELOG_BYTES = 3445


def recommendation_like(event: dict, k: int = 10) -> bytes:
    """A record of the worker's recommendation shape and size for ``event``'s user."""
    item = str(event.get("item_id"))
    return orjson.dumps({"user_id": event.get("user_id"), "ts": event.get("ts"), "event_count": 1, "profile_version": 1,
                         "items": [{"item_id": item, "score": 0.123456, "because": [item, item]} for _ in range(k)]})


def create_floor_app(out: Path, events: int, mode: str = "decode") -> faust.App:
    if mode not in MODES:
        raise ValueError(f"unknown floor mode {mode!r} (choose from {', '.join(MODES)})")
    s = load_settings(None)
    app = faust.App(
        f"bench-floor-{uuid.uuid4().hex[:8]}",
        broker=s.broker.url,
        broker_consumer=s.broker.url.replace("kafka://", "recstream://", 1),
        store="memory://",
        autodiscover=False,
        datadir=str(out.parent / "floor-faust"),
        topic_partitions=s.topics.partitions,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    app.recstream_fetch_max_wait_ms = s.broker.fetch_max_wait_ms
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    inputs = app.topic(*s.topics.inputs.values(), **raw)
    recommendations = app.topic(f"{s.topics.prefix}floor.recommendations", partitions=s.topics.partitions, **raw)
    changelog = app.topic(f"{s.topics.prefix}floor.changelog", partitions=s.topics.partitions, **raw)
    snapshot = bytes(CHANGELOG_BYTES)
    state = {"count": 0, "first": 0.0, "cpu": 0.0}

    async def output(users: dict[bytes, dict]) -> None:
        """The worker's Kafka output for one flush of ``users`` (see the module doc)."""
        log_failures(await send_batched(app, recommendations.get_topic_name(),
                                        [(None, key, recommendation_like(e)) for key, e in users.items()]), "floor")
        sent = await send_batched(app, changelog.get_topic_name(), [(None, key, snapshot) for key in users])
        await asyncio.gather(*(b.future for b in sent))

    @app.agent(inputs)
    async def decode(stream: faust.StreamT) -> None:
        if mode == "io":
            await recommendations.maybe_declare()
            await changelog.maybe_declare()
        async for batch in stream.noack_take(s.windows.max_pending, within=s.windows.batch_timeout_s):
            if not state["first"]:
                state["first"], state["cpu"] = time.time(), time.process_time()
            if mode == "io":
                await output({fevent.key: orjson.loads(fevent.value) for fevent in batch})
                for fevent in batch:
                    await stream.ack(fevent)
            else:
                for fevent in batch:
                    orjson.loads(fevent.value)
                    await stream.ack(fevent)
            before = state["count"]
            state["count"] += len(batch)
            if before < events <= state["count"]:
                out.write_bytes(orjson.dumps({"first": state["first"], "last": time.time(), "count": state["count"],
                                              "cpu_s": time.process_time() - state["cpu"]}))

    return app


if __name__ == "__main__":
    floor = create_floor_app(Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:4])
    faust.Worker(floor, loglevel="warning", quiet=True).execute_from_commandline()
