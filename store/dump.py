"""Operator tools on a store directory: stats, compaction, export and import as JSON Lines.

The export is lossless: float32 vectors survive the JSON round trip (a float32 widens to a
float64 exactly, orjson writes the shortest repr that reads back the same float64, and that
narrows back to the same float32). Line 1 is a header; every other line is one object with
``"type"``: ``profile``, ``seen``, ``item``, ``offset`` or ``counter``.

Export reads one MVCC snapshot, so it may run beside a worker. Import and in-place
compaction write the store: stop the worker first (one writer per store).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from store.lmdb_store import LmdbStore, StoreError, _one_line
from store.records import HistoryEntry, ItemRecord, ProfileRecord

__all__ = ["FORMAT", "compact", "export_jsonl", "import_jsonl", "store_stats"]

FORMAT = "recstream-store-export"
FORMAT_VERSION = 1
IMPORT_BATCH = 10_000


def store_stats(path: Path) -> dict[str, int | float]:
    """Entries per database, map and file sizes of the store at ``path`` (read-only)."""
    with LmdbStore(path, readonly=True) as store:
        out = store.stats()
    out["file_bytes"] = (Path(path) / "data.mdb").stat().st_size
    return out


def compact(path: Path, out: Path | None = None) -> tuple[int, int]:
    """Copy the store without free pages to ``out`` (a new directory), or in place if ``None``.

    In place writes the copy beside the store and renames it over ``data.mdb`` (atomic on
    one file system); no worker may have the store open. Returns (bytes before, after).
    """
    path = Path(path)
    before = (path / "data.mdb").stat().st_size if (path / "data.mdb").exists() else 0
    target = Path(out) if out is not None else path.with_name(path.name + ".compacting")
    if target.exists() and any(target.iterdir()):
        raise StoreError(f"{target} exists and is not empty")
    with LmdbStore(path, readonly=True) as store:
        target.mkdir(parents=True, exist_ok=True)
        try:
            store._env.copy(str(target), compact=True)
        except Exception as exc:
            if out is None:
                shutil.rmtree(target, ignore_errors=True)
            raise StoreError(f"cannot compact {path} into {target}: {_one_line(exc)}") from None
    after = (target / "data.mdb").stat().st_size
    if out is None:
        os.replace(target / "data.mdb", path / "data.mdb")
        shutil.rmtree(target)
    return before, after


def _profile_json(p: ProfileRecord) -> dict[str, Any]:
    return {
        "type": "profile", "user_id": p.user_id, "vectors": p.vectors.tolist(), "weights": p.weights.tolist(),
        "last_ts_ms": p.last_ts_ms, "event_count": p.event_count, "version": p.version, "applied": p.applied,
        "history": [[h.item_id, h.ts_ms, h.kind] for h in p.history], "kind_counts": p.kind_counts,
        "updated_ms": p.updated_ms, "recent_ids": p.recent_ids,
    }


def _item_json(i: ItemRecord) -> dict[str, Any]:
    return {"type": "item", "item_id": i.item_id, "title": i.title, "text": i.text, "vector": i.vector.tolist(),
            "attributes": i.attributes, "updated_ms": i.updated_ms}


def _lines(store: LmdbStore) -> Iterator[dict[str, Any]]:
    yield {"type": "header", "format": FORMAT, "version": FORMAT_VERSION}
    with store.read() as r:
        for p in r.iter_profiles():
            yield _profile_json(p)
            seen = r.get_seen(p.user_id)
            if seen:
                yield {"type": "seen", "user_id": p.user_id, "items": sorted(seen)}
        for item in r.iter_items():
            yield _item_json(item)
        for (topic, partition), offset in sorted(r.get_offsets().items()):
            yield {"type": "offset", "topic": topic, "partition": partition, "offset": offset}
        for name, value in sorted(r.counters().items()):
            yield {"type": "counter", "name": name, "value": value}


def export_jsonl(path: Path, out: IO[bytes]) -> dict[str, int]:
    """Write the store at ``path`` to ``out`` as JSON Lines; returns lines per type."""
    counts: dict[str, int] = {}
    with LmdbStore(path, readonly=True) as store:
        for obj in _lines(store):
            out.write(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            counts[obj["type"]] = counts.get(obj["type"], 0) + 1
    counts.pop("header")
    return counts


def _apply(txn: Any, obj: dict[str, Any]) -> None:
    kind = obj["type"]
    if kind == "profile":
        txn.put_profile(ProfileRecord(
            obj["user_id"], np.asarray(obj["vectors"], np.float32), np.asarray(obj["weights"], np.float64),
            int(obj["last_ts_ms"]), int(obj["event_count"]), int(obj["version"]),
            {str(k): int(v) for k, v in obj["applied"].items()},
            [HistoryEntry(str(i), int(t), int(k)) for i, t, k in obj["history"]],
            [int(n) for n in obj["kind_counts"]], int(obj["updated_ms"]), [int(h) for h in obj.get("recent_ids", [])],
        ))
    elif kind == "seen":
        txn.add_seen(obj["user_id"], [str(i) for i in obj["items"]])
    elif kind == "item":
        txn.put_item(ItemRecord(obj["item_id"], obj["title"], obj["text"], np.asarray(obj["vector"], np.float32),
                                obj["attributes"], int(obj["updated_ms"])))
    elif kind == "offset":
        txn.put_offset(obj["topic"], int(obj["partition"]), int(obj["offset"]))
    elif kind == "counter":
        old = txn.counters().get(obj["name"], 0)
        txn.incr(obj["name"], int(obj["value"]) - old)  # set, not add: import is idempotent
    else:
        raise ValueError(f"unknown type {kind!r}")


def import_jsonl(path: Path, lines: IO[bytes], name: str = "<input>", map_size_mb: int = 1024) -> dict[str, int]:
    """Load an export into the store at ``path`` (created if missing); same keys are replaced.

    Commits every :data:`IMPORT_BATCH` lines; a bad line raises ``ValueError("name:line:
    reason")`` and the lines before its batch stay imported (importing again is idempotent).
    """
    counts: dict[str, int] = {}
    with LmdbStore(path, map_size_mb=map_size_mb) as store:
        batch: list[tuple[int, dict[str, Any]]] = []
        header = False
        for lineno, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{name}:{lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "type" not in obj:
                raise ValueError(f"{name}:{lineno}: expected an object with a 'type'")
            if not header:
                if obj.get("format") != FORMAT or obj.get("version") != FORMAT_VERSION:
                    raise ValueError(f"{name}:{lineno}: not a {FORMAT} v{FORMAT_VERSION} file (header line)")
                header = True
                continue
            batch.append((lineno, obj))
            if len(batch) >= IMPORT_BATCH:
                _commit(store, batch, name, counts)
        _commit(store, batch, name, counts)
    return counts


def _commit(store: LmdbStore, batch: list[tuple[int, dict[str, Any]]], name: str, counts: dict[str, int]) -> None:
    with store.write() as txn:
        for lineno, obj in batch:
            try:
                _apply(txn, obj)
            except (KeyError, TypeError, ValueError) as exc:
                detail = f"missing field {exc}" if isinstance(exc, KeyError) else _one_line(exc)
                raise ValueError(f"{name}:{lineno}: bad {obj.get('type')} record: {detail}") from None
            counts[obj["type"]] = counts.get(obj["type"], 0) + 1
    batch.clear()
