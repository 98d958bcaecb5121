"""End to end: events through the embedded broker and one worker, next to the Faust floor.

One run, four phases (the first three on one broker):

1. **floor**: ``events`` synthetic events (``users`` users over the ml-100k catalogue) are
   published first; a bare Faust agent (:mod:`bench.floor`) decodes them: events/s.
2. **throughput**: a recstream worker (``recstream worker``, default settings) consumes the
   same records under its own group: sustained events/s from its first input batch to the
   flush that settled the last event (the worker's own clock, read from its ``/metrics``
   gauges, as the floor times itself from its first batch to its last decoded event),
   the ratio to the floor, and the worker's peak RSS.
3. **I/O floor**: the bare agent again, now also producing the worker's Kafka output per
   batch (a recommendation and a changelog record per user; ``bench.floor`` mode ``io``):
   what Faust and Kafka alone cost for the worker's data flow, and the worker's ratio to it.
   Phase 2's worker takes the backlog in catch-up slices (``windows.catchup_pending``), so
   a second worker, on a fresh broker, takes the same events with every window closed on
   time (catch-up off): the rate live traffic can sustain.
4. **latency**: a fresh worker with a latency-oriented flush (:data:`LATENCY_FLUSH`), on a
   fresh broker (the embedded broker slows down as it fills), is fed
   live at ``load`` × that windowed throughput, events stamped at their produce time:
   p50/p95/p99 from handing an event to the producer to the arrival of the first
   recommendation that includes it (``stream.demo``'s tracker and consumer).

``catalogue="synthetic"`` (``python -m bench e2e-large``) runs the same phases over a
synthetic shop catalogue of ``items`` products with sentence-like text (:mod:`bench.catalogue`),
encoded into the embedding cache first (once per machine; progress on stderr), so each
recommendation ranks 100,000 items instead of 1,682.

``--profile PATH`` runs py-spy on the worker during phase 2 (the figures then include its
sampling cost) and writes a top-N summary of the hot spots next to its raw output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.config import Settings, load_settings
from stream.demo import _Tracker, _wait_for_log

__all__ = ["LATENCY_FLUSH", "WorkerProcess", "process_cpu_s", "process_memory", "process_tree", "run", "run_latency",
           "synthetic_events", "tree_cpu_s", "tree_memory"]

#: Flush settings for the latency phase (environment overrides of ``windows``/``broker``):
#: 100 ms event-time windows, batches waited on for at most 20 ms, fetches parked 20 ms.
LATENCY_FLUSH = {
    "RECSTREAM_WINDOWS__SIZE_S": "0.1",
    "RECSTREAM_WINDOWS__BATCH_TIMEOUT_S": "0.02",
    "RECSTREAM_WINDOWS__IDLE_FLUSH_S": "0.1",
    "RECSTREAM_BROKER__FETCH_MAX_WAIT_MS": "20",
}
KINDS = ("view", "click", "purchase")


def synthetic_events(n: int, users: int, item_ids: list[str], weights: np.ndarray, seed: int = 0,
                     ts0_ms: int | None = None, step_ms: int = 10) -> list[dict[str, Any]]:
    """``n`` events from ``users`` users, items drawn by ``weights`` (popularity), kinds
    60/30/10 % view/click/purchase, event time ``step_ms`` apart ending about now."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    item = rng.choice(len(item_ids), size=n, p=weights / weights.sum())
    kind = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    start = (ts0_ms if ts0_ms is not None else int(time.time() * 1000)) - n * step_ms
    return [{"user_id": f"u{user[i]:05d}", "item_id": item_ids[item[i]], "ts": start + i * step_ms,
             "event_id": f"e{seed}-{i}", "kind": KINDS[kind[i]]} for i in range(n)]


