"""Scanning a whole LMDB store for traces of a user (privacy tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lmdb

__all__ = ["store_rows", "traces"]


def store_rows(path: Path) -> list[tuple[str, bytes, bytes]]:
    """Every (db, key, value) in every named database of the environment, duplicates included.

    Databases are discovered from the main database, so one added later is scanned too.
    """
    env = lmdb.open(str(path), max_dbs=64, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
        rows: list[tuple[str, bytes, bytes]] = [("", n, b"") for n in names]
        for name in names:
            for dupsort in (True, False):
                try:
                    db = env.open_db(name, create=False, dupsort=dupsort)
                    break
                except lmdb.IncompatibleError:
                    continue
            with env.begin() as txn:  # MDB_NEXT visits every duplicate of a dupsort key too
                rows += [(name.decode(), k, v) for k, v in txn.cursor(db=db).iternext()]
        return rows
    finally:
        env.close()


def traces(path: Path, user_id: str) -> list[tuple[str, bytes]]:
    """(db, key) of every row holding the user id's bytes or its event-id digest prefix."""
    needles = [user_id.encode(), hashlib.blake2b(user_id.encode(), digest_size=16).digest()]
    return [(db, k) for db, k, v in store_rows(path) if any(n in k or n in v for n in needles)]
