"""The hybrid ranking in a real worker process on the embedded broker: the recommendations it
sends are the ones its store's histories imply, before and after a restart (the signals are
rebuilt from LMDB at start-up and then follow every committed flush)."""

from __future__ import annotations

import time
import uuid

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer

from store import LmdbStore
from stream.catalog import Catalogue
from stream.kafka_io import publish_events
from stream.processor import Processor
from worker_harness import logged, ml100k_events, start_worker, stop, total, wait_for
from worker_harness import topics_with_items  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 1500
WEIGHTS = {"RECSTREAM_RANKING__HYBRID__COOCCURRENCE": "1.0", "RECSTREAM_RANKING__HYBRID__POPULARITY": "0.5"}


def recommendation_for(settings, user: str, event_count: int, timeout_s: float = 60) -> dict:
    consumer = KafkaConsumer(settings.topics.recommendations, bootstrap_servers=settings.broker.bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None, consumer_timeout_ms=500)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for m in consumer:
                rec = orjson.loads(m.value) if m.value else None
                if rec and rec["user_id"] == user and rec["event_count"] == event_count:
                    return rec
    finally:
        consumer.close()
    raise AssertionError(f"no recommendation for {user} at {event_count} events")


def offline(settings, store_path, user: str, weights: tuple[float, float]) -> list[dict]:
    """The user's top-K computed from the stopped worker's store, signals rebuilt from it."""
    hybrid = settings.model_copy(update={"ranking": settings.ranking.model_copy(update={
        "hybrid": settings.ranking.hybrid.model_copy(update={"cooccurrence": weights[0], "popularity": weights[1]})})})
    with LmdbStore(store_path, readonly=True) as store:
        with store.read() as r:
            items = list(r.iter_items())
            profile, seen = r.get_profile(user), r.get_seen(user)
        catalogue = Catalogue(len(items[0].vector))
        for item in items:
            catalogue.upsert(item.item_id, item.vector)
        processor = Processor(hybrid, store, catalogue, keep_signals=True)
        processor.signals.rebuild(store)
        (rec,) = processor.recommend([profile], {user: seen})
    return rec["items"]


def probe(producer, settings, user: str, item: str, ts: int) -> None:
    publish_events(producer, settings.topics, [{"user_id": user, "item_id": item, "ts": ts, "kind": "click"}])


def test_worker_recommendations_follow_the_stored_histories_across_a_restart(settings, topics_with_items, ml100k_dir, tmp_path):
    producer, store, log = topics_with_items, settings.store.path, tmp_path / "worker.log"
    events = ml100k_events(ml100k_dir, EVENTS)
    counts: dict[str, int] = {}
    for e in events:
        counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
    first, second = sorted(counts, key=lambda u: (-counts[u], u))[:2]
    last_ts = events[-1]["ts"]
    group = f"test-{uuid.uuid4().hex[:8]}"

    proc = start_worker(settings, store, log, group, **WEIGHTS)
    try:
        wait_for(lambda: logged(log, "catalogue ready"), "catalogue", [log], 240, [proc])
        publish_events(producer, settings.topics, events)
        wait_for(lambda: total(store) == EVENTS, "all events applied", [log], 120, [proc])
        probe(producer, settings, first, "50", last_ts + 1000)  # a flush after everything else
        sent = recommendation_for(settings, first, counts[first] + 1)
    finally:
        stop(proc)
    assert_same(sent, offline(settings, store, first, (1.0, 0.5)))
    assert [i["item_id"] for i in sent["items"]] != [i["item_id"] for i in offline(settings, store, first, (0.0, 0.0))]  # the blend mattered

    proc = start_worker(settings, store, log, group, **WEIGHTS)  # restarted: signals rebuilt from LMDB
    try:
        wait_for(lambda: logged(log, "hybrid signals rebuilt from", 2), "signals rebuilt", [log], 240, [proc])
        probe(producer, settings, second, "100", last_ts + 2000)
        sent = recommendation_for(settings, second, counts[second] + 1)
    finally:
        stop(proc)
    assert logged(log, f"hybrid signals rebuilt from {len(counts)} stored histories")
    assert_same(sent, offline(settings, store, second, (1.0, 0.5)))


def assert_same(sent: dict, want: list[dict]) -> None:
    """Same items, scores and ``because`` lists (which the hybrid's co-occurrence shapes too)."""
    assert [(i["item_id"], i["because"]) for i in sent["items"]] == [(i["item_id"], i["because"]) for i in want]
    np.testing.assert_allclose([i["score"] for i in sent["items"]], [i["score"] for i in want], atol=2e-6)
