"""Prometheus metrics of one worker, on a registry of its own (never the global one).

Counters are not incremented twice: the worker already counts events, dead letters and
recommendations in ``WorkerContext.stats``; :class:`_StatsCollector` turns that Counter into
Prometheus counters at scrape time. Latencies and sizes are histograms observed by small
hooks (:meth:`WorkerMetrics.observe_flush`, :meth:`WorkerMetrics.timed_encoder`, the store's
``on_commit``). Gauges that describe the present (pending events, catalogue size, consumer
lag) are computed at scrape time by callables the worker passes in.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ObservationLog", "WorkerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_EVENT_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: ``stats`` key prefix → (metric name, help, label name); the rest of the key is the label.
_LABELLED = {
    "consumed.": ("recstream_events_consumed", "Valid input events consumed, by kind.", "kind"),
    "dlq.": ("recstream_dead_letters", "Records sent to the dead-letter topic, by reason category.", "reason"),
}
_PLAIN = {
    "events.applied": ("recstream_events_applied", "Events applied to profiles (committed)."),
    "events.duplicates": ("recstream_events_duplicate", "Redelivered events skipped as already applied."),
    "recommendations": ("recstream_recommendations", "Recommendation records emitted."),
    "flushes": ("recstream_window_flushes", "Window flushes committed."),
    "catchup.slices": ("recstream_catchup_slices", "Catch-up slices flushed, each followed by one full garbage collection."),
    "items.encoded": ("recstream_items_encoded", "Catalogue items encoded and stored."),
}


class _StatsCollector(Collector):
    def __init__(self, stats: Counter[str], gauges: Callable[[], Mapping[str, float]],
                 lag: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.stats = stats
        self.gauges = gauges
        self.lag = lag

    def collect(self) -> Iterable[Metric]:
        stats = dict(self.stats)  # a snapshot: the event loop may add keys meanwhile
        for prefix, (name, doc, label) in _LABELLED.items():
            family = CounterMetricFamily(name, doc, labels=[label])
            for key, value in sorted(stats.items()):
                if key.startswith(prefix):
                    family.add_metric([key[len(prefix):]], value)
            yield family
        for key, (name, doc) in _PLAIN.items():
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
        for name, value in self.gauges().items():
            yield GaugeMetricFamily(f"recstream_{name}", _GAUGE_HELP.get(name, name), value=value)
        lag = GaugeMetricFamily("recstream_consumer_lag", "Input records not yet applied, per assigned partition.",
                                labels=["topic", "partition"])
        for topic, partition, value in self.lag():
            lag.add_metric([topic, str(partition)], value)
        yield lag


_GAUGE_HELP = {
    "pending_events": "Events buffered in open windows (consumed, not yet applied).",
    "catalogue_items": "Items in the in-memory catalogue.",
    "catalogue_ready": "1 once the items topic has been read to its end at start-up.",
    "last_flush_age_seconds": "Seconds since the last committed flush (-1: none yet).",
    "first_input_timestamp_seconds": "Unix time this process took its first batch of input events (-1: none yet).",
    "last_flush_timestamp_seconds": "Unix time the last flush was settled: changelog delivered, records acked (-1: none yet).",
    "gc_frozen_objects": "Objects Python's garbage collector no longer scans (frozen once the catalogue is ready).",
}


class WorkerMetrics:
    """The metrics of one worker; ``render()`` is the body of ``GET /metrics``."""

    def __init__(
        self,
        stats: Counter[str],
        gauges: Callable[[], Mapping[str, float]] = dict,
        lag: Callable[[], Iterable[tuple[str, int, int]]] = list,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.flush_seconds = Histogram("recstream_window_flush_seconds", "Wall time of one flush: store transaction, "
                                       "ranking, sends and acks.", buckets=_LATENCY_BUCKETS, registry=r)
        self.flush_events = Histogram("recstream_window_flush_events", "Events per flush.", buckets=_SIZE_BUCKETS, registry=r)
        self.flush_users = Histogram("recstream_window_flush_users", "Users (windows) per flush.", buckets=_SIZE_BUCKETS, registry=r)
        self.encoder_seconds = Histogram("recstream_encoder_batch_seconds", "ONNX encoder time per batch "
                                         "(cache misses only).", buckets=_LATENCY_BUCKETS, registry=r)
        self.encoder_texts = Histogram("recstream_encoder_batch_texts", "Texts per encoder batch.",
                                       buckets=_SIZE_BUCKETS, registry=r)
        self.commit_seconds = Histogram("recstream_lmdb_commit_seconds", "LMDB write-transaction commit time "
                                        "(fsync included).", buckets=_LATENCY_BUCKETS, registry=r)
        self.gc_seconds = Histogram("recstream_gc_pause_seconds", "Python garbage-collection pauses (every thread "
                                    "waits), by generation; after watch_gc().", ["generation"],
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self._gc = _GcTimer(self.observe_gc)
        self.event_seconds = Histogram(
            "recstream_event_to_recommendation_seconds", "Per event: from its Kafka record timestamp (the "
            "producer's clock, or the broker's with LogAppendTime) to the send of the recommendation that "
            "includes it.", buckets=_EVENT_LATENCY_BUCKETS, registry=r)
        #: () -> [(topic, partition, lag)]; the web module sets it once the app exists.
        self.lag = lag
        self.last_flush: float | None = None
        #: wall clock (Unix s) of the first input batch and of the last settled flush: between
        #: them lies a backlog's exact processing time, whatever the scrape interval
        self.first_input_unix: float | None = None
        self.last_flush_unix: float | None = None
        self._frozen = 0
        self._gauges = gauges
        r.register(_StatsCollector(stats, self._all_gauges, lambda: self.lag()))

    def _all_gauges(self) -> dict[str, float]:
        age = self.last_flush_age_s()
        return {**self._gauges(), "last_flush_age_seconds": _or_unset(age),
                "first_input_timestamp_seconds": _or_unset(self.first_input_unix),
                "last_flush_timestamp_seconds": _or_unset(self.last_flush_unix),
                "gc_frozen_objects": self._frozen}

    def freeze_heap(self) -> None:
        """``gc.freeze()`` what is alive now, and keep the count for the gauge: counting walks
        the frozen objects (about 5 ms for 500k, with the GIL held), too slow for every scrape."""
        gc.freeze()
        self._frozen = gc.get_freeze_count()

    def watch_gc(self) -> None:
        """Time every garbage collection from now on (``recstream_gc_pause_seconds``); a
        full collection stops every thread, so its pauses show up in latency tails."""
        self._gc.watch()

    def unwatch_gc(self) -> None:
        self._gc.unwatch()

    def last_flush_age_s(self) -> float | None:
        """Seconds since the last committed flush, None before the first."""
        return None if self.last_flush is None else round(time.monotonic() - self.last_flush, 3)

    def observe_input(self) -> None:
        """Note the first input batch's arrival (later calls keep the first)."""
        if self.first_input_unix is None:
            self.first_input_unix = time.time()

    def observe_flush(self, seconds: float, events: int, users: int) -> None:
        self.last_flush = time.monotonic()
        self.last_flush_unix = time.time()
        self.flush_seconds.observe(seconds)
        self.flush_events.observe(events)
        self.flush_users.observe(users)

    def observe_events(self, sent_s: float, record_timestamps_s: Iterable[float]) -> None:
        """Event-to-recommendation latency of each event (Kafka Streams' record-e2e-latency)."""
        observe = self.event_seconds.observe
        for ts in record_timestamps_s:
            observe(max(0.0, sent_s - ts))

    def observe_commit(self, seconds: float) -> None:
        self.commit_seconds.observe(seconds)

    def observe_encoder(self, seconds: float, texts: int) -> None:
        self.encoder_seconds.observe(seconds)
        self.encoder_texts.observe(texts)

    def observe_gc(self, generation: int, seconds: float) -> None:
        self.gc_seconds.labels(str(generation)).observe(seconds)

    def replay(self, observations: Iterable[tuple[Any, ...]]) -> None:
        """Observe what an :class:`ObservationLog` recorded in the store's child process:
        each is ``(kind, *values)`` for ``observe_<kind>(*values)``."""
        for kind, *values in observations:
            getattr(self, f"observe_{kind}")(*values)

    def timed_encoder(self, encoder: Any) -> "_TimedEncoder":
        """Wrap ``encoder`` so each ``encode`` call is observed; put it under the cache."""
        return _TimedEncoder(encoder, self)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _or_unset(value: float | None) -> float:
    return -1.0 if value is None else value


