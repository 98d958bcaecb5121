"""Faults against the real embedded broker: a worker SIGKILLed again and again mid-stream,
and the broker frozen (SIGSTOP) for 20 s under a running worker.

Each kill lands at a random point (a random progress threshold, then a random delay, so
some land mid-flush: after the LMDB commit, before the changelog delivery or the ack). The
worker restarts on its own LMDB, or on an empty one (disk lost: everything comes back from
the changelog). The final profiles must equal an uninterrupted run of the same events
(tests/worker_harness.py): no event lost, none applied twice.

The CI version (about 12k events, 5 kills) runs in ``make test``; the long one (50k events,
10 kills) is marked ``chaos``, deselected by default, and runs under ``make chaos``.
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from bench.e2e import process_tree
from stream import movielens
from stream.broker import EmbeddedBroker, free_port
from stream.config import load_settings
from stream.kafka_io import ensure_topics, make_producer, publish_events, publish_items
from worker_harness import (assert_equal_profiles, changelog_latest, logged, ml100k_events, profiles, reference,
                            start_worker, stop, total, wait_for)
from worker_harness import topics_with_items  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FREEZE_S = 20


@pytest.mark.parametrize(("events", "kills", "lost_disk_at", "publish_s"), [
    pytest.param(12_000, 5, {2}, 50, id="ci"),
    pytest.param(50_000, 10, {3, 7}, 150, id="long", marks=[pytest.mark.chaos, pytest.mark.timeout(1500)]),
])
def test_repeated_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(
    settings, topics_with_items, ml100k_dir, tmp_path, events, kills, lost_disk_at, publish_s
):
    stream = ml100k_events(ml100k_dir, events)
    n = len(stream)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    producer, store, log = topics_with_items, settings.store.path, tmp_path / "worker.log"
    group = f"chaos-{uuid.uuid4().hex[:8]}"
    # one random progress point per segment, so the kills spread over the whole stream
    thresholds = [int(n * (0.05 + 0.85 * (k + rng.random()) / kills)) for k in range(kills)]
    chunk = 100
    pause = publish_s / (n / chunk)
    published = threading.Event()

    def paced() -> None:
        for start in range(0, n, chunk):
            publish_events(producer, settings.topics, stream[start : start + chunk])
            time.sleep(pause)
        published.set()

    proc = start_worker(settings, store, log, group)
    publisher = threading.Thread(target=paced, daemon=True)
    at_kill: list[int] = []
    try:
        wait_for(lambda: logged(log, "catalogue ready"), "catalogue", [log], 240, [proc])
        publisher.start()
        for k, threshold in enumerate(thresholds):
            # Each worker must apply something new before it dies (so it restored first): a kill
            # could otherwise land during start-up when the previous one overshot this threshold.
            goal = max(threshold, at_kill[-1] + 1 if at_kill else 0)
            wait_for(lambda: total(store) >= goal, f"progress to {goal} before kill {k + 1}",
                     [log], 180, [proc])
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            at_kill.append(total(store))
            assert at_kill[-1] < n, f"kill {k + 1} landed after the stream (seed {seed})"
            if k in lost_disk_at:
                shutil.rmtree(store)  # the disk is lost: the restart rebuilds from the changelog
            proc = start_worker(settings, store, log, group)
        publisher.join()
        wait_for(lambda: total(store) >= n, "every event after the last restart", [log], 240, [proc])
        time.sleep(3)  # anything applied twice would show now
        want = reference(settings, store, stream, tmp_path / "reference")
        worst = assert_equal_profiles(profiles(store), want)
        stop(proc)
        assert_equal_profiles(changelog_latest(settings), want)  # what any new owner would restore
    finally:
        stop(proc)
    applied = sum(p.event_count for p in want.values())
    assert applied == n
    assert logged(log, "restored ", kills + 1)
    print(f"\nchaos (seed {seed}): {kills} SIGKILLs survived ({len(lost_disk_at)} with the LMDB deleted) during "
          f"{n} events; applied at each kill {at_kill}; events lost 0, applied twice 0; max abs diff {worst:.1e}")


def healthz(port: int) -> int:
    """The HTTP status of the worker's ``/healthz`` (0 when it does not answer in time)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_broker_frozen_for_20_s_mid_stream_worker_rides_it_out(ml100k_dir, tmp_path):
    """SIGSTOP the broker for 20 s while the worker consumes, then SIGCONT: the worker keeps
    running, ``/healthz`` is unhealthy while the broker is frozen and healthy after, and every
    event is applied exactly once. The test owns its broker: freezing the session's one would
    stall every other test."""
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log").start()
    settings = load_settings(broker={"url": broker.url}, topics={"prefix": f"f{uuid.uuid4().hex[:8]}."},
                             store={"path": tmp_path / "store.lmdb"}, web_port=0)
    stream = ml100k_events(ml100k_dir, 6000)
    first, second = stream[:4000], stream[4000:]
    store, log, port = settings.store.path, tmp_path / "worker.log", free_port()
    ensure_topics(settings)
    producer = make_producer(settings)
    proc = None
    try:
        publish_items(producer, settings.topics, [movielens.item_message(i) for i in movielens.load_items(ml100k_dir)])
        proc = start_worker(settings, store, log, f"freeze-{uuid.uuid4().hex[:8]}", web_port=port)
        wait_for(lambda: healthz(port) == 200, "healthy worker", [log], 240, [proc])
        publish_events(producer, settings.topics, first)
        wait_for(lambda: total(store) >= 1000, "the stream under way", [log], 120, [proc])
        broker.freeze()
        frozen_at, statuses = time.monotonic(), []
        while time.monotonic() - frozen_at < FREEZE_S:
            statuses.append((round(time.monotonic() - frozen_at, 1), healthz(port)))
            assert proc.poll() is None, f"worker died during the freeze:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        applied_frozen = total(store)
        broker.thaw()
        assert applied_frozen < len(stream)
        assert all(status != 200 for at, status in statuses if at >= 5), statuses  # the outage is reported
        assert statuses and statuses[-1][1] == 503, statuses
        wait_for(lambda: healthz(port) == 200, "healthy after the thaw", [log], 60, [proc])
        publish_events(producer, settings.topics, second)
        wait_for(lambda: total(store) >= len(stream), "every event after the thaw", [log], 180, [proc])
        time.sleep(3)  # anything applied twice would show now
        want = reference(settings, store, stream, tmp_path / "reference")
        assert_equal_profiles(profiles(store), want)
        assert healthz(port) == 200
        stop(proc)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert_equal_profiles(changelog_latest(settings), want)
        print(f"\nbroker frozen {FREEZE_S} s mid-stream ({applied_frozen} of {len(stream)} events applied): worker "
              f"survived, /healthz non-200 during the freeze, 200 after; events lost 0, applied twice 0")
    finally:
        producer.close()
        if proc is not None:
            stop(proc)
        broker.stop()


def test_a_sigkilled_worker_takes_its_store_owner_process_with_it(settings, topics_with_items, tmp_path):
    """The store's owner is a child process (stream.owner); it must not outlive the worker
    and go on writing beside the worker's successor."""
    log = tmp_path / "worker.log"
    proc = start_worker(settings, settings.store.path, log, f"orphan-{uuid.uuid4().hex[:8]}")
    try:
        wait_for(lambda: logged(log, "catalogue ready"), "catalogue", [log], 240, [proc])
        children = process_tree(proc.pid)[1:]
        assert children, "no store owner process"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(children), f"still running after the worker died: {_alive(children)}"
    finally:
        stop(proc)


def _alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone: they run nothing)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive
