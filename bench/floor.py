"""The floor for the end-to-end benchmark: a bare Faust agent that only decodes the JSON.

Same app settings as :func:`stream.app.create_app` where they touch consumption: the
``recstream://`` consumer transport with the configured fetch wait, the same input topics
(raw bytes), ``noack_take`` batches of ``windows.max_pending`` within ``batch_timeout_s``,
an ack per record. Run as ``python -m bench.floor OUT_JSON EVENTS`` with the worker's
``RECSTREAM_*`` settings in the environment; it writes ``{"first", "last", "count"}`` (wall
clock seconds of the first and the ``EVENTS``-th decoded event, and the process's CPU
seconds in between) to ``OUT_JSON`` and keeps
running until stopped.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import faust
import orjson

from stream.config import load_settings

__all__ = ["create_floor_app"]


def create_floor_app(out: Path, events: int) -> faust.App:
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
    state = {"count": 0, "first": 0.0, "cpu": 0.0}

    @app.agent(inputs)
    async def decode(stream: faust.StreamT) -> None:
        async for batch in stream.noack_take(s.windows.max_pending, within=s.windows.batch_timeout_s):
            if not state["first"]:
                state["first"], state["cpu"] = time.time(), time.process_time()
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
    floor = create_floor_app(Path(sys.argv[1]), int(sys.argv[2]))
    faust.Worker(floor, loglevel="warning", quiet=True).execute_from_commandline()