class ObservationLog:
    """The store owner's metric hooks in a child process: observations are kept as tuples
    and :meth:`take`-n with each answer, for :meth:`WorkerMetrics.replay` in the worker."""

    def __init__(self) -> None:
        self._seen: list[tuple[Any, ...]] = []
        self._gc = _GcTimer(self.observe_gc)

    def observe_gc(self, generation: int, seconds: float) -> None:
        self._seen.append(("gc", generation, seconds))

    def observe_commit(self, seconds: float) -> None:
        self._seen.append(("commit", seconds))

    def observe_encoder(self, seconds: float, texts: int) -> None:
        self._seen.append(("encoder", seconds, texts))

    def watch_gc(self) -> None:
        self._gc.watch()

    def timed_encoder(self, encoder: Any) -> "_TimedEncoder":
        return _TimedEncoder(encoder, self)

    def take(self) -> list[tuple[Any, ...]]:
        seen, self._seen = self._seen, []
        return seen


class _GcTimer:
    """Calls ``observe(generation, seconds)`` after every garbage collection once watching."""

    def __init__(self, observe: Callable[[int, float], None]) -> None:
        self._observe = observe
        self._started: float | None = None

    def watch(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self._observe(info["generation"], time.perf_counter() - self._started)
            self._started = None


class _TimedEncoder:
    """Forwards to an encoder, timing ``encode``; every other attribute passes through."""

    def __init__(self, inner: Any, metrics: WorkerMetrics | ObservationLog) -> None:
        self._inner = inner
        self._metrics = metrics

    def encode(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        out = self._inner.encode(texts)
        self._metrics.observe_encoder(time.perf_counter() - started, len(texts))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
