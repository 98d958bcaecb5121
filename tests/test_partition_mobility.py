"""Profiles survive SIGKILL and follow their partitions, against the real embedded broker.

Both tests publish MovieLens-100K ratings (in event-time order) and compare the workers'
final profiles with an uninterrupted run of the same events through :class:`Processor`
(the worker's scoring path) on a scratch store: vectors within 1e-5, event counts exact.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
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
from stream.kafka_io import ensure_topics, make_producer, publish_events, publish_items
from stream.processor import Processor
from stream.windows import UserWindow

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 2000
#: Tansu hands a dead member's partitions over only after its session timeout.
SESSION_TIMEOUT_S = "4"


def start_worker(settings, store_path: Path, log_path: Path, group: str, standby: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stream.cli", "--broker", settings.broker.url, "--store", str(store_path),
           "--topic-prefix", settings.topics.prefix, "worker", "--web-port", "0"]
    env = {**os.environ, "RECSTREAM_APP_ID": group, "RECSTREAM_BROKER__SESSION_TIMEOUT_S": SESSION_TIMEOUT_S,
           "RECSTREAM_STORE__STANDBY": str(standby).lower()}
    return subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env)


def wait_for(predicate, what: str, logs: list[Path], timeout_s: float = 120, procs=()) -> None:
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
    with LmdbStore(tmp_path / f"reference-{uuid.uuid4().hex[:6]}.lmdb", durable=False) as scratch:
        Processor(settings, scratch, catalogue).flush(list(windows.values()), now_ms=0, recommend=False)
        with scratch.read() as r:
            return {p.user_id: p for p in r.iter_profiles()}


def assert_equal_profiles(got: dict[str, ProfileRecord], want: dict[str, ProfileRecord]) -> None:
    assert sorted(got) == sorted(want)
    worst = 0.0
    for user, ref in want.items():
        p = got[user]
        assert (p.event_count, p.kind_counts) == (ref.event_count, ref.kind_counts), user
        worst = max(worst, float(np.abs(p.vectors - ref.vectors).max()), float(np.abs(p.weights - ref.weights).max()))
        assert p.last_ts_ms == ref.last_ts_ms, user
    assert worst <= 1e-5, worst


def changelog_latest(settings) -> dict[str, ProfileRecord]:
    topic = settings.topics.changelog
    consumer = KafkaConsumer(bootstrap_servers=settings.broker.bootstrap, group_id=None, enable_auto_commit=False,
                             consumer_timeout_ms=1500)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    latest = {m.key.decode(): decode_changelog(m.value)[0] for m in consumer}
    consumer.close()
    return latest


@pytest.fixture
def ml_events(ml100k_dir):
    ratings = sorted(movielens.load_ratings(ml100k_dir), key=lambda r: (r.ts_s, r.user_id, r.item_id))
    # every 50th rating: many users on every partition, still in event-time order
    return [movielens.rating_event(r) for r in ratings[:: len(ratings) // EVENTS][:EVENTS]]


@pytest.fixture
def topics_with_items(settings, ml100k_dir):
    ensure_topics(settings)
    producer = make_producer(settings)
    publish_items(producer, settings.topics, [movielens.item_message(i) for i in movielens.load_items(ml100k_dir)])
    yield producer
    producer.close()


def restored_sources(log: Path, settings) -> set[str]:
    """The input sources ("topic:partition") of the partitions named in the log's first restore."""
    line = next(line for line in log.read_text().splitlines() if "restored " in line)
    partitions = orjson.loads(line.split("partitions ", 1)[1].split("]", 1)[0] + "]")
    return {f"{t}:{p}" for p in partitions for t in settings.topics.inputs.values()}


def total(store: Path) -> int:
    return sum(p.event_count for p in profiles(store).values())


