"""Memory soak: one worker fed at a fixed rate; its RSS sampled every 10 s.

``users`` users (a fixed population, so the store stops growing per user once each has a
profile) over the ml-100k catalogue, events stamped at produce time, published in 10 ms
ticks. Reports the RSS and anonymous-memory samples (anonymous = the Python heap; RSS also
counts LMDB's file pages), and the anonymous growth from the end of the first third (warm-up)
to the end. ``python -m bench soak --soak-seconds 600`` is the 10-minute soak (``make soak``).
"""

from __future__ import annotations

import time

from bench.e2e import WorkerProcess, _broker, _catalogue, _settings, synthetic_events

__all__ = ["run"]


def run(seconds: float = 180.0, rate: float = 300.0, users: int = 10_000, every_s: float = 10.0) -> dict:
    from stream.kafka_io import ensure_topics, make_producer, publish_events, publish_items

    with _broker("bench-soak-") as (workdir, url, _):
        worker = producer = None
        try:
            settings = _settings(url, "bench.soak.")
            items, ids, weights = _catalogue(settings)
            ensure_topics(settings)
            producer = make_producer(settings)
            publish_items(producer, settings.topics, items)
            producer.flush()
            worker = WorkerProcess(settings, workdir)
            worker.wait_ready()
            samples, sent, seed = [], 0, 0
            t0 = next_sample = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                due = int(elapsed * rate) + 1
                if due > sent:
                    batch = synthetic_events(due - sent, users, ids, weights, seed=seed, step_ms=0)
                    for n, e in enumerate(batch):
                        e["event_id"] = f"soak-{sent + n}"
                    publish_events(producer, settings.topics, batch)
                    sent, seed = due, seed + 1
                if time.perf_counter() >= next_sample:
                    mem = worker.memory()
                    samples.append({"t_s": round(elapsed), "rss_mb": round(mem["VmRSS"] / 2**20, 1),
                                    "anon_mb": round(mem["RssAnon"] / 2**20, 1),
                                    "applied": int(worker.metrics().get("events_applied", 0))})
                    next_sample += every_s
                time.sleep(0.01)
            time.sleep(3)
            applied = int(worker.metrics().get("events_applied", 0))
        finally:
            if producer is not None:
                producer.close()
            if worker is not None:
                worker.stop()
    warm = samples[len(samples) // 3]
    return {
        "benchmark": "soak", "seconds": seconds, "rate": rate, "users": users, "sent": sent, "applied": applied,
        "rss_mb_first_last_max": [samples[0]["rss_mb"], samples[-1]["rss_mb"], max(s["rss_mb"] for s in samples)],
        "anon_growth_after_warmup_mb": round(samples[-1]["anon_mb"] - warm["anon_mb"], 1),
        "samples": samples,
    }
