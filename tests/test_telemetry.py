"""Metrics rendering and JSON logs, without a worker."""

from __future__ import annotations

import gc
import io
import logging
import time
from collections import Counter

import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from stream.logs import configure_logging
from stream.telemetry import WorkerMetrics


def samples(metrics: WorkerMetrics) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}


def test_stats_become_labelled_counters_and_hooks_fill_histograms():
    stats: Counter[str] = Counter({"consumed.view": 3, "consumed.click": 1, "dlq.malformed_JSON": 2, "recommendations": 4})
    metrics = WorkerMetrics(stats, gauges=lambda: {"pending_events": 7}, lag=lambda: [("t.views", 0, 5)])
    metrics.observe_flush(0.02, events=10, users=3)
    metrics.observe_commit(0.004)
    metrics.observe_events(1000.0, [999.97, 999.5, 1000.2])  # a producer clock ahead counts as 0

    class Encoder:
        dim = 4

        def encode(self, texts):
            return np.zeros((len(texts), 4), np.float32)

    timed = metrics.timed_encoder(Encoder())
    assert timed.dim == 4 and timed.encode(["a", "b"]).shape == (2, 4)
    stats["consumed.view"] += 1  # read at scrape time, not copied at construction

    m = samples(metrics)
    assert m[("recstream_events_consumed_total", (("kind", "view"),))] == 4
    assert m[("recstream_dead_letters_total", (("reason", "malformed_JSON"),))] == 2
    assert m[("recstream_recommendations_total", ())] == 4
    assert m[("recstream_events_applied_total", ())] == 0
    assert m[("recstream_window_flush_events_sum", ())] == 10 and m[("recstream_window_flush_users_sum", ())] == 3
    assert m[("recstream_lmdb_commit_seconds_count", ())] == 1
    assert m[("recstream_event_to_recommendation_seconds_count", ())] == 3
    assert m[("recstream_event_to_recommendation_seconds_bucket", (("le", "0.05"),))] == 2
    assert abs(m[("recstream_event_to_recommendation_seconds_sum", ())] - 0.53) < 1e-6
    assert m[("recstream_encoder_batch_texts_sum", ())] == 2
    assert m[("recstream_pending_events", ())] == 7
    assert m[("recstream_consumer_lag", (("partition", "0"), ("topic", "t.views")))] == 5
    assert 0 <= m[("recstream_last_flush_age_seconds", ())] < 5


def test_gc_pauses_are_timed_by_generation_once_watched():
    metrics = WorkerMetrics(Counter())
    gc.collect()  # not watched yet
    assert ("recstream_gc_pause_seconds_count", (("generation", "2"),)) not in samples(metrics)
    metrics.watch_gc()
    metrics.watch_gc()  # idempotent: one callback
    try:
        gc.collect()
        gc.collect(0)
    finally:
        metrics.unwatch_gc()
    gc.collect()
    m = samples(metrics)
    assert m[("recstream_gc_pause_seconds_count", (("generation", "2"),))] == 1
    assert m[("recstream_gc_pause_seconds_count", (("generation", "0"),))] >= 1
    assert m[("recstream_gc_pause_seconds_sum", (("generation", "2"),))] > 0


def test_the_frozen_heap_is_counted_once_when_frozen_not_on_every_scrape():
    metrics = WorkerMetrics(Counter())
    assert samples(metrics)[("recstream_gc_frozen_objects", ())] == 0
    metrics.freeze_heap()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 1_000 and samples(metrics)[("recstream_gc_frozen_objects", ())] == frozen
    finally:
        gc.unfreeze()


def test_each_worker_has_its_own_registry():
    a, b = WorkerMetrics(Counter({"recommendations": 1})), WorkerMetrics(Counter())
    assert samples(a)[("recstream_recommendations_total", ())] == 1
    assert samples(b)[("recstream_recommendations_total", ())] == 0
    assert samples(b)[("recstream_last_flush_age_seconds", ())] == -1


def test_the_first_input_and_the_last_flush_are_wall_clock_gauges():
    metrics = WorkerMetrics(Counter())
    m = samples(metrics)
    assert m[("recstream_first_input_timestamp_seconds", ())] == m[("recstream_last_flush_timestamp_seconds", ())] == -1
    before = time.time()
    metrics.observe_input()
    metrics.observe_flush(0.01, events=5, users=1)
    first = samples(metrics)[("recstream_first_input_timestamp_seconds", ())]
    time.sleep(0.01)
    metrics.observe_input()  # later batches keep the first
    metrics.observe_flush(0.01, events=5, users=1)
    m = samples(metrics)
    assert m[("recstream_first_input_timestamp_seconds", ())] == first
    assert before <= first < m[("recstream_last_flush_timestamp_seconds", ())] <= time.time()  # full precision, not rounded


def test_json_logs_are_one_object_per_line_with_extras_and_tracebacks():
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", "json", stream=out)
        configure_logging("info", "json", stream=out)  # idempotent: still one handler
        log = logging.getLogger("recstream.test")
        log.info("flushed %d users", 3, extra={"partition": 2})
        log.debug("hidden")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["message"] == "flushed 3 users" and lines[0]["partition"] == 2 and lines[0]["level"] == "info"
    assert lines[0]["logger"] == "recstream.test" and lines[0]["ts"].endswith("+00:00")
    assert "ValueError: boom" in lines[1]["exc_info"]


def test_the_grafana_dashboard_queries_only_metrics_the_worker_exports():
    import json
    import re
    from pathlib import Path

    dashboard = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "recstream.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p.get("targets", [])]
    queried = {name for e in exprs for name in re.findall(r"\brecstream_\w+", e)}
    from stream.app import WorkerContext
    from stream.config import load_settings

    context = WorkerContext(load_settings(None, store={"owner": "thread"}))  # its metrics and gauges, not opened
    context.stats.update({"consumed.view": 1, "dlq.malformed_JSON": 1})
    metrics = context.metrics
    metrics.lag = lambda: [("t.views", 0, 1)]
    metrics.observe_flush(0.01, 1, 1)
    metrics.gc_seconds.labels("2").observe(0.001)
    exported = {name for name, _ in samples(metrics)}
    assert len(queried) >= 10
    assert queried <= exported, sorted(queried - exported)
