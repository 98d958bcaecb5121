"""The worker's HTTP API and metrics against a running worker process and a real broker.

The test owns its broker (not the session one) so that it can stop it and see ``/healthz``
turn unhealthy. Windows flush only when the event-time watermark passes them (the idle flush
is an hour), so a user's last window stays open until a later event or the shutdown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
import urllib.error
import urllib.request
from prometheus_client.parser import text_string_to_metric_families

from store import LmdbStore
from stream import movielens
from stream.broker import EmbeddedBroker, free_port
from stream.config import load_settings
from stream.kafka_io import ensure_topics, make_producer, publish_items
from tests.test_pipeline import consume
from worker_harness import stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_TS = 1_700_000_000_000
DAY = 86_400_000


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str) -> tuple[int, dict]:
    status, body = get(url)
    return status, orjson.loads(body)


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from ``/metrics``."""
    status, body = get(f"{base}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def wait_until(check, what: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker died:\n{log_path.read_text()[-3000:]}"
        try:
            result = check()
        except (OSError, urllib.error.URLError):
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}:\n{log_path.read_text()[-3000:]}")


def start_worker(settings, port: int, log_path: Path, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stream.cli", "--broker", settings.broker.url, "--store", str(settings.store.path),
           "--topic-prefix", settings.topics.prefix, "worker", "--web-port", str(port)]
    env = {**os.environ, "RECSTREAM_APP_ID": settings.app_id, "RECSTREAM_WEB_HOST": "127.0.0.1",
           "RECSTREAM_WEB_ADVERTISED_URL": f"http://127.0.0.1:{port}", "RECSTREAM_LOG_FORMAT": "json", **env}
    return subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env)