def process_memory(pid: int) -> dict[str, int]:
    """Peak and current resident set (VmHWM, VmRSS) and anonymous memory of ``pid``, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants: a worker is its process, the store owner's child
    (stream.owner) and multiprocessing's resource tracker."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            children = [int(c) for task in Path(f"/proc/{current}/task").iterdir()
                        for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
            continue
        out.append(current)
        todo.extend(children)
    return out


def tree_memory(pid: int) -> dict[str, int]:
    """:func:`process_memory` summed over :func:`process_tree` (VmHWM: the sum of each
    process's peak, an upper bound of the tree's)."""
    total: dict[str, int] = {}
    for member in process_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for name, value in process_memory(member).items():
                total[name] = total.get(name, 0) + value
    return total


def tree_cpu_s(pid: int) -> float:
    """:func:`process_cpu_s` summed over :func:`process_tree`."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += process_cpu_s(member)
    return total


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WorkerProcess:
    """A ``recstream worker`` subprocess with its web port (for ``/metrics``) and log."""

    def __init__(self, settings: Settings, workdir: Path, env: dict[str, str] | None = None) -> None:
        from stream.broker import free_port

        self.port = free_port()
        self.log = workdir / "worker.log"
        cmd = [sys.executable, "-m", "stream.cli", "--broker", settings.broker.url, "--store", str(workdir / "store.lmdb"),
               "--topic-prefix", settings.topics.prefix, "worker", "--web-port", str(self.port)]
        with open(self.log, "wb") as log_file:
            self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self) -> None:
        _wait_for_log(self.log, "catalogue ready", self.proc, timeout_s=300)
        _wait_for_log(self.log, "Worker ready", self.proc, timeout_s=120)

    def metrics(self) -> dict[str, float]:
        """Counters from ``/metrics``, label sets summed: ``{"events_applied": ..., ...}``."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for m in re.finditer(r"^recstream_(\w+?)(?:_total)?(?:\{[^}]*\})? (\S+)$", text, re.M):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
        return out

    def memory(self) -> dict[str, int]:
        """Of the whole worker: its process and the store owner's child (:func:`tree_memory`)."""
        return tree_memory(self.proc.pid)

    def cpu_s(self) -> float:
        """Of the whole worker, child processes included (:func:`tree_cpu_s`)."""
        return tree_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _raw(profile: Path) -> Path:
    """Where py-spy's collapsed stacks go, beside the summary."""
    return profile.with_name(profile.name + ".raw")


def _settings(url: str, prefix: str) -> Settings:
    return load_settings(None, broker={"url": url}, topics={"prefix": prefix})


def _catalogue(settings: Settings) -> tuple[list[dict], list[str], np.ndarray]:
    from stream import movielens

    data_dir = movielens.fetch_ml100k(settings.encoder.cache_dir)
    items = movielens.load_items(data_dir)
    counts: dict[str, int] = {}
    for r in movielens.load_ratings(data_dir):
        counts[r.item_id] = counts.get(r.item_id, 0) + 1
    ids = [i.item_id for i in items]
    return [movielens.item_message(i) for i in items], ids, np.array([counts.get(i, 0) + 1.0 for i in ids])


def _synthetic_catalogue(settings: Settings, n_items: int) -> tuple[list[dict], list[str], np.ndarray]:
    """:mod:`bench.catalogue`'s items, their texts encoded into the worker's embedding cache."""
    from bench.catalogue import synthetic_items
    from encoders import CachedEncoder, EmbeddingCache, load_encoder
    from encoders.catalogue import encode_in_chunks, progress_bar
    from stream.catalog import item_text, parse_item

    items, weights = synthetic_items(n_items)
    texts = [item_text(parse_item(orjson.dumps(i), settings.limits)) for i in items]
    cache = EmbeddingCache(settings.encoder.cache_dir / "embeddings.lmdb")
    try:
        with progress_bar("encoding the synthetic catalogue", len(texts)) as bar:
            encode_in_chunks(CachedEncoder(load_encoder(settings.encoder), cache), texts, progress=bar)
    finally:
        cache.close()
    return items, [i["item_id"] for i in items], weights


def _items(settings: Settings, catalogue: str, n_items: int) -> tuple[list[dict], list[str], np.ndarray]:
    """Item messages, ids and popularity weights of ``catalogue`` ("ml-100k" or "synthetic")."""
    return _catalogue(settings) if catalogue == "ml-100k" else _synthetic_catalogue(settings, n_items)


@contextlib.contextmanager
def _broker(prefix: str) -> Iterator[tuple[Path, str, int | None]]:
    """A temporary work directory with an embedded broker logging into it: ``(workdir, url, broker pid)``."""
    from stream.broker import EmbeddedBroker, free_port

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        port = free_port()
        broker = EmbeddedBroker(port=port, log_path=workdir / "broker.log")
        broker.start()
        try:
            yield workdir, f"kafka://127.0.0.1:{port}", broker.pid
        finally:
            broker.stop()


def _prepare(settings: Settings, items: list[dict], events: list[dict]) -> float:
    from stream.kafka_io import ensure_topics, make_producer, publish_events, publish_items

    ensure_topics(settings)
    producer = make_producer(settings)
    publish_items(producer, settings.topics, items)
    started = time.perf_counter()
    publish_events(producer, settings.topics, events)
    producer.close()
    return time.perf_counter() - started


