"""LMDB store throughput: batched and single profile commits, batched reads, changelog restore.

Profiles are the size the worker writes (dim 384, 2 horizons, 50-entry history, MovieLens
ids), in a durable store (fsync per commit) in a temporary directory on the local disk.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from store import HistoryEntry, LmdbStore, ProfileRecord, encode_changelog, encode_history, encode_profile
from stream.changelog import merge

__all__ = ["run"]


def _profiles(n: int, dim: int, seed: int) -> list[ProfileRecord]:
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000_000
    return [
        ProfileRecord(
            f"user-{u}", rng.standard_normal((2, dim), dtype=np.float32), rng.random(2), t0, 50, 1,
            {"views:0": u, "clicks:0": u}, [HistoryEntry(str(1 + (u + i) % 1682), t0 + i * 1000, i % 3) for i in range(50)],
            [30, 15, 5], t0, [],
        )
        for u in range(n)
    ]


def _rate(n: int, started: float) -> float:
    return round(n / (time.perf_counter() - started), 1)


def run(n: int = 5_000, batch: int = 1_000, singles: int = 200, dim: int = 384, seed: int = 0) -> dict:
    profiles = _profiles(n, dim, seed)
    with tempfile.TemporaryDirectory(prefix="recstream-bench-", dir=Path.cwd()) as tmp:
        store = LmdbStore(Path(tmp) / "a.lmdb", map_size_mb=256)
        started = time.perf_counter()
        for start in range(0, n, batch):
            with store.write() as w:
                for p in profiles[start : start + batch]:
                    w.put_profile(p)
        batched = _rate(n, started)

        started = time.perf_counter()
        for p in profiles[:singles]:
            with store.write() as w:
                w.put_profile(p)
        single = _rate(singles, started)

        ids = [p.user_id for p in profiles]
        started = time.perf_counter()
        for start in range(0, n, batch):
            with store.read() as r:
                r.get_profiles(ids[start : start + batch])
        reads = _rate(n, started)

        started = time.perf_counter()
        for start in range(0, n, batch):  # what a flush does: read, change, write back, commit
            with store.write() as w:
                got = w.get_profiles(ids[start : start + batch])
                for p in got.values():
                    p.event_count += 1
                    w.put_profile(p)
        rmw = _rate(n, started)
        store.close()

        records = {p.user_id: encode_changelog(encode_profile(p), encode_history(p), [h.item_id for h in p.history]) for p in profiles}
        target = LmdbStore(Path(tmp) / "b.lmdb", map_size_mb=256)
        started = time.perf_counter()
        merge(target, records)
        restore = _rate(n, started)
        target.close()
    return {
        "benchmark": "store", "profiles": n, "dim": dim, "batch": batch,
        "writes_per_s_batched": batched, "writes_per_s_one_per_commit": single,
        "reads_per_s_batched": reads, "read_modify_write_per_s_batched": rmw,
        "changelog_restore_profiles_per_s": restore,
        "profile_bytes_float32": len(encode_profile(profiles[0])),
        "profile_bytes_float16": len(encode_profile(profiles[0], "float16")),
        "history_bytes": len(encode_history(profiles[0])),
    }
