"""Replay inputs: a dataset or files → (events sorted by event time, catalogue messages)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from stream.catalog import ItemMessage, parse_item
from stream.config import EVENT_KINDS, Settings
from stream.events import Event, InvalidEvent, parse_event

__all__ = ["dataset_source", "file_source"]


def _sorted(events: list[Event]) -> list[Event]:
    """Stable event-time order; offsets renumbered so replay dedup sees one ordered log."""
    ordered = sorted(events, key=lambda e: e.ts_ms)
    return [
        Event(e.user_id, e.item_id, e.ts_ms, e.kind, "replay:0", n, e.text, e.value, e.event_id)
        for n, e in enumerate(ordered)
    ]


def dataset_source(name: str, settings: Settings, source: Path | None = None) -> tuple[list[Event], list[ItemMessage]]:
    """Events and items of a bundled dataset (``ml-100k``)."""
    from stream import movielens

    if name != "ml-100k":
        raise ValueError(f"unknown dataset {name!r} (known: ml-100k)")
    directory = movielens.fetch_ml100k(settings.encoder.cache_dir, source)
    items = [parse_item(orjson.dumps(movielens.item_message(i)), settings.limits) for i in movielens.load_items(directory)]
    events = []
    for r in movielens.load_ratings(directory):
        e = movielens.rating_event(r)
        events.append(Event(e["user_id"], e["item_id"], int(e["ts"]), EVENT_KINDS.index(e["kind"]), "replay:0", 0,
                            None, float(e["value"]), e["event_id"]))
    return _sorted(events), items


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
    items = []
    for n, line in enumerate(items_path.read_bytes().splitlines(), 1):
        if line.strip():
            try:
                items.append(parse_item(line, settings.limits))
            except ValueError as exc:
                raise ValueError(f"{items_path}:{n}: {exc}") from None
    return _sorted(events), items
