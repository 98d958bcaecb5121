"""SliceCollector: no automatic garbage collection while held, one full collection on demand,
and the collector left as it was found."""

from __future__ import annotations

import gc

import pytest

from stream.heap import SliceCollector


@pytest.fixture
def collections():
    """The generations collected while the test runs (gc callbacks see every collection)."""
    seen: list[int] = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "stop":
            seen.append(info["generation"])

    was_enabled = gc.isenabled()
    gc.enable()
    gc.callbacks.append(on_gc)
    try:
        yield seen
    finally:
        gc.callbacks.remove(on_gc)
        (gc.enable if was_enabled else gc.disable)()


def _allocate_containers(n: int = 50_000) -> list:
    """``n`` live container objects: far past the young generation's threshold."""
    return [[i] for i in range(n)]


def test_held_collector_runs_only_the_collections_asked_for(collections):
    collector = SliceCollector()
    collector.hold()
    try:
        assert collector.held and not gc.isenabled()
        collections.clear()  # pytest's own allocations may trigger one before hold()
        kept = _allocate_containers()
        assert collections == []  # 50,000 containers, and no automatic collection
        assert collector.collect() >= 0
        assert collections == [2]  # the one full collection
    finally:
        collector.release()
    assert not collector.held and gc.isenabled()
    collections.clear()
    kept += _allocate_containers()
    assert collections  # automatic collections again
    assert len(kept) == 100_000


def test_release_restores_a_collector_that_was_off(collections):
    gc.disable()
    collector = SliceCollector()
    collector.hold()
    collector.hold()  # holding twice is holding once
    collector.release()
    assert not gc.isenabled()
    collector.release()  # and releasing when not held changes nothing
    assert not gc.isenabled()
