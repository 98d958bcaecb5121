"""Synchronous Kafka plumbing around the worker: topics, event files, publishing, tailing.

The worker itself consumes with Faust; these helpers are what the CLI, the demo, the
benchmarks and the tests use on the outside of it (kafka-python, blocking).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from stream.config import EVENT_KINDS, Settings, TopicSettings

__all__ = [
    "TopicError",
    "client_config",
    "ensure_topics",
    "make_producer",
    "publish_events",
    "publish_items",
    "read_event_file",
    "tail",
]

log = logging.getLogger(__name__)

#: The CSV columns an event file may have; ``user_id`` and ``item_id`` are required.
CSV_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "ts", "kind", "value", "text", "event_id")
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_TOPIC_ALREADY_EXISTS = 36


class TopicError(RuntimeError):
    """The topics exist in a shape the worker cannot use, or cannot be created."""


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by every kafka-python client (producer, consumer, admin)."""
    from stream.security import kafka_python_config

    return kafka_python_config(settings.broker)


def ensure_topics(settings: Settings) -> None:
    """Create the input, items, recommendations, dead-letter and changelog topics if missing.

    Idempotent. Every topic gets ``settings.topics.partitions`` partitions; items is compacted
    (the latest message per item id is the catalogue), and so is the profiles changelog (the
    latest profile per user, see :mod:`stream.changelog`), which is created with the input
    topics' partition count. Existing topics are left as they are, but the input topics must
    share one partition count (the worker joins them by user id, which only works when they
    are co-partitioned) and the changelog must have it too. Raises :class:`TopicError` otherwise.
    """
    from kafka import KafkaAdminClient

    topics = settings.topics
    replication = 1 if _single_node(settings) else -1
    wanted: dict[str, dict[str, Any]] = {
        name: {"num_partitions": topics.partitions, "replication_factor": replication}
        for name in [*topics.inputs.values(), topics.items, topics.recommendations, topics.dlq]
    }
    wanted[topics.items]["configs"] = {"cleanup.policy": "compact"}

    admin = KafkaAdminClient(**client_config(settings), client_id=f"{settings.app_id}-admin")
    try:
        _create(admin, wanted)
        counts = _partition_counts(admin, list(topics.inputs.values()))
        # partitioned like the inputs, whatever topics.partitions says (stream.control, stream.changelog)
        _create(admin, {topics.changelog: {"num_partitions": max(counts.values()), "replication_factor": replication,
                                           "configs": {"cleanup.policy": "compact"}},
                        topics.control: {"num_partitions": max(counts.values()), "replication_factor": replication}})
        changelog_count = _partition_counts(admin, [topics.changelog])[topics.changelog]
        counts.update(_partition_counts(admin, [topics.control]))
    finally:
        admin.close()
    if len(set(counts.values())) > 1:
        shape = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise TopicError(f"input topics are not co-partitioned ({shape}); they need equal partition counts")
    if changelog_count != next(iter(counts.values())):
        raise TopicError(f"{topics.changelog} has {changelog_count} partitions, the input topics "
                         f"{next(iter(counts.values()))}; it must be partitioned like the inputs")
    if set(counts.values()) != {topics.partitions}:
        log.warning("input topics have %s partitions, settings say %d; using the topics as they are",
                    next(iter(counts.values())), topics.partitions)


def _create(admin: Any, wanted: dict[str, dict[str, Any]]) -> None:
    response = admin.create_topics(wanted, raise_errors=False)
    for result in response["topics"]:
        code = result["error_code"]
        if code == _TOPIC_ALREADY_EXISTS:
            log.debug("topic %s already exists", result["name"])
        elif code:
            raise TopicError(f"cannot create topic {result['name']}: error {code} {result.get('error_message') or ''}".rstrip())
        else:
            log.info("created topic %s (%d partitions)", result["name"], wanted[result["name"]]["num_partitions"])


def _single_node(settings: Settings) -> bool:
    # Replication factor -1 (broker default) needs CreateTopics v4+; one bootstrap host is
    # most likely a single-node cluster (Tansu, a dev Kafka), where 1 is the only valid value.
    return "," not in settings.broker.bootstrap


def _partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for topic in admin.describe_topics(names):
        if topic["error_code"]:
            raise TopicError(f"cannot describe topic {topic['name']}: error {topic['error_code']}")
        counts[topic["name"]] = len(topic["partitions"])
    return {name: counts[name] for name in names}


