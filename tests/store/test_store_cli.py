"""``recstream store stats|compact|export|import``: lossless round trip, errors as one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
from store_helpers import dump_all, make_item, make_profile

from store import LmdbStore


def contents(path: Path) -> list[tuple[str, bytes, bytes]]:
    """Every record of every named database (the main db holds page roots, which may differ)."""
    return [row for row in dump_all(path) if row[0]]


def recstream(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, timeout=120)


def one_line_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], out.stderr


def filled(path: Path) -> Path:
    with LmdbStore(path, map_size_mb=16) as store:
        with store.write() as w:
            for n in range(20):
                p = make_profile(f"user-{n}", seed=n, history=n)
                p.recent_ids = [n, 2**64 - 1 - n]
                w.put_profile(p)
                w.add_seen(p.user_id, [h.item_id for h in p.history])
            for n in range(5):
                w.put_item(make_item(f"item-{n}", seed=n))
            w.put_offset("t.views", 2, 99)
            w.incr("events.view", 7)
        with store.write() as w:
            for n in range(10):
                w.forget(f"user-{n}")  # leaves free pages for compaction
    return path


def test_export_import_round_trip_is_byte_identical(tmp_path: Path):
    src = filled(tmp_path / "src.lmdb")
    dump = tmp_path / "dump.jsonl"
    out = recstream("--store", str(src), "store", "export", str(dump))
    assert out.returncode == 0, out.stderr
    assert "10 profile, 10 seen, 5 item, 1 offset, 1 counter" in out.stderr
    lines = dump.read_bytes().splitlines()
    assert orjson.loads(lines[0])["format"] == "recstream-store-export" and len(lines) == 28
    out = recstream("--store", str(tmp_path / "dst.lmdb"), "store", "import", str(dump))
    assert out.returncode == 0, out.stderr
    assert contents(src) == contents(tmp_path / "dst.lmdb")
    # importing again changes nothing (counters are set, not added)
    assert recstream("--store", str(tmp_path / "dst.lmdb"), "store", "import", str(dump)).returncode == 0
    assert contents(src) == contents(tmp_path / "dst.lmdb")


def test_stats_and_compaction(tmp_path: Path):
    src = filled(tmp_path / "src.lmdb")
    before = contents(src)
    stats = orjson.loads(recstream("--store", str(src), "store", "stats", "--json").stdout)
    assert (stats["profiles"], stats["items"], stats["offsets"]) == (10, 5, 1)
    out = recstream("--store", str(src), "store", "compact", "--out", str(tmp_path / "copy.lmdb"))
    assert out.returncode == 0, out.stderr
    assert contents(tmp_path / "copy.lmdb") == before
    assert (tmp_path / "copy.lmdb" / "data.mdb").stat().st_size < stats["file_bytes"]
    out = recstream("--store", str(src), "store", "compact", "--in-place")
    assert out.returncode == 0, out.stderr
    assert contents(src) == before and (src / "data.mdb").stat().st_size < stats["file_bytes"]


def test_store_command_errors_are_one_line(tmp_path: Path):
    missing = str(tmp_path / "missing")
    one_line_error(recstream("--store", missing, "store", "stats"), "no LMDB store at")
    one_line_error(recstream("--store", missing, "store", "export", "-"), "no LMDB store at")
    one_line_error(recstream("--store", missing, "store", "compact"), "exactly one of --out DIR or --in-place")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "header", "format": "recstream-store-export", "version": 1}\n'
                   '{"type": "counter", "name": "x", "value": 1}\n{"type": "profile", "user_id": "u"}\n')
    one_line_error(recstream("--store", str(tmp_path / "new"), "store", "import", str(bad)),
                   f"{bad}:3: bad profile record: missing field 'vectors'")
    bad.write_text('{"user_id": "u"}\n')
    one_line_error(recstream("--store", str(tmp_path / "new"), "store", "import", str(bad)), f"{bad}:1: expected an object")
