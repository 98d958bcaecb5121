"""Memory and disk per user and per item, measured on a real LMDB store (deploy/README.md).

Writes ``users`` synthetic full profiles (every horizon set, ``history_len`` history entries,
``seen`` seen items, one applied offset per input topic) into a scratch store and reports the
store's used bytes per user, next to the encoded record size and the catalogue's in-memory
size per item. ``python -m bench.sizing [users]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from store import HistoryEntry, LmdbStore, ProfileRecord, encode_history, encode_profile
from stream.config import EVENT_KINDS, Settings

__all__ = ["run"]


def _profile(n: int, dim: int, horizons: int, history_len: int, rng: np.random.Generator) -> ProfileRecord:
    return ProfileRecord(
        user_id=f"user-{n:09d}",
        vectors=rng.standard_normal((horizons, dim)).astype(np.float32),
        weights=np.ones(horizons),
        last_ts_ms=1_700_000_000_000 + n,
        event_count=history_len,
        version=history_len,
        applied={f"recstream.{k}s:{n % 12}": 1_000_000 + n for k in EVENT_KINDS},
        history=[HistoryEntry(f"{1_000_000 + (n * 7 + i) % 200_000}", 1_700_000_000_000 + i, i % 3) for i in range(history_len)],
        kind_counts=[history_len // 3] * 3,
        updated_ms=1_700_000_000_000,
    )


def run(users: int = 20_000, dim: int = 384, seen: int = 50) -> dict:
    settings = Settings()
    horizons, history_len = len(settings.profile.half_lives_s), settings.store.history_len
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = LmdbStore(Path(tmp) / "s.lmdb", map_size_mb=256, durable=False)
        base = store.stats()["used_bytes"]
        record = history = 0
        for start in range(0, users, 1000):
            with store.write() as txn:
                for n in range(start, min(users, start + 1000)):
                    rec = _profile(n, dim, horizons, history_len, rng)
                    record, history = len(encode_profile(rec)), len(encode_history(rec))
                    txn.put_profile(rec)
                    txn.add_seen(rec.user_id, {h.item_id for h in rec.history[:seen]})
        per_user = (store.stats()["used_bytes"] - base) / users
        store.close()
    return {
        "benchmark": "sizing",
        "users": users,
        "dim": dim,
        "horizons": horizons,
        "history_len": history_len,
        "seen_per_user": seen,
        "profile_record_bytes": record,
        "history_record_bytes": history,
        "store_bytes_per_user": round(per_user),
        "store_gib_per_million_users": round(per_user * 1e6 / 2**30, 2),
        # Catalogue: the (N, D) float32 matrix plus the per-row list it is rebuilt from.
        "catalogue_ram_bytes_per_item": 2 * dim * 4,
    }


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)))
