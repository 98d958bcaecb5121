"""End to end against the real embedded broker: kafka-python in, a worker process, Kafka out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer

from store import LmdbStore
from stream import movielens
from stream.kafka_io import ensure_topics, make_producer, publish_items

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_TS = 1_700_000_000_000


def start_worker(settings, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stream.cli", "--broker", settings.broker.url, "--store", str(settings.store.path),
           "--topic-prefix", settings.topics.prefix, "worker", "--web-port", "0"]
    env = {**os.environ, "RECSTREAM_APP_ID": f"test-{uuid.uuid4().hex[:8]}"}  # a consumer group per test
    return subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env)


def wait_for_log(path: Path, needle: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker died:\n{path.read_text()[-3000:]}"
        if needle in path.read_text("utf-8", "replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in worker log after {timeout_s}s:\n{path.read_text()[-3000:]}")


def consume(settings, topic: str, until, timeout_s: float = 60) -> list[dict]:
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.broker.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=500)
    got: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(got):
            for message in consumer:
                got.append(orjson.loads(message.value))
                if until(got):
                    break
    finally:
        consumer.close()
    return got


@pytest.fixture
def running_worker(settings, ml100k_dir, tmp_path):
    items = movielens.load_items(ml100k_dir)
    ensure_topics(settings)
    producer = make_producer(settings)
    publish_items(producer, settings.topics, [movielens.item_message(i) for i in items])
    producer.flush()
    log_path = tmp_path / "worker.log"
    proc = start_worker(settings, log_path)
    try:
        wait_for_log(log_path, "catalogue ready", proc)
        yield producer, items, proc, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        producer.close()


def send(producer, topic: str, key: str | None, value: bytes) -> None:
    producer.send(topic, key=key.encode() if key is not None else None, value=value)


def test_history_drives_recommendations_and_bad_records_go_to_the_dlq(settings, running_worker):
    producer, items, proc, log_path = running_worker
    genres = {i.item_id: set(i.genres) for i in items}
    animation = [i.item_id for i in items if "Animation" in i.genres][:10]
    horror = [i.item_id for i in items if "Horror" in i.genres and "Comedy" not in i.genres][:10]
    topics = settings.topics.inputs

    bad = [
        ("anim-fan", b"{this is not json"),
        ("anim-fan", b'{"user_id":"anim-fan","ts":1700000000000}'),  # missing item_id
        ("anim-fan", b'{"user_id":"anim-fan","item_id":"no-such-item","ts":1700000000000}'),
        ("anim-fan", b'{"user_id":"anim-fan","item_id":"1","ts":-1}'),
        ("someone-else", b'{"user_id":"anim-fan","item_id":"1","ts":1700000000000}'),  # key mismatch
    ]
    expected = {"anim-fan": 0, "horror-fan": 0}  # per user: valid events sent
    for n, (a, h) in enumerate(zip(animation, horror)):
        kind = ["view", "click", "purchase"][n % 3]
        for user, item in (("anim-fan", a), ("horror-fan", h)):
            value = orjson.dumps({"user_id": user, "item_id": item, "ts": BASE_TS + n * 60_000})
            send(producer, topics[kind], user, value)
            expected[user] += 1
        if n < len(bad):  # interleave the hostile records with the valid ones
            key, value = bad[n]
            send(producer, topics["click"], key, value)
    producer.flush()

    def complete(recs):
        latest = {}
        for r in recs:
            latest[r["user_id"]] = max(latest.get(r["user_id"], 0), r["event_count"])
        return latest == expected

    recs = consume(settings, settings.topics.recommendations, complete)
    assert complete(recs), f"incomplete recommendations: {recs[-3:]}\n{log_path.read_text()[-2000:]}"

    final = {r["user_id"]: r for r in recs if r["event_count"] == expected[r["user_id"]]}
    for user, history, genre in (("anim-fan", animation, "Animation"), ("horror-fan", horror, "Horror")):
        rec = final[user]
        assert len(rec["items"]) == settings.ranking.k
        recommended = [i["item_id"] for i in rec["items"]]
        assert not set(recommended) & set(history), "seen items must be excluded"
        matching = sum(genre in genres[i] for i in recommended)
        assert matching >= 5, f"{user}: only {matching}/10 {genre} items in {recommended}"
        for item in rec["items"]:
            assert item["because"] and set(item["because"]) <= set(history)
        scores = [i["score"] for i in rec["items"]]
        assert scores == sorted(scores, reverse=True)
        assert rec["profile_version"] >= 1

    dead = consume(settings, settings.topics.dlq, lambda got: len(got) >= len(bad), timeout_s=30)
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == len(bad), reasons
    for needle in ("malformed JSON", "missing item_id", "unknown item", "absurd timestamp", "key must equal user_id"):
        assert any(needle in r for r in reasons), (needle, reasons)
    assert all(d["topic"] == topics["click"] and d["offset"] >= 0 for d in dead)

    # a new item is encoded and usable without a restart
    publish_items(producer, settings.topics, [{"item_id": "brand-new", "title": "A brand new animated feature",
                                               "attributes": {"genres": ["Animation", "Children's"]}}])
    producer.flush()
    wait_for_log(log_path, f"{len(items) + 1} in catalogue", proc, timeout_s=60)
    send(producer, topics["purchase"], "newcomer", orjson.dumps({"user_id": "newcomer", "item_id": "brand-new", "ts": BASE_TS}))
    producer.flush()
    newcomer = consume(settings, settings.topics.recommendations, lambda got: any(r["user_id"] == "newcomer" for r in got))
    (rec,) = [r for r in newcomer if r["user_id"] == "newcomer"]
    assert rec["event_count"] == 1 and rec["items"][0]["because"] == ["brand-new"]
    assert sum("Animation" in genres[i["item_id"]] for i in rec["items"]) >= 5

    proc.terminate()
    proc.wait(timeout=20)
    store = LmdbStore(settings.store.path, readonly=True)
    with store.read() as txn:
        for user, count in expected.items():
            profile = txn.get_profile(user)
            assert profile is not None and profile.event_count == count, user
            assert len(txn.get_seen(user)) == count
    store.close()