def make_producer(settings: Settings) -> Any:
    """A batching, ``acks=all`` :class:`kafka.KafkaProducer` taking bytes keys and values.

    Sends are asynchronous: call ``flush()`` (or ``close()``) before relying on delivery.
    """
    from kafka import KafkaProducer

    return KafkaProducer(
        **client_config(settings),
        client_id=f"{settings.app_id}-producer",
        acks="all",
        linger_ms=5,
        batch_size=128 * 1024,
        max_request_size=max(settings.limits.max_payload_bytes + 4096, 1_048_576),
    )


def read_event_file(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the events of a JSONL or CSV file, one dict per line/row, lazily.

    The format comes from the suffix (``.jsonl``/``.json``/``.ndjson`` or ``.csv``),
    otherwise from the first non-blank character (``{`` means JSONL). A ``.json`` file
    holding one JSON array is read as that array. CSV files need a header naming some of
    :data:`CSV_COLUMNS` (``user_id`` and ``item_id`` required); empty cells are left out,
    ``value`` becomes a float when numeric and ``ts`` an int when integral. Events are not
    validated beyond being JSON objects: the worker dead-letters bad ones with a reason.
    A malformed line raises ``ValueError("path:line: reason")``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        yield from _read_jsonl(path)
    elif suffix == ".csv":
        yield from _read_csv(path)
    elif _first_char(path) in ("{", "["):
        yield from _read_jsonl(path)
    else:
        yield from _read_csv(path)


def _first_char(path: Path) -> str:
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                return line.lstrip()[0]
    return ""


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if _first_char(path) == "[":
        try:
            array = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
        for n, obj in enumerate(array, 1):
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: element {n} is {type(obj).__name__}, not an object")
            yield obj
        return
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield obj


def _read_csv(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            return
        header = [h.strip() for h in header]
        unknown = [h for h in header if h not in CSV_COLUMNS]
        missing = [c for c in ("user_id", "item_id") if c not in header]
        if unknown or missing:
            problem = f"unknown column(s) {unknown}" if unknown else f"missing column(s) {missing}"
            raise ValueError(f"{path}:{reader.line_num}: {problem}; columns are {', '.join(CSV_COLUMNS)}")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{reader.line_num}: expected {len(header)} cells, got {len(row)}")
            event: dict[str, Any] = {name: cell for name, cell in zip(header, row) if cell != ""}
            if "value" in event:
                event["value"] = _number(event["value"], float)
            if "ts" in event:
                event["ts"] = _number(event["ts"], int)
            yield event


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        try:
            return float(text)  # "1.5" as ts stays a float; the worker truncates to ms
        except ValueError:
            return text  # e.g. an RFC 3339 ts; the worker validates it


def publish_events(producer: Any, topics: TopicSettings, events: Iterable[dict[str, Any]]) -> int:
    """Send each event to its kind's input topic, keyed by ``user_id``; flush once at the end.

    ``kind`` (default ``"view"``) picks the topic and is dropped from the payload; the rest
    of the dict is the orjson value. The user-id key co-partitions a user's events across
    the three input topics. Raises ``ValueError`` on an unknown kind or a missing user id
    (events before it were already sent), and the first delivery error after the flush.
    Returns the number of events sent.
    """
    inputs = topics.inputs
    errors: list[BaseException] = []
    count = 0
    for n, event in enumerate(events, 1):
        kind = event.get("kind", "view")
        topic = inputs.get(kind) if isinstance(kind, str) else None
        if topic is None:
            raise ValueError(f"event {n}: unknown kind {kind!r}; expected one of {', '.join(EVENT_KINDS)}")
        user_id = event.get("user_id")
        if user_id is None or user_id == "":
            raise ValueError(f"event {n}: missing user_id")
        payload = orjson.dumps({k: v for k, v in event.items() if k != "kind"})
        producer.send(topic, key=str(user_id).encode("utf-8"), value=payload).add_errback(errors.append)
        count += 1
    producer.flush()
    if errors:
        raise errors[0]
    return count


def publish_items(producer: Any, topics: TopicSettings, items: Iterable[dict[str, Any]]) -> int:
    """Send item messages to the compacted items topic keyed by ``item_id``; flush at the end."""
    errors: list[BaseException] = []
    count = 0
    for n, item in enumerate(items, 1):
        item_id = item.get("item_id")
        if item_id is None or item_id == "":
            raise ValueError(f"item {n}: missing item_id")
        producer.send(topics.items, key=str(item_id).encode("utf-8"), value=orjson.dumps(item)).add_errback(errors.append)
        count += 1
    producer.flush()
    if errors:
        raise errors[0]
    return count


def tail(
    settings: Settings,
    *,
    user: str | None = None,
    from_beginning: bool = False,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    group_id: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield recommendation messages (decoded dicts) as they arrive, optionally for one user.

    Without ``group_id`` every partition is assigned directly (no group join, no commits),
    starting at the end, or at the beginning with ``from_beginning``. With ``group_id`` the
    consumer joins that group and resumes from its committed offsets. Stops after
    ``max_messages`` matching messages or ``timeout_s`` seconds without a matching one
    (counted from the group join, which takes seconds on Tansu, when there is a group);
    otherwise runs until the caller stops iterating. Undecodable messages are logged and
    skipped.
    """
    from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

    topic = settings.topics.recommendations
    broker = settings.broker
    config = client_config(settings)
    reset = "earliest" if from_beginning else "latest"
    if group_id is None:
        consumer = KafkaConsumer(**config, group_id=None, enable_auto_commit=False, auto_offset_reset=reset)
    else:
        # Tansu (and Kafka) hold a group join for up to the rebalance timeout, which
        # kafka-python takes from max_poll_interval_ms (default 5 min): keep it short.
        consumer = KafkaConsumer(
            **config, group_id=group_id, auto_offset_reset=reset, enable_auto_commit=False,
            session_timeout_ms=int(broker.session_timeout_s * 1000),
            heartbeat_interval_ms=int(broker.heartbeat_interval_s * 1000),
            max_poll_interval_ms=max(int(broker.rebalance_timeout_s * 1000), int(broker.session_timeout_s * 1000)),
        )
    try:
        if group_id is None:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise TopicError(f"topic {topic} does not exist (has a worker or ensure_topics created it?)")
            consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        else:
            consumer.subscribe([topic])
        # Tansu 0.6 answers ListOffsets(latest) with the last batch's base offset + 1, so a
        # start "at the end" can replay part of the last batch. The first fetch response's
        # high watermark is right: records below it predate us and are skipped. (A record
        # produced during that first round trip may be skipped too.)
        floor: dict[Any, int] | None = {} if group_id is None and not from_beginning else None
        done: dict[Any, int] = {}  # partition -> next offset, committed on the way out
        yielded = 0
        joined = group_id is None
        # Tansu hands a closed member's partitions over only after its session timeout
        join_grace_s = broker.session_timeout_s + broker.rebalance_timeout_s
        last = time.monotonic()
        while max_messages is None or yielded < max_messages:
            wait_ms = 500 if timeout_s is None else max(min(500, int((last + timeout_s - time.monotonic()) * 1000)), 50)
            batches = consumer.poll(timeout_ms=wait_ms)
            if not joined and consumer.assignment():
                joined, last = True, time.monotonic()  # a group join is not idle time
            if floor is not None:
                for tp in consumer.assignment():
                    if tp not in floor and consumer.highwater(tp) is not None:
                        floor[tp] = consumer.highwater(tp)
            for tp, records in batches.items():
                for record in records:
                    done[tp] = record.offset + 1
                    if floor is not None and record.offset < floor.get(tp, 0):
                        continue
                    rec = _decode(record)
                    if rec is None or (user is not None and str(rec.get("user_id")) != user):
                        continue
                    yield rec
                    yielded += 1
                    last = time.monotonic()
                    if max_messages is not None and yielded >= max_messages:
                        return
            if timeout_s is not None and time.monotonic() - last >= timeout_s + (0 if joined else join_grace_s):
                return
    finally:
        if group_id is not None and done:
            try:
                consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in done.items()})
            except Exception as exc:  # noqa: BLE001 - a failed commit only means re-reading
                log.warning("could not commit tail offsets for group %s: %s", group_id, exc)
        consumer.close()


def _decode(record: Any) -> dict[str, Any] | None:
    if record.value is None:
        return None  # a tombstone: the user was forgotten (stream.control)
    try:
        rec = orjson.loads(record.value)
    except (orjson.JSONDecodeError, TypeError):
        log.warning("skipping undecodable recommendation at %s:%d:%d", record.topic, record.partition, record.offset)
        return None
    return rec if isinstance(rec, dict) else None
