"""Shared by the worker-process tests (partition mobility, chaos): start and stop real
workers, publish MovieLens-100K events, read stores and the changelog, and compare final
profiles with an uninterrupted reference run through :class:`Processor` (the worker's
scoring path): vectors and weights within 1e-5, event counts exact.

Fixtures defined here are imported by the test modules that use them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from store import LmdbStore, ProfileRecord, StoreError, decode_changelog
from stream import movielens
from stream.catalog import Catalogue
from stream.config import EVENT_KINDS
from stream.events import Event
from stream.kafka_io import ensure_topics, make_producer, publish_items
from stream.processor import Processor
from stream.windows import UserWindow

#: Tansu hands a dead member's partitions over only after its session timeout.
SESSION_TIMEOUT_S = "4"


def start_worker(settings, store_path: Path, log_path: Path, group: str, standby: bool = False,
                 web_port: int = 0, **env: str) -> subprocess.Popen:
    """A worker process (``recstream worker``) in consumer group ``group``; ``env`` adds
    ``RECSTREAM_*`` settings."""
    cmd = [sys.executable, "-m", "stream.cli", "--broker", settings.broker.url, "--store", str(store_path),
           "--topic-prefix", settings.topics.prefix, "worker", "--web-port", str(web_port)]
    env = {**os.environ, "RECSTREAM_APP_ID": group, "RECSTREAM_BROKER__SESSION_TIMEOUT_S": SESSION_TIMEOUT_S,
           "RECSTREAM_STORE__STANDBY": str(standby).lower(), **env}
    return subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env)


def wait_for(predicate, what: str, logs: list[Path], timeout_s: float = 120, procs=()) -> None:
    """Poll ``predicate`` until true; fail with the logs' tails on timeout or if a worker died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            assert proc.poll() is None, f"worker died:\n{log.read_text()[-3000:]}"
        if predicate():
            return
        time.sleep(0.25)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-2500:]}" for p in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def logged(path: Path, needle: str, count: int = 1) -> bool:
    return path.exists() and path.read_text("utf-8", "replace").count(needle) >= count


def profiles(path: Path) -> dict[str, ProfileRecord]:
    """The profiles in a worker's store, read while it runs (MVCC: never blocks the writer)."""
    try:
        store = LmdbStore(path, readonly=True)
    except StoreError:
        return {}
    try:
        with store.read() as r:
            return {p.user_id: p for p in r.iter_profiles()}
    finally:
        store.close()


def total(store: Path) -> int:
    return sum(p.event_count for p in profiles(store).values())


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def reference(settings, worker_store: Path, events: list[dict], tmp_path: Path) -> dict[str, ProfileRecord]:
    """An uninterrupted run: every event applied once, through the worker's Processor."""
    with LmdbStore(worker_store, readonly=True) as st, st.read() as r:
        items = list(r.iter_items())
    catalogue = Catalogue(len(items[0].vector))
    for item in items:
        catalogue.upsert(item.item_id, item.vector)
    windows: dict[str, UserWindow] = {}
    for n, e in enumerate(events):
        event = Event(e["user_id"], e["item_id"], e["ts"], EVENT_KINDS.index(e["kind"]), "ref:0", n)
        windows.setdefault(e["user_id"], UserWindow(e["user_id"])).events.append(event)
    tmp_path.mkdir(parents=True, exist_ok=True)
    with LmdbStore(tmp_path / f"reference-{uuid.uuid4().hex[:6]}.lmdb", durable=False) as scratch:
        Processor(settings, scratch, catalogue).flush(list(windows.values()), now_ms=0, recommend=False)
        with scratch.read() as r:
            return {p.user_id: p for p in r.iter_profiles()}


def assert_equal_profiles(got: dict[str, ProfileRecord], want: dict[str, ProfileRecord]) -> float:
    """Same users, exact event and kind counts, vectors and weights within 1e-5; returns the
    largest difference."""
    assert sorted(got) == sorted(want)
    worst = 0.0
    for user, ref in want.items():
        p = got[user]
        assert (p.event_count, p.kind_counts) == (ref.event_count, ref.kind_counts), user
        worst = max(worst, float(np.abs(p.vectors - ref.vectors).max()), float(np.abs(p.weights - ref.weights).max()))
        assert p.last_ts_ms == ref.last_ts_ms, user
    assert worst <= 1e-5, worst
    return worst


def changelog_latest(settings) -> dict[str, ProfileRecord]:
    """The last profile per user in the changelog topic (what a fresh restore would take)."""
    topic = settings.topics.changelog
    consumer = KafkaConsumer(bootstrap_servers=settings.broker.bootstrap, group_id=None, enable_auto_commit=False,
                             consumer_timeout_ms=1500)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    latest = {m.key.decode(): decode_changelog(m.value)[0] for m in consumer}
    consumer.close()
    return latest


def ml100k_events(ml100k_dir: Path, count: int) -> list[dict]:
    """``count`` MovieLens-100K ratings as events, evenly spread, in event-time order (many
    users on every partition)."""
    ratings = sorted(movielens.load_ratings(ml100k_dir), key=lambda r: (r.ts_s, r.user_id, r.item_id))
    return [movielens.rating_event(r) for r in ratings[:: len(ratings) // count][:count]]


def restored_sources(log: Path, settings) -> set[str]:
    """The input sources ("topic:partition") of the partitions named in the log's first restore."""
    line = next(line for line in log.read_text().splitlines() if "restored " in line)
    partitions = orjson.loads(line.split("partitions ", 1)[1].split("]", 1)[0] + "]")
    return {f"{t}:{p}" for p in partitions for t in settings.topics.inputs.values()}


@pytest.fixture
def topics_with_items(settings, ml100k_dir):
    """The topics created and the MovieLens catalogue published; yields the producer."""
    ensure_topics(settings)
    producer = make_producer(settings)
    publish_items(producer, settings.topics, [movielens.item_message(i) for i in movielens.load_items(ml100k_dir)])
    yield producer
    producer.close()
