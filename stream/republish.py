"""Republish history to the input topics at N× real time, for live backtests and load tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from stream.catalog import ItemMessage
from stream.config import EVENT_KINDS, Settings
from stream.events import Event

__all__ = ["event_message", "republish"]


def event_message(e: Event) -> dict:
    """The input-topic form of an event (``kind`` picks the topic and is not sent)."""
    msg = {"user_id": e.user_id, "item_id": e.item_id, "ts": e.ts_ms, "kind": EVENT_KINDS[e.kind]}
    for field in ("text", "value", "event_id"):
        if getattr(e, field) is not None:
            msg[field] = getattr(e, field)
    return msg


def republish(
    settings: Settings,
    events: Sequence[Event],
    items: Sequence[ItemMessage],
    speed: float,
    progress: Callable[[int], None] | None = None,
    chunk: int = 500,
) -> int:
    """Publish ``items`` then ``events`` (event-time order), keeping event-time gaps / ``speed``.

    ``speed`` 0 publishes as fast as the producer goes. Returns the number of events sent.
    """
    from stream.kafka_io import ensure_topics, make_producer, publish_events, publish_items

    ensure_topics(settings)
    producer = make_producer(settings)
    try:
        publish_items(producer, settings.topics, [
            {"item_id": i.item_id, "title": i.title, "attributes": i.attributes,
             **({"description": i.description} if i.description else {}), **({"facts": i.facts} if i.facts else {})}
            for i in items
        ])
        if not events:
            return 0
        wall0, event0 = time.monotonic(), events[0].ts_ms
        for start in range(0, len(events), chunk):
            batch = events[start : start + chunk]
            if speed > 0:
                due = (batch[0].ts_ms - event0) / 1000 / speed
                ahead = due - (time.monotonic() - wall0)
                if ahead > 0:
                    time.sleep(ahead)
            publish_events(producer, settings.topics, [event_message(e) for e in batch])
            if progress is not None:
                progress(len(batch))
        return len(events)
    finally:
        producer.close()