@pytest.fixture
def own_broker(tmp_path):
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_http_api_metrics_health_and_graceful_shutdown(own_broker, ml100k_dir, tmp_path):
    settings = load_settings(broker={"url": own_broker.url}, topics={"prefix": f"t{uuid.uuid4().hex[:8]}."},
                             store={"path": tmp_path / "store.lmdb"}, app_id=f"test-{uuid.uuid4().hex[:8]}")
    items = movielens.load_items(ml100k_dir)
    ensure_topics(settings)
    producer = make_producer(settings)
    publish_items(producer, settings.topics, [movielens.item_message(i) for i in items])
    producer.flush()
    port, log_path = free_port(), tmp_path / "worker.log"
    base = f"http://127.0.0.1:{port}"
    topics = settings.topics.inputs
    proc = start_worker(settings, port, log_path, RECSTREAM_WINDOWS__IDLE_FLUSH_S="3600")
    try:
        health = wait_until(lambda: (h := get_json(f"{base}/healthz"))[0] == 200 and h[1], "healthy", proc, log_path, 240)
        assert health["broker"]["reachable"] and health["catalogue"] == {"ready": True, "items": len(items)}
        assert health["last_flush_age_s"] is None
        before = scrape(base)
        assert before[("recstream_catalogue_ready", ())] == 1
        assert before[("recstream_gc_frozen_objects", ())] > 10_000  # start-up's objects, frozen once ready
        assert before[("recstream_first_input_timestamp_seconds", ())] == -1  # no input yet
        started = time.time()

        # u1: two events of each kind on known items, one on a new text (encoded now), one malformed record
        kinds = ["view", "view", "click", "click", "purchase", "purchase"]
        history = [i.item_id for i in items[:6]]
        for n, (kind, item) in enumerate(zip(kinds, history)):
            producer.send(topics[kind], key=b"u1", value=orjson.dumps({"user_id": "u1", "item_id": item, "ts": BASE_TS + n * 1000}))
        text = f"a film nobody has encoded before {uuid.uuid4().hex}"
        producer.send(topics["view"], key=b"u1", value=orjson.dumps({"user_id": "u1", "item_id": "new-1", "text": text, "ts": BASE_TS + 9000}))
        producer.send(topics["click"], key=b"u1", value=b"{not json")
        # a later event from another user moves the watermark past u1's windows; its own stays open
        producer.send(topics["view"], key=b"clock", value=orjson.dumps({"user_id": "clock", "item_id": history[0], "ts": BASE_TS + DAY}))
        producer.flush()

        m = wait_until(lambda: (s := scrape(base)).get(("recstream_events_applied_total", ())) == 7 and s,
                       "7 events applied", proc, log_path)
        consumed = {k: m[("recstream_events_consumed_total", (("kind", k),))] for k in ("view", "click", "purchase")}
        assert consumed == {"view": 4, "click": 2, "purchase": 2}  # 3 + 1 views of u1 and clock's
        assert m[("recstream_dead_letters_total", (("reason", "malformed_JSON"),))] == 1
        assert m[("recstream_window_flush_seconds_count", ())] >= 1
        assert m[("recstream_window_flush_events_sum", ())] == 7
        first_input, last_flush = m[("recstream_first_input_timestamp_seconds", ())], m[("recstream_last_flush_timestamp_seconds", ())]
        assert started < first_input <= last_flush <= time.time()
        assert m[("recstream_encoder_batch_seconds_count", ())] >= 1  # the new text
        assert m[("recstream_lmdb_commit_seconds_count", ())] >= 1
        assert m[("recstream_recommendations_total", ())] >= 1
        # every event behind a recommendation, timed from its Kafka timestamp (seconds ago here)
        timed = m[("recstream_event_to_recommendation_seconds_count", ())]
        assert 1 <= timed <= 7 and m[("recstream_event_to_recommendation_seconds_bucket", (("le", "300.0"),))] == timed
        assert m[("recstream_pending_events", ())] == 1  # clock's open window
        lag = {k: v for k, v in m.items() if k[0] == "recstream_consumer_lag"}
        assert len(lag) == 3 * settings.topics.partitions and sum(lag.values()) >= 1, lag

        status, profile = get_json(f"{base}/users/u1/profile")
        assert status == 200 and profile["event_count"] == 7
        assert profile["kinds"] == {"view": 3, "click": 2, "purchase": 2}
        assert {h["name"] for h in profile["horizons"]} == set(settings.profile.half_lives_s)
        assert get_json(f"{base}/users/nobody/profile")[0] == 404
        assert get_json(f"{base}/users/nobody/recommendations")[0] == 404

        status, recs = get_json(f"{base}/users/u1/recommendations")
        assert status == 200 and recs["event_count"] == 7 and len(recs["items"]) == settings.ranking.k
        assert not {i["item_id"] for i in recs["items"]} & set(history)
        emitted = consume(settings, settings.topics.recommendations, lambda got: any(r["event_count"] == 7 for r in got))
        (last,) = [r for r in emitted if r["user_id"] == "u1" and r["event_count"] == 7]
        assert recs["items"] == last["items"]  # the same scoring path as the flush
        assert get_json(f"{base}/healthz")[1]["last_flush_age_s"] >= 0

        # graceful shutdown: events in an open window reach the store on SIGTERM
        for n in range(3):
            producer.send(topics["click"], key=b"late", value=orjson.dumps({"user_id": "late", "item_id": history[n], "ts": BASE_TS + 2 * DAY + n}))
        producer.flush()
        wait_until(lambda: scrape(base)[("recstream_pending_events", ())] == 3, "3 pending events", proc, log_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        with LmdbStore(settings.store.path, readonly=True) as store, store.read() as txn:
            late = txn.get_profile("late")
            assert late is not None and late.event_count == 3
        lines = [orjson.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        assert any("catalogue ready" in line["message"] and line["level"] == "info" for line in lines)
        assert any("shutdown: flushed 3 pending events" in line["message"] for line in lines)

        # a restarted worker serves what the first one stored; with the broker gone it is unhealthy
        proc = start_worker(settings, port, log_path, RECSTREAM_WINDOWS__IDLE_FLUSH_S="3600")
        wait_until(lambda: get_json(f"{base}/healthz")[0] == 200, "healthy again", proc, log_path, 240)
        status, profile = get_json(f"{base}/users/late/profile")
        assert status == 200 and profile["event_count"] == 3
        own_broker.stop()
        status, health = wait_until(lambda: (h := get_json(f"{base}/healthz"))[0] == 503 and h, "unhealthy", proc, log_path, 30)
        assert health["status"] == "broker unreachable" and not health["broker"]["reachable"]
        proc.kill()  # a graceful stop without a broker waits out Kafka client timeouts
        proc.wait()
    finally:
        producer.close()
        stop(proc)


def test_broker_probe_needs_a_kafka_answer_not_just_a_tcp_connect():
    """A frozen (SIGSTOPped) broker still completes TCP handshakes from its listen backlog;
    the probe must report it unreachable all the same, and reachable again after SIGCONT."""
    import asyncio

    from stream.web import BrokerProbe

    with EmbeddedBroker(port=free_port()) as broker:
        probe = BrokerProbe(broker.bootstrap, timeout_s=1.0, ttl_s=0)
        assert asyncio.run(probe.check()) == (True, None)
        broker.freeze()
        try:
            reachable, error = asyncio.run(probe.check())
        finally:
            broker.thaw()
        assert not reachable and "no answer" in error
        assert asyncio.run(probe.check()) == (True, None)
    reachable, error = asyncio.run(probe.check())
    assert not reachable and str(broker.port) in error
