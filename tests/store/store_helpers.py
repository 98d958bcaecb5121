"""Helpers shared by the store tests (a plain module: tests/store has no __init__)."""

from __future__ import annotations

from pathlib import Path

import lmdb
import numpy as np

from store import HistoryEntry, ItemRecord, ProfileRecord

__all__ = ["T0_MS", "dump_all", "make_item", "make_profile"]

T0_MS = 1_700_000_000_000


def make_profile(user_id: str = "u1", dim: int = 384, horizons: int = 2, history: int = 50, seed: int = 0) -> ProfileRecord:
    rng = np.random.default_rng(seed)
    return ProfileRecord(
        user_id=user_id,
        vectors=rng.standard_normal((horizons, dim)).astype(np.float32),
        weights=rng.random(horizons),
        last_ts_ms=T0_MS + history * 1000,
        event_count=history,
        version=3,
        applied={"t.view:0": 41, "t.click:0": 7, "t.purchase:2": 1},
        history=[HistoryEntry(str(1 + (seed + i) % 1682), T0_MS + i * 1000, i % 3) for i in range(history)],
        kind_counts=[30, 15, 5],
        updated_ms=T0_MS + 10**6,
    )


def make_item(item_id: str = "i1", dim: int = 384, seed: int = 0) -> ItemRecord:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return ItemRecord(item_id, f"Title {item_id}", f"Title {item_id}. Drama", v / np.linalg.norm(v),
                      {"genres": ["Drama", "War"], "year": "1995"}, T0_MS)


def dump_all(path: Path) -> list[tuple[str, bytes, bytes]]:
    """Every (db, key, value) of a closed environment: the main db and each named db, duplicates included."""
    env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            out = [("", k, v) for k, v in txn.cursor()]
        for name in [k for _, k, _ in out]:
            db = env.open_db(name, create=False)
            with env.begin() as txn:
                out += [(name.decode(), k, v) for k, v in txn.cursor(db=db)]
        return out
    finally:
        env.close()
