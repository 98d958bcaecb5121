"""bench/floor.py on the real embedded broker: the I/O floor does the worker's Kafka output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import orjson
import pytest
from kafka import KafkaConsumer

from bench.floor import CHANGELOG_BYTES
from stream.kafka_io import ensure_topics, make_producer, publish_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def read_all(settings, topic: str, expected: int, timeout_s: float = 30) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.broker.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=500)
    got: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(got) < expected:
            got.extend(consumer)
    finally:
        consumer.close()
    return got


def test_io_floor_sends_a_recommendation_and_a_changelog_record_per_user_of_each_batch(settings, tmp_path):
    ensure_topics(settings)
    events = [{"user_id": f"u{i % 40}", "item_id": f"i{i}", "kind": ("view", "click", "purchase")[i % 3],
               "ts": 1_700_000_000_000 + i} for i in range(300)]
    producer = make_producer(settings)
    assert publish_events(producer, settings.topics, events) == 300
    producer.close()
    out = tmp_path / "floor.json"
    env = {**os.environ, "RECSTREAM_BROKER__URL": settings.broker.url, "RECSTREAM_TOPICS__PREFIX": settings.topics.prefix}
    proc = subprocess.Popen([sys.executable, "-m", "bench.floor", str(out), "300", "io"], env=env,
                            stdout=open(tmp_path / "floor.log", "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not out.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "floor.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    result = orjson.loads(out.read_bytes())
    assert result["count"] >= 300 and result["last"] >= result["first"] and result["cpu_s"] > 0

    changelog = read_all(settings, f"{settings.topics.prefix}floor.changelog", 40)
    recommendations = read_all(settings, f"{settings.topics.prefix}floor.recommendations", len(changelog))
    # one of each per user of each batch: every user at least once, never more than its events
    per_user = Counter(m.key for m in changelog)
    assert set(per_user) == {f"u{i}".encode() for i in range(40)}
    assert all(n <= 300 // 40 + 1 for n in per_user.values())
    assert Counter(m.key for m in recommendations) == per_user
    assert {len(m.value) for m in changelog} == {CHANGELOG_BYTES}
    rec = orjson.loads(recommendations[0].value)
    assert rec["user_id"].encode() == recommendations[0].key and len(rec["items"]) == 10
    assert all(len(item["because"]) == 2 for item in rec["items"])