def _floor(settings: Settings, workdir: Path, events: int, timeout_s: float, mode: str = "decode") -> tuple[float, float]:
    """(events/s, CPU seconds per event) of the bare agent in ``mode`` (:data:`bench.floor.MODES`)."""
    out = workdir / f"floor-{mode}.json"
    env = {**os.environ, "RECSTREAM_BROKER__URL": settings.broker.url, "RECSTREAM_TOPICS__PREFIX": settings.topics.prefix}
    with open(workdir / f"floor-{mode}.log", "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "bench.floor", str(out), str(events), mode], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"floor agent did not finish; see {workdir / f'floor-{mode}.log'}")
            time.sleep(0.2)
        time.sleep(0.1)
        result = orjson.loads(out.read_bytes())
        return result["count"] / (result["last"] - result["first"]), result["cpu_s"] / result["count"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _throughput(settings: Settings, workdir: Path, events: int, timeout_s: float, profile: Path | None,
                env: dict[str, str] | None = None) -> dict:
    worker = WorkerProcess(settings, workdir, env=env)
    spy = None
    try:
        worker.wait_ready()
        if profile is not None:
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(worker.proc.pid), "--subprocesses", "--rate", "50", "--format", "raw",
                                    "--output", str(_raw(profile)), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu, m = None, {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = worker.metrics()
            if cpu is None and m.get("events_consumed", 0) > 0:
                cpu = worker.cpu_s()  # at the first poll that sees a consumed record
            if m.get("events_applied", 0) >= events:
                break
            time.sleep(0.5 if cpu is not None else 0.05)  # fast until the CPU baseline is read: it misses <= 0.05 s
        if cpu is None or m.get("events_applied", 0) < events:
            raise RuntimeError(f"worker applied {m.get('events_applied', 0):.0f} of {events} events; see {worker.log}")
        # the worker's own clock, as the floor's: its first input batch to the flush that settled the last event
        start, end = m["first_input_timestamp_seconds"], m["last_flush_timestamp_seconds"]
        return {"events_per_s": events / (end - start), "elapsed_s": end - start, "memory": worker.memory(),
                "cpu_per_event": (worker.cpu_s() - cpu) / events,
                "flushes": m.get("window_flushes", 0), "recommendations": m.get("recommendations", 0)}
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        worker.stop()


def _latency(settings: Settings, broker_pid: int | None, items: list[dict], ids: list[str], weights: np.ndarray,
             rate: float, seconds: float, workdir: Path, flush: dict[str, str] | None = None) -> dict:
    from bench.load import drive
    from stream.kafka_io import ensure_topics, make_producer, publish_items

    ensure_topics(settings)
    producer = make_producer(settings)
    publish_items(producer, settings.topics, items)
    producer.close()
    worker = WorkerProcess(settings, workdir, env=flush or LATENCY_FLUSH)
    try:
        worker.wait_ready()
        tracker = _Tracker()
        cpu = _CpuShares(worker=worker.cpu_s, client=lambda: process_cpu_s(os.getpid()),
                         broker=None if broker_pid is None else lambda: process_cpu_s(broker_pid))
        publish_s = asyncio.run(drive(settings, tracker, lambda n, seed: synthetic_events(n, 10_000, ids, weights, seed=seed, step_ms=0),
                                      rate, seconds))
        total = int(rate * seconds)
        lat = np.array(tracker.latencies) * 1000
        m = worker.metrics()  # the worker's own view: record timestamp -> recommendation sent
        own_ms = 1000 * m.get("event_to_recommendation_seconds_sum", 0.0) / max(1.0, m.get("event_to_recommendation_seconds_count", 0.0))
        return {"rate_target": round(rate), "rate_sent": round(total / publish_s), "events": total,
                "applied": tracker.events_applied, "samples": len(lat),
                **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)},
                "max_ms": round(float(lat.max()), 1), "mean_ms": round(float(lat.mean()), 1),
                "worker_mean_to_send_ms": round(own_ms, 1), "memory": worker.memory(),
                # in arrival order: a second half far above the first means a growing backlog
                "p50_first_second_half_ms": [round(float(np.median(h)), 1) for h in np.array_split(lat, 2)],
                # of one core, over the phase: what each process took of this machine
                "cpu_pct": cpu.percent()}
    finally:
        worker.stop()


class _CpuShares:
    """CPU of named processes from now on, as a percentage of one core: each is a callable
    giving CPU seconds so far (``None``: skipped)."""

    def __init__(self, **cpu_s: Callable[[], float] | None) -> None:
        self.cpu_s = {name: read for name, read in cpu_s.items() if read is not None}
        self.t0 = time.monotonic()
        self.cpu0 = {name: read() for name, read in self.cpu_s.items()}

    def percent(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.t0
        return {name: round(100 * (read() - self.cpu0[name]) / elapsed) for name, read in self.cpu_s.items()}


def run_latency(rate: float, seconds: float = 60.0, catalogue: str = "ml-100k", n_items: int = 100_000) -> dict:
    """Only phase 3, at a given ``rate`` (events/s): for sweeps of rate and flush settings
    (``RECSTREAM_…`` overrides in the environment reach the worker over :data:`LATENCY_FLUSH`)."""
    flush = {**LATENCY_FLUSH, **{k: v for k, v in os.environ.items() if k.startswith(("RECSTREAM_WINDOWS__", "RECSTREAM_BROKER__"))}}
    with _broker("bench-latency-") as (workdir, url, broker_pid):
        settings = _settings(url, "bench.lat.")
        items, ids, weights = _items(settings, catalogue, n_items)
        (workdir / "lat").mkdir()
        latency = _latency(settings, broker_pid, items, ids, weights, rate, seconds, workdir / "lat", flush)
    return {"benchmark": "latency", "catalogue": catalogue, "items": len(ids), "latency_flush": flush,
            **{k: v for k, v in latency.items() if k != "memory"}, "worker_peak_rss_mb": round(latency["memory"]["VmHWM"] / 2**20)}


def run(events: int = 200_000, users: int = 10_000, load: float = 0.5, latency_seconds: float = 60.0,
        profile: Path | None = None, catalogue: str = "ml-100k", n_items: int = 100_000) -> dict:
    with _broker("bench-e2e-") as (workdir, url, _):
        tp = _settings(url, "bench.tp.")
        items, ids, weights = _items(tp, catalogue, n_items)
        stream_events = synthetic_events(events, users, ids, weights)
        publish_s = _prepare(tp, items, stream_events)
        del stream_events
        timeout = 120 + events / 200
        floor, floor_cpu = _floor(tp, workdir, events, timeout)
        (workdir / "tp").mkdir()
        ours = _throughput(tp, workdir / "tp", events, timeout, profile)
        floor_io, floor_io_cpu = _floor(tp, workdir, events, timeout, "io")
    windowed = None  # the same backlog with every window closed on time (no catch-up slices)
    if tp.windows.catchup_pending > tp.windows.max_pending:
        with _broker("bench-e2e-win-") as (workdir, url, _):
            win = _settings(url, "bench.win.")
            _prepare(win, items, synthetic_events(events, users, ids, weights))
            (workdir / "tp").mkdir()
            windowed = _throughput(win, workdir / "tp", events, timeout, None, env={"RECSTREAM_WINDOWS__CATCHUP_PENDING": "0"})
    # live traffic closes windows on time: its sustainable rate is the windowed one
    live_max = (windowed or ours)["events_per_s"]
    latency = None  # --latency-seconds 0: throughput only
    if latency_seconds > 0:
        # A fresh broker: Tansu's memory storage costs more CPU per fetch the more it holds
        # (BENCHMARKS.md, 2026-12-01 and 2026-12-02), and phases 1-2 left some 200 MB in it.
        with _broker("bench-e2e-lat-") as (workdir, url, broker_pid):
            latency = _latency(_settings(url, "bench.lat."), broker_pid, items, ids, weights,
                               load * live_max, latency_seconds, workdir)
    result = {
        "benchmark": "e2e" if catalogue == "ml-100k" else "e2e-large", "catalogue": catalogue, "events": events, "users": users, "items": len(ids), "publish_events_per_s": round(events / publish_s),
        "floor_events_per_s": round(floor), "events_per_s": round(ours["events_per_s"]),
        "ratio_to_floor": round(ours["events_per_s"] / floor, 3),
        # the floor that also does the worker's Kafka output (bench.floor, mode io)
        "floor_io_events_per_s": round(floor_io), "ratio_to_floor_io": round(ours["events_per_s"] / floor_io, 3),
        "floor_io_cpu_us_per_event": round(floor_io_cpu * 1e6),
        "catchup_pending": tp.windows.catchup_pending,
        # windows closed on time (windows.catchup_pending 0): the base of the latency phase's rate
        "windowed_events_per_s": None if windowed is None else round(windowed["events_per_s"]),
        "windowed_cpu_us_per_event": None if windowed is None else round(windowed["cpu_per_event"] * 1e6),
        "windowed_peak_rss_mb": None if windowed is None else round(windowed["memory"]["VmHWM"] / 2**20),
        # CPU per event is what other load on a shared machine distorts least
        "floor_cpu_us_per_event": round(floor_cpu * 1e6), "cpu_us_per_event": round(ours["cpu_per_event"] * 1e6), "elapsed_s": round(ours["elapsed_s"], 1),
        "worker_peak_rss_mb": round(ours["memory"]["VmHWM"] / 2**20), "flushes": ours["flushes"],
        "recommendations": ours["recommendations"], "latency_flush": LATENCY_FLUSH,
        "latency": None if latency is None else {**{k: v for k, v in latency.items() if k != "memory"},
                                                 "worker_peak_rss_mb": round(latency["memory"]["VmHWM"] / 2**20)},
        "profiled": profile is not None,
    }
    if profile is not None:
        from bench.profile import summarise

        result["profile"] = summarise(_raw(profile), profile)
    return result
