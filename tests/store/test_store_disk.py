"""A store on a read-only or full file system fails with one clear error and stays intact.

Each case runs in a private mount namespace (``unshare``) with a read-only bind mount or a
tiny tmpfs, so it works without privileges and even as root (which ignores chmod).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from store import LmdbStore

UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]


def in_namespace(setup: str, code: str) -> subprocess.CompletedProcess:
    script = f"{setup} && exec {sys.executable} -c {_quote(textwrap.dedent(code))}"
    return subprocess.run([*UNSHARE, "sh", "-c", script], capture_output=True, text=True, timeout=120)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


@pytest.fixture(scope="module", autouse=True)
def namespaces_available(tmp_path_factory):
    if shutil.which("unshare") is None:
        pytest.skip("unshare not installed")
    probe = tmp_path_factory.mktemp("probe")
    out = subprocess.run([*UNSHARE, "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe}"], capture_output=True)
    if out.returncode:
        pytest.skip(f"no unprivileged mount namespaces here: {out.stderr.decode().strip()}")


def test_read_only_file_system_is_one_clear_error_and_readers_still_work(tmp_path: Path):
    path = tmp_path / "store.lmdb"
    with LmdbStore(path, map_size_mb=16) as store, store.write() as w:
        w.incr("events.view", 3)
    out = in_namespace(f"mount --bind {tmp_path} {tmp_path} && mount -o remount,ro,bind {tmp_path}", f"""
        from store import LmdbStore, StoreError
        try:
            LmdbStore({str(path)!r})
        except StoreError as exc:
            print("ERROR", exc)
        with LmdbStore({str(path)!r}, readonly=True) as ro, ro.read() as r:
            print("READ", r.counters())
    """)
    assert out.returncode == 0, out.stderr
    error, read = out.stdout.splitlines()
    assert error.startswith(f"ERROR cannot open LMDB store at {path}") and "Read-only file system" in error
    assert read == "READ {'events.view': 3}"


def test_full_disk_fails_the_write_cleanly_and_keeps_every_commit(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = in_namespace(f"mount -t tmpfs -o size=1m tmpfs {mnt}", f"""
        from store import LmdbStore, StoreError
        path = {str(mnt / 'store.lmdb')!r}
        store = LmdbStore(path, map_size_mb=64)
        committed = 0
        try:
            for n in range(10_000):
                with store.write() as w:
                    w.incr("blocks")
                    w.put_offset("t", n, n)
                    w.add_seen("u", [f"item-{{n}}-{{i}}-" + "x" * 200 for i in range(20)])
                committed += 1
        except StoreError as exc:
            print("ERROR", exc)
        store.close()
        with LmdbStore(path, readonly=True) as ro, ro.read() as r:
            print("COMMITTED", committed, r.counters().get("blocks"), len(r.get_offsets()))
    """)
    assert out.returncode == 0, out.stderr
    error, committed = out.stdout.splitlines()
    assert error.startswith("ERROR ") and "No space left on device" in error, error
    _, n, blocks, offsets = committed.split()
    assert int(n) > 0 and n == blocks == offsets  # every commit before the failure, nothing half-written
