"""Replay inputs: a dataset or files → (events sorted by event time, catalogue messages)."""

from __future__ import annotations

import time
import time
from pathlib import Path

import orjson

from stream.catalog import ItemMessage, parse_item
from stream.config import EVENT_KINDS, Settings
from stream.events import Event, InvalidEvent, parse_event

__all__ = ["dataset_source", "file_source", "item_file"]


def _sorted(events: list[Event]) -> list[Event]:
    """Stable event-time order; offsets renumbered so replay dedup sees one ordered log."""
    ordered = sorted(events, key=lambda e: e.ts_ms)
    return [
        Event(e.user_id, e.item_id, e.ts_ms, e.kind, "replay:0", n, e.text, e.value, e.event_id)
        for n, e in enumerate(ordered)
    ]


def _canonical(items) -> list[ItemMessage]:
    """Items in id order: catalogue rows (and so tie-breaks) never depend on how they were read."""
    return sorted(items, key=lambda i: i.item_id)


def dataset_source(name: str, settings: Settings, source: Path | None = None) -> tuple[list[Event], list[ItemMessage]]:
    """Events and items of a bundled dataset (``ml-100k``)."""
    from stream import movielens

    if name != "ml-100k":
        raise ValueError(f"unknown dataset {name!r} (known: ml-100k)")
    directory = movielens.fetch_ml100k(settings.encoder.cache_dir, source)
    items = [parse_item(orjson.dumps(m), settings.limits) for m in movielens.item_messages(directory)]
    events = []
    for r in movielens.load_ratings(directory):
        e = movielens.rating_event(r)
        events.append(Event(e["user_id"], e["item_id"], int(e["ts"]), EVENT_KINDS.index(e["kind"]), "replay:0", 0,
                            None, float(e["value"]), e["event_id"]))
    return _sorted(events), _canonical(items)


def file_source(events_path: Path, items_path: Path, settings: Settings) -> tuple[list[Event], list[ItemMessage]]:
    """Events from a JSONL/CSV file (validated like the stream) and items from a JSONL file."""
    from stream.kafka_io import read_event_file

    now_ms = int(time.time() * 1000)
    events = []
    for n, raw in enumerate(read_event_file(events_path), 1):
        kind = raw.pop("kind", "view")
        if kind not in EVENT_KINDS:
            raise ValueError(f"{events_path}: event {n}: unknown kind {kind!r}")
        user = raw.get("user_id")
        try:
            events.append(parse_event(orjson.dumps(raw), key=str(user).encode() if user is not None else None, kind=kind,
                                      source="replay:0", offset=n, now_ms=now_ms, limits=settings.limits,
                                      windows=settings.windows))
        except InvalidEvent as exc:
            raise ValueError(f"{events_path}: event {n}: {exc}") from None
    return _sorted(events), item_file(items_path, settings)


def item_file(items_path: Path, settings: Settings) -> list[ItemMessage]:
    """Items from a JSONL file of item messages, validated like the stream's."""
    items = []
    for n, line in enumerate(items_path.read_bytes().splitlines(), 1):
        if line.strip():
            try:
                items.append(parse_item(line, settings.limits))
            except ValueError as exc:
                raise ValueError(f"{items_path}:{n}: {exc}") from None
    return _canonical(items)


def kafka_source(settings: Settings, since_ms: int | None = None, until_ms: int | None = None) -> tuple[list[Event], list[ItemMessage], int]:
    """Events on the input topics with ``since_ms <= ts < until_ms``, the items topic, and
    the number of records skipped as invalid. Reads every partition up to its high-water mark.
    """
    from kafka import KafkaConsumer, TopicPartition

    from stream.kafka_io import client_config

    topics = [*settings.topics.inputs.values(), settings.topics.items]
    consumer = KafkaConsumer(**client_config(settings), group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            raise ValueError(f"no recstream topics with prefix {settings.topics.prefix!r} on {settings.broker.bootstrap}")
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        kind_of = {topic: kind for kind, topic in settings.topics.inputs.items()}
        now_ms = int(time.time() * 1000)
        events, items, skipped = [], {}, 0
        idle_polls = 0
        while idle_polls < 3:
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            idle_polls = 0 if batch else idle_polls + 1
            for tp, records in batch.items():
                for r in records:
                    try:
                        if tp.topic == settings.topics.items:
                            items[r.key] = parse_item(r.value, settings.limits)
                            continue
                        e = parse_event(r.value, key=r.key, kind=kind_of[tp.topic], source=f"{tp.topic}:{tp.partition}",
                                        offset=r.offset, now_ms=now_ms, limits=settings.limits, windows=settings.windows)
                    except ValueError:
                        skipped += 1
                        continue
                    if (since_ms is None or e.ts_ms >= since_ms) and (until_ms is None or e.ts_ms < until_ms):
                        events.append(e)
            caught_up = all(
                consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp) for tp in tps
            )
            if caught_up and not batch:
                break
    finally:
        consumer.close()
    return _sorted(events), _canonical(items.values()), skipped