@pytest.mark.parametrize("disk", ["kept", "lost"])
def test_sigkill_mid_stream_then_restart_equals_an_uninterrupted_run(
    settings, topics_with_items, ml_events, tmp_path, disk
):
    """The worker is killed mid-stream; a new one starts on the same LMDB, or on an empty one
    (the disk was lost, or the partitions moved to another machine): Kafka rebuilds it."""
    producer, store, log = topics_with_items, settings.store.path, tmp_path / "worker.log"
    group = f"test-{uuid.uuid4().hex[:8]}"
    proc = start_worker(settings, store, log, group)
    try:
        wait_for(lambda: logged(log, "catalogue ready"), "catalogue", [log], 240, [proc])

        def paced() -> None:  # ~4 s of input, so that the kill lands mid-stream
            for start in range(0, len(ml_events), 100):
                publish_events(producer, settings.topics, ml_events[start : start + 100])
                time.sleep(0.2)

        publisher = threading.Thread(target=paced)
        publisher.start()
        wait_for(lambda: total(store) >= EVENTS // 5, "first flushes", [log], 60, [proc])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        applied_at_kill = total(store)
        publisher.join()
        assert applied_at_kill < EVENTS, "the kill must land mid-stream"

        catalogue = tmp_path / "catalogue.lmdb"  # for the reference run
        if disk == "lost":
            os.rename(store, catalogue)
        else:
            shutil.copytree(store, catalogue)
        proc = start_worker(settings, store, log, group)
        wait_for(lambda: total(store) >= EVENTS, "all events after restart", [log], 150, [proc])
        time.sleep(3)  # anything double-counted would show now
        assert logged(log, "restored ")
        want = reference(settings, catalogue, ml_events, tmp_path)
        got = profiles(store)
        assert_equal_profiles(got, want)
        stop(proc)
        # the changelog holds every user's final profile: another worker could take over
        assert_equal_profiles(changelog_latest(settings), want)
        if disk == "kept":  # a graceful stop checkpointed: a restart reads nothing again
            proc = start_worker(settings, store, log, group)
            wait_for(lambda: logged(log, "restored ", 3), "third start", [log], 120, [proc])
            last_restore = [line for line in log.read_text().splitlines() if "restored " in line][-1]
            assert ": 0 users" in last_restore, last_restore
    finally:
        stop(proc)


@pytest.mark.parametrize("standby", [False, True], ids=["restore", "standby"])
def test_partitions_move_to_a_second_worker_and_back_with_their_profiles(
    settings, topics_with_items, ml_events, tmp_path, standby
):
    """Scale out (a → a + b), then in (b alone): each owner has its own LMDB directory.

    With standby, b also keeps warm copies of a's partitions, so the final move reads nothing.
    """
    producer = topics_with_items
    group = f"test-{uuid.uuid4().hex[:8]}"
    store_a, store_b = tmp_path / "a.lmdb", tmp_path / "b.lmdb"
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    half, third = len(ml_events) // 3, 2 * len(ml_events) // 3
    first, second, last = ml_events[:half], ml_events[half:third], ml_events[third:]
    a = start_worker(settings, store_a, log_a, group, standby)
    b = None
    try:
        wait_for(lambda: logged(log_a, "catalogue ready"), "worker a", [log_a], 240, [a])
        publish_events(producer, settings.topics, first)
        wait_for(lambda: total(store_a) >= half, "first half on a", [log_a], 60, [a])

        b = start_worker(settings, store_b, log_b, group, standby)  # its own, empty LMDB
        wait_for(lambda: logged(log_b, "catalogue ready") and logged(log_b, "restored "), "b restored partitions",
                 [log_a, log_b], 240, [a, b])
        before, on_b = profiles(store_a), profiles(store_b)
        moved = {u for u, p in on_b.items() if p.applied.keys() & restored_sources(log_b, settings)}
        assert moved, "b restored no profile"
        for user in on_b:  # restored (or standby copies) before b processed anything: identical to a's
            assert on_b[user] == before[user]

        publish_events(producer, settings.topics, second)

        def owners() -> dict[str, ProfileRecord]:
            pa, pb = profiles(store_a), profiles(store_b)
            return {u: max((pa.get(u), pb.get(u)), key=lambda p: -1 if p is None else p.event_count)
                    for u in set(pa) | set(pb)}

        wait_for(lambda: sum(p.event_count for p in owners().values()) >= third, "second third",
                 [log_a, log_b], 120, [a, b])
        time.sleep(3)
        want = reference(settings, store_a, ml_events[:third], tmp_path / "ref-2")
        assert_equal_profiles(owners(), want)
        on_b = profiles(store_b)
        users_second = {e["user_id"] for e in second}
        carried = [u for u in moved & users_second if on_b[u].event_count == want[u].event_count]
        assert carried, "no moved user got new events on b on top of its restored profile"

        if standby:  # b's warm copies catch up with a's partitions
            wait_for(lambda: profiles(store_b) == owners(), "standby copies on b", [log_b], 30, [b])
        stop(a)  # graceful: a flushes, publishes and commits before its partitions go to b
        wait_for(lambda: logged(log_b, "restored ", 2), "b restored a's partitions", [log_b], 120, [b])
        last_restore = [line for line in log_b.read_text().splitlines() if "restored " in line][-1]
        assert (" 0 users" in last_restore) == standby, last_restore  # standby: nothing left to read
        publish_events(producer, settings.topics, last)
        wait_for(lambda: total(store_b) >= len(ml_events), "last third on b alone", [log_b], 120, [b])
        time.sleep(3)
        assert_equal_profiles(profiles(store_b), reference(settings, store_b, ml_events, tmp_path / "ref-3"))
    finally:
        stop(a)
        if b is not None:
            stop(b)
