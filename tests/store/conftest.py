"""Fixtures for the store tests: a fresh environment per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from store import LmdbStore


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.lmdb"


@pytest.fixture
def store(store_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(store_path, map_size_mb=16)
    yield s
    s.close()
