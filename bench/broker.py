"""The embedded broker's own cost as it fills: Tansu's CPU at a fixed produce + fetch rate.

Every other benchmark shares the machine with the embedded broker, so its cost is part of
their figures. This one runs no worker: ``rate`` records/s of ``size`` bytes (keys from a set
of 10,000, like the changelog) are produced to a 4-partition topic and read back by one tail
consumer with a 20 ms fetch wait (as the worker's), and the broker's CPU and RSS are sampled
every 10 s. With memory storage nothing is ever dropped, so what it holds grows with time.
The producer's ``linger_ms`` sets how many records share a batch: Tansu's cost follows the
number of batches it holds, not their bytes, and the growth is in the fetch path: with
``consume=False`` (``--broker-no-consumer``) the same produce rate stays flat (BENCHMARKS.md,
2026-12-02).
"""

from __future__ import annotations

import threading
import time

from bench.e2e import process_cpu_s, process_memory

__all__ = ["run"]


def run(seconds: float = 120.0, rate: float = 300.0, size: int = 3000, compact: bool = True, every_s: float = 10.0,
        linger_ms: int = 5, consume: bool = True) -> dict:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from stream.broker import EmbeddedBroker, free_port

    samples = []
    with EmbeddedBroker(port=free_port()) as broker:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic("fill", 4, 1, topic_configs={"cleanup.policy": "compact"} if compact else {})])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=linger_ms, batch_size=128 * 1024)
        stop, received = threading.Event(), [0]

        def tail() -> None:
            consumer = KafkaConsumer("fill", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                     group_id=None, fetch_max_wait_ms=20, consumer_timeout_ms=200)
            while not stop.is_set():
                for _ in consumer:
                    received[0] += 1
            consumer.close()

        reader = threading.Thread(target=tail, daemon=True)
        if consume:
            reader.start()
        value, sent = b"v" * size, 0
        t0 = last_t = time.perf_counter()
        last_cpu, next_sample = process_cpu_s(broker.pid), t0 + every_s
        try:
            while (elapsed := time.perf_counter() - t0) < seconds:
                for _ in range(int(elapsed * rate) - sent):
                    producer.send("fill", key=str(sent % 10_000).encode(), value=value)
                    sent += 1
                if (now := time.perf_counter()) >= next_sample:
                    cpu = process_cpu_s(broker.pid)
                    samples.append({"t_s": round(elapsed), "broker_cpu_pct": round(100 * (cpu - last_cpu) / (now - last_t), 1),
                                    "broker_rss_mb": round(process_memory(broker.pid)["VmRSS"] / 2**20), "sent": sent, "received": received[0]})
                    last_t, last_cpu, next_sample = now, cpu, next_sample + every_s
                time.sleep(0.01)
        finally:
            stop.set()
            producer.close()
            if consume:
                reader.join(timeout=5)
    return {"benchmark": "broker", "seconds": seconds, "rate": rate, "record_bytes": size, "linger_ms": linger_ms, "compacted": compact,
            "consumer": consume,
            "broker_cpu_pct_first_last": [samples[0]["broker_cpu_pct"], samples[-1]["broker_cpu_pct"]] if samples else [],
            "samples": samples}
