"""Hostile input and privacy against the real embedded broker and a real worker process.

The corpus (tests/corpus/hostile.py) is published between valid events; every bad record
must reach the DLQ with its reason, the worker must keep running, every valid event must be
applied exactly once, and a forget command must leave nothing of the user in the store.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from store import LmdbStore
from stream.config import PrivacySettings
from stream.control import forget_locally, request_forget
from stream.kafka_io import ensure_topics, publish_items
from stream.privacy import Pseudonymiser
from corpus.hostile import TS, event_cases, item_cases
from corpus.store_scan import store_rows, traces
from worker_harness import stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GENRES = ["Animation", "Horror", "Drama", "Comedy", "Western", "Musical"]
ITEMS = [{"item_id": str(n), "title": f"{GENRES[n % 6]} film number {n}", "attributes": {"genres": [GENRES[n % 6]]}}
         for n in range(1, 31)]
KINDS = ["view", "click", "purchase"]


def start_worker(settings, log_path: Path, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stream.cli", "--broker", settings.broker.url, "--store", str(settings.store.path),
           "--topic-prefix", settings.topics.prefix, "worker", "--web-port", "0"]
    env = {**os.environ, "RECSTREAM_APP_ID": f"test-{uuid.uuid4().hex[:8]}", **env}
    return subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env)


def wait_for(proc: subprocess.Popen, log_path: Path, done, what: str, timeout_s: float = 180) -> None:
    """Poll ``done()`` while asserting the worker is alive (it must never stop)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker died:\n{log_path.read_text('utf-8', 'replace')[-3000:]}"
        if done():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}:\n{log_path.read_text('utf-8', 'replace')[-3000:]}")


class TopicReader:
    """Reads a topic from the start by direct assignment, incrementally, keeping (key, value)."""

    def __init__(self, settings, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=settings.broker.bootstrap, group_id=None,
                                      enable_auto_commit=False, auto_offset_reset="earliest",
                                      fetch_max_bytes=64 << 20, max_partition_fetch_bytes=64 << 20)
        partitions = self.consumer.partitions_for_topic(topic) or set()
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def poll(self) -> list[tuple[bytes | None, bytes | None]]:
        for batch in self.consumer.poll(timeout_ms=200).values():
            self.records += [(r.key, r.value) for r in batch]
        return self.records

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def producer(settings):
    p = KafkaProducer(bootstrap_servers=settings.broker.bootstrap, acks="all", linger_ms=5,
                      max_request_size=16 << 20)
    yield p
    p.close()


def send(producer, topic, key, value):
    return producer.send(topic, key=key, value=value).get(timeout=30)  # RecordMetadata


def latest_counts(recs) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in recs:
        if value is not None:
            rec = orjson.loads(value)
            assert key == rec["user_id"].encode()
            out[rec["user_id"]] = max(out.get(rec["user_id"], 0), rec["event_count"])
    return out


def test_hostile_corpus_goes_to_the_dlq_valid_events_all_applied_and_forget_erases(settings, producer, tmp_path):
    ensure_topics(settings)
    topics = settings.topics
    publish_items(producer, topics, ITEMS)
    bad: dict[tuple[str, int, int], str] = {}  # (topic, partition, offset) -> expected reason
    for case in item_cases():
        md = send(producer, topics.items, case.key, case.value)
        bad[(md.topic, md.partition, md.offset)] = case.reason
    log_path = tmp_path / "worker.log"
    proc = start_worker(settings, log_path)
    dlq, recs = TopicReader(settings, topics.dlq), TopicReader(settings, topics.recommendations)
    try:
        wait_for(proc, log_path, lambda: "catalogue ready" in log_path.read_text("utf-8", "replace"), "the catalogue")

        users = [f"user-{n}" for n in range(6)]
        expected = {u: 0 for u in users}
        corpus = event_cases(user="victim", known_item="1")
        for n in range(max(60, len(corpus))):
            user = users[n % len(users)]
            value = orjson.dumps({"user_id": user, "item_id": str(1 + n % 30), "ts": TS + n * 1000, "event_id": f"e{n}"})
            send(producer, topics.inputs[KINDS[n % 3]], user.encode(), value)
            expected[user] += 1
            if n < len(corpus):  # a hostile record after each valid one
                case = corpus[n]
                md = send(producer, topics.inputs[KINDS[(n + 1) % 3]], case.key, case.value)
                bad[(md.topic, md.partition, md.offset)] = case.reason
        # a producer retry: the same event (same event_id) twice; the copy is a duplicate
        retry = orjson.dumps({"user_id": "victim", "item_id": "2", "ts": TS, "event_id": "retry-1"})
        send(producer, topics.inputs["click"], b"victim", retry)
        expected["victim"] = 1
        md = send(producer, topics.inputs["click"], b"victim", retry)
        bad[(md.topic, md.partition, md.offset)] = "duplicate event_id"
        md = send(producer, topics.control, b"user-1", b'{"op":"forget","user_id":"user-2"}')
        bad[(md.topic, md.partition, md.offset)] = "key must equal user_id"

        wait_for(proc, log_path, lambda: latest_counts(recs.poll()) == expected, "every valid event applied")
        wait_for(proc, log_path, lambda: len(dlq.poll()) >= len(bad), f"{len(bad)} dead letters")
        time.sleep(1.0)
        letters = {(d["topic"], d["partition"], d["offset"]): d for d in (orjson.loads(v) for _, v in dlq.poll())}
        assert len(dlq.records) == len(bad), "one dead letter per bad record, no more"
        for where, reason in bad.items():
            assert where in letters, f"no dead letter for {where} ({reason})"
            assert reason in letters[where]["reason"], (where, reason, letters[where]["reason"])
            assert "\n" not in letters[where]["reason"]
        big = [d for d in letters.values() if d["payload_truncated"]]
        assert len(big) >= 2  # the 10 MB records, cut to fit the DLQ

        # forget through the control topic, as `recstream forget user-5` does
        forgotten = "user-5"
        request_forget(settings, forgotten)
        wait_for(proc, log_path, lambda: "profile erased" in log_path.read_text("utf-8", "replace"), "the forget")
        wait_for(proc, log_path, lambda: (forgotten.encode(), None) in recs.poll(), "the tombstone")
    finally:
        stop(proc)
        dlq.close()
        recs.close()

    assert traces(settings.store.path, forgotten) == []
    store = LmdbStore(settings.store.path, readonly=True)
    with store.read() as txn:
        for user, count in expected.items():
            profile = txn.get_profile(user)
            if user == forgotten:
                assert profile is None and txn.get_seen(user) == set()
            else:
                assert profile is not None and profile.event_count == count, user
        counters = txn.counters()
    store.close()
    assert sum(counters[f"events.{k}"] for k in KINDS) == sum(expected.values())  # nothing lost, nothing twice
    print(f"\nhostile inputs tried: {len(bad)}, dead-lettered with their reason: {len(bad)}, "
          f"valid events: {sum(expected.values())}, applied: {sum(counters[f'events.{k}'] for k in KINDS)}")


