"""Fixtures for the store tests: a fresh environment per test and record factories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lmdb
import numpy as np
import pytest

from store import HistoryEntry, ItemRecord, LmdbStore, ProfileRecord

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


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.lmdb"


@pytest.fixture
def store(store_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(store_path, map_size_mb=16)
    yield s
    s.close()


def dump_all(path: Path) -> list[tuple[str, bytes, bytes]]:
    """Every (db, key, value) in every database of a closed environment, main db included."""
    env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
        out = [("", k, v) for name in names for k, v in [(name, b"")]]
        for name in names:
            db = env.open_db(name, create=False)
            with env.begin(db=db) as txn:
                out += [(name.decode(), k, v) for k, v in txn.cursor(db=db).iternext_nodup(keys=True, values=False) and txn.cursor(db=db)]
        return out
    finally:
        env.close()
