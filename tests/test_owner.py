"""The store's owner (stream.owner): a child process answers exactly as the thread does, its
metric observations reach the worker's metrics, and its failures reach the caller."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from concurrent.futures.process import BrokenProcessPool
from types import SimpleNamespace
from uuid import uuid4

import numpy as np
import orjson
import pytest

from stream.app import _raw_of
from stream.catalog import ItemMessage
from stream.config import load_settings
from stream.events import Event
from stream.owner import StoreOwner, StoreState, detached
from stream.telemetry import WorkerMetrics
from stream.windows import UserWindow

#: a run-unique word in every title: the first owner must encode them (no embedding-cache hits)
NONCE = uuid4().hex[:8]
ITEMS = [ItemMessage(f"i{n}", f"{title} ({NONCE})", None, {"genre": genre}) for n, (title, genre) in enumerate([
    ("A quiet film about the sea", "drama"), ("Robots at war on Mars", "sci-fi"), ("A cookery school in Lyon", "documentary"),
    ("Two detectives and a missing diamond", "crime"), ("The last summer of a village band", "drama"),
    ("Space pirates steal a moon", "sci-fi"), ("How bread is made", "documentary"), ("A heist under the Thames", "crime"),
])]


def _pid(state: StoreState) -> int:
    return os.getpid()


def _fails(state: StoreState) -> None:
    raise ValueError("bad input for the store")


def _windows() -> list[UserWindow]:
    """Two users' windows with Faust-event stand-ins; one event names an unknown item."""
    out = []
    for user, items in (("alice", ["i0", "i4", "nope"]), ("bob", ["i1", "i5", "i3"])):
        events = [Event(user, item, 1_700_000_000_000 + n * 1000, 1, "t.clicks:0", 10 * len(out) + n) for n, item in enumerate(items)]
        handles = [SimpleNamespace(value=f"raw {e.offset}".encode()) for e in events]
        out.append(UserWindow(user, events, handles))
    return out


def _settings(tmp_path, owner: str):
    return load_settings(None, store={"path": tmp_path / owner / "store.lmdb", "owner": owner}, ranking={"k": 3})


async def _flush_with(owner_kind: str, tmp_path):
    metrics = WorkerMetrics(Counter())
    owner = StoreOwner(_settings(tmp_path, owner_kind), metrics)
    try:
        opened = await owner.call(StoreState.open)
        changed, size = await owner.call(StoreState.upsert_items, ITEMS)
        applied = await owner.call(StoreState.apply, detached(_windows()), 1_700_000_100_000)
        pid = await owner.call(_pid)
    finally:
        await owner.aclose()
    return opened, (changed, size), applied, pid, metrics


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("owner")
    return {kind: asyncio.run(_flush_with(kind, tmp)) for kind in ("process", "thread")}  # the child encodes


def test_the_process_owner_runs_in_another_process_and_the_thread_in_this_one(both):
    assert both["thread"][3] == os.getpid()
    assert both["process"][3] != os.getpid()


def test_the_child_applies_windows_exactly_as_the_thread(both):
    (_, upserted_t, thread, _, _), (_, upserted_p, child, _, _) = both["thread"], both["process"]
    assert upserted_t == upserted_p == (len(ITEMS), len(ITEMS))
    assert (child.result.applied, child.result.users) == (thread.result.applied, thread.result.users) == (5, 2)
    assert [key for key, _ in child.records] == [b"alice", b"bob"] and child.recommended == ["alice", "bob"]
    recs = {kind: [orjson.loads(value) for _, value in applied.records] for kind, applied in (("thread", thread), ("process", child))}
    assert [r["user_id"] for r in recs["process"]] == ["alice", "bob"]
    for a, b in zip(recs["thread"], recs["process"]):
        assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
        np.testing.assert_allclose([i["score"] for i in a["items"]], [i["score"] for i in b["items"]], atol=1e-6)
    assert [p for p, _, _ in child.snapshot] == [0, 0] and len(child.snapshot[0][2]) > 100
    assert child.applied_offsets == thread.applied_offsets == {("t.clicks", 0): 12}


def test_a_rejected_event_from_the_child_finds_its_raw_record_for_the_dead_letter(both):
    child = both["process"][2]
    [(event, reason)] = child.result.rejected
    assert (event.item_id, event.offset) == ("nope", 2) and "unknown item" in reason
    assert _raw_of(_windows(), event) == b"raw 2"  # a copy of the event, found by source and offset


def test_the_childs_commit_and_encoder_times_reach_the_workers_metrics(both):
    for kind in ("thread", "process"):
        assert both[kind][4].registry.get_sample_value("recstream_lmdb_commit_seconds_count") >= 2  # upsert + flush
    assert both["process"][4].registry.get_sample_value("recstream_encoder_batch_texts_sum") >= len(ITEMS)


def test_an_error_in_the_child_reaches_the_caller_and_the_child_serves_on(tmp_path):
    async def run():
        owner = StoreOwner(_settings(tmp_path, "process"), WorkerMetrics(Counter()))
        try:
            with pytest.raises(ValueError, match="bad input for the store"):
                await owner.call(_fails)
            return await owner.call(_pid)
        finally:
            await owner.aclose()

    assert asyncio.run(run()) != os.getpid()


def test_a_dead_child_fails_every_later_call(tmp_path):
    async def run():
        owner = StoreOwner(_settings(tmp_path, "process"), WorkerMetrics(Counter()))
        try:
            os.kill(await owner.call(_pid), signal.SIGKILL)
            with pytest.raises(BrokenProcessPool):
                await owner.call(_pid)
            with pytest.raises(BrokenProcessPool):
                await owner.call(_pid)
        finally:
            await owner.aclose()  # logs, does not raise

    asyncio.run(run())