def test_pseudonymised_store_and_logs_hold_no_user_id(settings, producer, tmp_path):
    salt = "pepper-" + uuid.uuid4().hex
    users = [f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"]
    ensure_topics(settings)
    publish_items(producer, settings.topics, ITEMS)
    log_path = tmp_path / "worker.log"
    proc = start_worker(settings, log_path, RECSTREAM_PRIVACY__PSEUDONYMISE="true", RECSTREAM_PRIVACY__SALT=salt,
                        RECSTREAM_LOG_LEVEL="debug")
    recs = TopicReader(settings, settings.topics.recommendations)
    try:
        wait_for(proc, log_path, lambda: "catalogue ready" in log_path.read_text("utf-8", "replace"), "the catalogue")
        for n in range(6):
            user = users[n % 2]
            send(producer, settings.topics.inputs["view"], user.encode(),
                 orjson.dumps({"user_id": user, "item_id": str(n + 1), "ts": TS + n}))
        wait_for(proc, log_path, lambda: latest_counts(recs.poll()) == {u: 3 for u in users}, "recommendations")
    finally:
        stop(proc)
        recs.close()
    # the consumer still gets the real ids (key and user_id: checked in latest_counts)
    rows = store_rows(settings.store.path)
    for user in users:
        assert not [db for db, k, v in rows if user.encode() in k or user.encode() in v], user
    logged = log_path.read_text("utf-8", "replace")
    assert not any(u in logged for u in users) and salt not in logged
    private = settings.model_copy(update={"privacy": PrivacySettings(pseudonymise=True, salt=salt)})
    pseudonyms = Pseudonymiser(private.privacy)
    with LmdbStore(settings.store.path, readonly=True) as store, store.read() as txn:
        assert [txn.get_profile(pseudonyms.store_id(u)).event_count for u in users] == [3, 3]

    # offline forget (worker stopped), keyed by the real id, erases the pseudonym's data
    changelog = settings.topics.changelog  # the worker's profiles changelog gets a tombstone too
    erased, tombstoned = forget_locally(private, users[0])
    assert erased and tombstoned == sorted([changelog, settings.topics.recommendations])
    reader = TopicReader(settings, changelog)
    deadline, gone = time.monotonic() + 20, pseudonyms.store_id(users[0]).encode()
    while not any(k == gone and v is None for k, v in reader.poll()) and time.monotonic() < deadline:
        pass
    reader.close()
    mine = [value for key, value in reader.records if key == gone]
    assert mine and mine[-1] is None  # keyed like the store; the last word on the user is the tombstone
    assert traces(settings.store.path, pseudonyms.store_id(users[0])) == []
    assert traces(settings.store.path, pseudonyms.store_id(users[1])) != []
    digest = hashlib.blake2b(pseudonyms.store_id(users[0]).encode(), digest_size=16).digest()
    assert not [r for r in store_rows(settings.store.path) if digest in r[1]]
