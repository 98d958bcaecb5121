"""Profiles survive SIGKILL and follow their partitions, against the real embedded broker.

Both tests publish MovieLens-100K ratings (in event-time order) and compare the workers'
final profiles with an uninterrupted run of the same events (tests/worker_harness.py).
Repeated kills during a long stream: tests/test_chaos.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import urllib.request
import uuid

import orjson
import pytest

from store import ProfileRecord
from stream.broker import free_port
from stream.kafka_io import publish_events
from worker_harness import (assert_equal_profiles, changelog_latest, logged, ml100k_events, profiles, reference,
                            restored_sources, start_worker, stop, total, wait_for)
from worker_harness import topics_with_items  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 2000


@pytest.fixture
def ml_events(ml100k_dir):
    return ml100k_events(ml100k_dir, EVENTS)  # every 50th rating


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


def pending(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        return orjson.loads(response.read())["pending_events"]


def test_pending_windows_at_handover_are_flushed_before_the_partitions_move(
    settings, topics_with_items, ml_events, tmp_path
):
    """Worker a holds every event in open windows (windows of a century, idle flush after
    60 s) when b joins and takes some of its partitions. a must apply and ack them before
    the revocation completes: flushed later, they would reach the changelog after b's newer
    records of the same users (b restores and applies them too), and the flush would stall
    the rebalance for the idle timeout. Either way b's profiles or the changelog would differ
    from an uninterrupted run."""
    producer = topics_with_items
    group = f"test-{uuid.uuid4().hex[:8]}"
    store_a, store_b = tmp_path / "a.lmdb", tmp_path / "b.lmdb"
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    half = len(ml_events) // 2
    port = free_port()
    slow = {"RECSTREAM_WINDOWS__SIZE_S": str(100 * 365 * 86400), "RECSTREAM_WINDOWS__MAX_EVENTS": "100000",
            "RECSTREAM_WINDOWS__MAX_PENDING": "100000", "RECSTREAM_WINDOWS__IDLE_FLUSH_S": "60"}
    a = start_worker(settings, store_a, log_a, group, web_port=port, **slow)
    b = None
    try:
        wait_for(lambda: logged(log_a, "catalogue ready"), "worker a", [log_a], 240, [a])
        publish_events(producer, settings.topics, ml_events[:half])
        wait_for(lambda: pending(port) == half, "a holding the first half in open windows", [log_a], 60, [a])
        assert total(store_a) == 0

        b = start_worker(settings, store_b, log_b, group)
        wait_for(lambda: logged(log_b, "restored "), "b assigned and restored", [log_a, log_b], 45, [a, b])
        assert total(store_a) == half, "a applied its pending events before handing over"
        moved = restored_sources(log_b, settings)
        assert moved and {u for u, p in profiles(store_b).items() if p.applied.keys() & moved}

        publish_events(producer, settings.topics, ml_events[half:])
        stop(a)  # graceful: a flushes what it holds; its partitions move to b
        wait_for(lambda: total(store_b) >= len(ml_events), "every event on b", [log_b], 120, [b])
        time.sleep(3)
        want = reference(settings, store_b, ml_events, tmp_path / "ref")
        assert_equal_profiles(profiles(store_b), want)
        stop(b)
        assert_equal_profiles(changelog_latest(settings), want)
    finally:
        stop(a)
        if b is not None:
            stop(b)
