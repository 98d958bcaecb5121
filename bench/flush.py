"""The worker's per-user CPU without Kafka: ``Processor.flush`` on windows of ``events_per_user``.

10,000 users (warmed up with 10 events each) over a synthetic 1,682 × 384 catalogue with a
popularity skew like ml-100k's; by default 16 flushes of 625 users with one event each, as a
latency flush of the e2e benchmark makes them (``events_per_user=10, per_flush=2500``: about
what a catch-up slice holds per user, 100,000 events of 10,000 users), each followed by the
changelog snapshot (``changelog.collect``). Reports CPU µs per user of the flush (with the
recommendations' JSON) and of the snapshot, and a digest of
every recommendation and changelog value: two versions of the code that must produce the
same output are compared by it on one machine (BLAS threads as the worker sets them; scores
can differ in the last bit with another thread count or BLAS build).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

__all__ = ["run"]


def run(users: int = 10_000, flushes: int = 16, per_flush: int = 625, items: int = 1682, dim: int = 384,
        events_per_user: int = 1) -> dict:
    from store import LmdbStore
    from stream.catalog import Catalogue
    from stream.changelog import collect
    from stream.config import load_settings
    from stream.events import Event
    from stream.processor import Processor
    from stream.windows import UserWindow

    rng = np.random.default_rng(0)
    catalogue = Catalogue(dim)
    matrix = rng.standard_normal((items, dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    for i in range(items):
        catalogue.upsert(f"i{i}", matrix[i])
    popularity = 1 / np.arange(1, items + 1)
    popularity /= popularity.sum()
    offset = 0

    def windows(ids: np.ndarray | range, per_user: int) -> list[UserWindow]:
        nonlocal offset
        out = []
        for u in ids:
            window = UserWindow(f"u{u:05d}")
            for _ in range(per_user):
                offset += 1
                item = f"i{rng.choice(items, p=popularity)}"
                window.events.append(Event(window.user_id, item, 1_700_000_000_000 + offset * 10, int(rng.integers(0, 3)),
                                           f"bench:{u % 4}", offset, event_id=f"e{offset}"))
                window.handles.append(None)
            out.append(window)
        return out

    with tempfile.TemporaryDirectory(prefix="bench-flush-") as tmp:
        settings = load_settings(store={"path": Path(tmp) / "store.lmdb"})
        if settings.ranking.blas_threads:
            from threadpoolctl import threadpool_limits

            threadpool_limits(settings.ranking.blas_threads, user_api="blas")
        store = LmdbStore(settings.store.path, map_size_mb=settings.store.map_size_mb, vector_dtype=settings.store.vector_dtype)
        try:
            processor = Processor(settings, store, catalogue)
            processor.follow_store()  # as the worker does (the hybrid's signals, when configured)
            for _ in range(5):  # 10 events per user, no recommendations
                for start in range(0, users, 1000):
                    processor.flush(windows(range(start, min(users, start + 1000)), 2), 1, recommend=False)
            digest = hashlib.sha256()
            flush_s = collect_s = 0.0
            n = 0
            for _ in range(flushes):
                batch = windows(rng.choice(users, per_flush, replace=False), events_per_user)
                t0 = time.process_time()
                result = processor.flush(batch, 2)
                values = [orjson.dumps(rec) for rec in result.recommendations]
                t1 = time.process_time()
                records = collect(store, batch)
                t2 = time.process_time()
                flush_s, collect_s, n = flush_s + t1 - t0, collect_s + t2 - t1, n + len(batch)
                for value in values:
                    digest.update(value)
                for _, key, value in records:
                    digest.update(key)
                    digest.update(value)
        finally:
            store.close()
    return {"benchmark": "flush", "users": users, "flushed_users": n, "events_per_user": events_per_user, "items": items,
            "flush_cpu_us_per_user": round(1e6 * flush_s / n), "collect_cpu_us_per_user": round(1e6 * collect_s / n),
            "blas_threads": settings.ranking.blas_threads, "digest": digest.hexdigest()[:16]}
