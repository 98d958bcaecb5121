"""A worker that starts behind its input catches up in large slices (windows.catchup_pending):
one update and one recommendation per user and slice, every event applied once, also when
a slice's flush is split into transactions of a few users (windows.flush_users), and one
full garbage collection after each slice (stream.heap)."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from stream import movielens
from stream.kafka_io import ensure_topics, make_producer, publish_items
from tests.test_pipeline import BASE_TS, consume, send, start_worker, wait_for_log
from tests.worker_harness import stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS, PER_USER = 100, 30


def test_a_backlog_is_applied_once_in_catch_up_slices(settings, ml100k_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSTREAM_WINDOWS__MAX_PENDING", "300")
    monkeypatch.setenv("RECSTREAM_WINDOWS__CATCHUP_PENDING", "1500")
    monkeypatch.setenv("RECSTREAM_WINDOWS__FLUSH_USERS", "7")  # a slice's 100 users in 15 transactions
    items = movielens.load_items(ml100k_dir)
    ensure_topics(settings)
    producer = make_producer(settings)
    publish_items(producer, settings.topics, [movielens.item_message(i) for i in items])
    # the backlog, before the worker starts: each event 2 s after the last, so in event time
    # every event closes the windows before it
    for n in range(USERS * PER_USER):
        user = f"u{n % USERS}"
        value = orjson.dumps({"user_id": user, "item_id": items[(n * 7) % len(items)].item_id, "ts": BASE_TS + n * 2000})
        send(producer, settings.topics.inputs["view"], user, value)
    producer.flush()
    producer.close()
    log_path = tmp_path / "worker.log"
    proc = start_worker(settings, log_path)
    try:
        wait_for_log(log_path, "catalogue ready", proc)

        def complete(recs):
            return len({r["user_id"] for r in recs if r["event_count"] == PER_USER}) == USERS

        recs = consume(settings, settings.topics.recommendations, complete, timeout_s=120)
        assert complete(recs), log_path.read_text()[-3000:]
        assert max(r["event_count"] for r in recs) == PER_USER  # nothing applied twice
        log = log_path.read_text()
        assert "catching up: " in log
        # 3,000 events in slices of 1,500: at least one slice flushed whole, then collected
        assert "catch-up slice flushed; full garbage collection in" in log, log[-3000:]
        # windows closing on time would send one per user and flush of max_pending (300)
        # events: 10 flushes of 100 users; slices of 1,500 events send about a fifth of that
        per_user = Counter(r["user_id"] for r in recs)
        assert len(recs) <= 500 and max(per_user.values()) <= 5, (len(recs), per_user.most_common(3))
    finally:
        stop(proc)
