"""Operator commands over Kafka: ``{"op": "forget", "user_id": ...}`` on ``<prefix>control``.

Who executes a command. The control topic is keyed by user id and co-partitioned with the
input topics, and the event agent consumes it together with them in the worker group. Kafka
therefore hands partition *p* of the control topic to the worker that owns partition *p* of
the inputs, i.e. the worker whose LMDB holds the user's profile: exactly one worker acts, and
its position on the control topic is committed with the group like any input. The other
choice, every worker reading the whole topic (as for items), was rejected: without a group
each worker would re-read old commands on restart and erase users who came back since, and
non-owners would have nothing to erase anyway.

What ``forget`` erases: in LMDB, in one write transaction, the profile (vectors, history,
per-kind counts, applied offsets), the seen items and the applied event ids; the buffered,
not yet applied events of that moment are applied first and so erased too. In Kafka, a
tombstone (null value keyed by the user) goes to the recommendations topic and, if it exists,
``<prefix>profiles-changelog`` (keyed by the store's id). Not erased: the raw events still in
the input topics and dead letters in the DLQ (until retention deletes them), recommendations
already delivered to consumers, aggregate counters (which hold no id), and old bytes on
LMDB free pages until they are reused (``mdb_copy -c`` purges them). Events that arrive
after the command build a new profile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson

from stream.config import LimitSettings, Settings
from stream.events import InvalidEvent, parse_id
from stream.payloads import PayloadError, decode_object
from stream.privacy import Pseudonymiser
from stream.security import aiokafka_config

__all__ = [
    "CONTROL_OPS",
    "ControlCommand",
    "forget_locally",
    "forget_request",
    "parse_control",
    "publish_tombstones",
    "request_forget",
]

log = logging.getLogger(__name__)

CONTROL_OPS = ("forget",)


@dataclass(frozen=True, slots=True)
class ControlCommand:
    op: str
    user_id: str  # the original id, as in the record key


def parse_control(payload: bytes | None, *, key: bytes | None, limits: LimitSettings) -> ControlCommand:
    """Validate a control record; raise :class:`InvalidEvent` with the dead-letter reason."""
    try:
        obj = decode_object(payload, limits.max_payload_bytes)
    except PayloadError as exc:
        raise InvalidEvent(str(exc)) from None
    op = obj.get("op")
    if op not in CONTROL_OPS:
        raise InvalidEvent(f"unknown control op {str(op)[:40]!r}; expected one of {', '.join(CONTROL_OPS)}")
    user_id = parse_id(obj, "user_id", limits)
    if key != user_id.encode("utf-8"):
        raise InvalidEvent("record key must equal user_id (the control topic is partitioned by user)")
    return ControlCommand(op, user_id)


def forget_request(user_id: str) -> tuple[bytes, bytes]:
    """The (key, value) of a forget command for ``user_id``."""
    return user_id.encode("utf-8"), orjson.dumps({"op": "forget", "user_id": user_id})


async def publish_tombstones(settings: Settings, user_id: str, partition: int | None = None) -> list[str]:
    """Publish a null value for the user to every existing topic keyed by them; returns them.

    Topics are listed first so that no topic is auto-created by the tombstone itself.
    ``partition``: the user's input partition (the control record's own, as the topics are
    co-partitioned); the profiles changelog is partitioned by it rather than by its key (a
    pseudonym when pseudonymisation is on), so its tombstone must go there to be compacted.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    config = aiokafka_config(settings.broker)
    lister = AIOKafkaConsumer(**config, group_id=None)
    await lister.start()
    try:
        existing = await lister.topics()
        changelog_partitions = sorted(lister.partitions_for_topic(settings.topics.changelog) or [])
    finally:
        await lister.stop()
    if partition is None and changelog_partitions:  # where the producers' default partitioner put the user
        partition = DefaultPartitioner()(user_id.encode("utf-8"), changelog_partitions, changelog_partitions)
    store_id = Pseudonymiser(settings.privacy).store_id(user_id)
    keys = {settings.topics.recommendations: user_id, settings.topics.changelog: store_id}
    targets = {t: k for t, k in keys.items() if t in existing}
    producer = AIOKafkaProducer(**config, acks="all")
    await producer.start()
    try:
        for topic, key in targets.items():
            where = partition if topic == settings.topics.changelog else None
            await producer.send_and_wait(topic, key=key.encode("utf-8"), value=None, partition=where)
    finally:
        await producer.stop()
    return sorted(targets)


def request_forget(settings: Settings, user_id: str) -> str:
    """Publish a forget command for ``user_id`` (creating the topics if needed); returns the topic."""
    from stream.kafka_io import ensure_topics, make_producer

    ensure_topics(settings)
    key, value = forget_request(user_id)
    producer = make_producer(settings)
    try:
        producer.send(settings.topics.control, key=key, value=value).get(timeout=30)
    finally:
        producer.close()
    return settings.topics.control


def forget_locally(settings: Settings, user_id: str) -> tuple[bool, list[str]]:
    """Erase ``user_id`` from the local store directly, then publish the tombstones.

    For a store whose worker is stopped (one writer per store). Returns whether anything was
    stored and the topics that received a tombstone.
    """
    import asyncio

    from store import LmdbStore

    if not (settings.store.path / "data.mdb").exists():
        raise ValueError(f"no store at {settings.store.path}")
    store = LmdbStore(settings.store.path, map_size_mb=settings.store.map_size_mb)
    try:
        erased = store.forget_user(Pseudonymiser(settings.privacy).store_id(user_id))
    finally:
        store.close()
    return erased, asyncio.run(publish_tombstones(settings, user_id))
