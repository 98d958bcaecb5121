"""The store's single owner: the store, encoder, catalogue and processor of one worker.

Every LMDB write and encoder call of a worker runs in one place, so the store has exactly
one writer and the event loop never blocks on inference or fsync. That place is either a
thread of the worker (``store.owner = "thread"``) or a child process (``"process"``, the
default). In a thread the flush's maths shares the interpreter lock with the event loop,
which consumes, decodes, sends and acks: under a backlog the two then take turns on one
core. In a child process they run side by side: behind a 200,000-event backlog the worker
applied 16-35% more events per second than with the thread, in three alternated pairs
(BENCHMARKS.md, 2026-12-06, night). That needs the agent not to wait for the owner: see
stream.lag.InOrder.

The event loop only awaits :meth:`StoreOwner.call` with a module-level function and its
arguments: ``fn(state, *args)`` runs where the :class:`StoreState` lives. Arguments and
answers cross the process boundary by pickle, so windows travel without their Faust
events (:func:`detached`). The child's metric observations (commit, encoder and GC times)
come back with each answer and are replayed into the worker's own metrics. If the child
dies, the call raises and the worker stops as on any failed flush: its un-acked input is
redelivered.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import orjson

from store import ItemRecord, LmdbStore
from stream.catalog import Catalogue, ItemMessage, item_text, item_vectors, split_stored_attributes, stored_attributes
from stream.changelog import collect
from stream.config import Settings
from stream.processor import FlushResult, Processor
from stream.telemetry import ObservationLog, WorkerMetrics
from stream.windows import UserWindow

__all__ = ["Applied", "Opened", "StoreOwner", "StoreState", "detached", "on_store"]

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class Opened:
    """What :meth:`StoreState.open` found: for the worker's log, gauges and lag."""

    items: int
    applied_offsets: dict[tuple[str, int], int]


@dataclass(slots=True)
class Applied:
    """One flush's answer: the processor's result, its recommendations as output records,
    its changelog snapshot and the store's applied input offsets after it (the consumer-lag
    gauge).

    The recommendations come serialised (``records``, ``result.recommendations`` left
    empty): bytes cross the process boundary for a fraction of what thousands of nested
    dicts cost to pickle and unpickle on the event loop's side.
    """

    result: FlushResult
    records: list[tuple[bytes, bytes]]  # (key, JSON value) per recommendation, for the output topic
    recommended: list[str]  # the store ids of the users recommended, in ``records``' order
    snapshot: list[tuple[int, bytes, bytes]]
    applied_offsets: dict[tuple[str, int], int]


class StoreState:
    """The store, encoder, catalogue and processor; lives with the store's single owner."""

    def __init__(self, settings: Settings, metrics: Any) -> None:
        self.settings = settings
        #: a WorkerMetrics (thread owner) or an ObservationLog (child process)
        self.metrics = metrics
        self.store: LmdbStore | None = None
        self.encoder: Any = None
        self.catalogue: Catalogue | None = None
        self.processor: Processor | None = None
        self.stale_items = False
        self.reencoded: set[str] = set()

    def open(self) -> Opened:
        """Open the store, load the encoder (exporting it once) and the stored catalogue."""
        from encoders import CachedEncoder, EmbeddingCache, load_encoder

        s = self.settings
        if s.ranking.blas_threads:
            from threadpoolctl import threadpool_limits

            threadpool_limits(s.ranking.blas_threads, user_api="blas")  # process-wide, kept
        self.store = LmdbStore(s.store.path, map_size_mb=s.store.map_size_mb, vector_dtype=s.store.vector_dtype)
        self.store.on_commit = self.metrics.observe_commit
        self.metrics.watch_gc()
        encoder = load_encoder(s.encoder)
        timed = self.metrics.timed_encoder(encoder)
        self.encoder = CachedEncoder(timed, EmbeddingCache(s.encoder.cache_dir / "embeddings.lmdb"))
        self.catalogue = Catalogue(encoder.dim)
        with self.store.read() as txn:
            stored = list(txn.iter_items())
        self.stale_items = _made_by_another_model(self.encoder, stored)
        if self.stale_items:
            log.warning("stored item vectors come from another model: re-encoding the catalogue as it is read")
        else:
            for item in stored:
                self.catalogue.upsert(item.item_id, item.vector, split_stored_attributes(item.attributes)[0], item.text)
        self.processor = Processor(s, self.store, self.catalogue, self.encoder)
        self.processor.follow_store()  # rebuilt from the store once the catalogue is in: rebuild_signals
        log.info("worker opened store %s with %d items, encoder %s", s.store.path, len(self.catalogue), encoder.providers)
        return Opened(len(self.catalogue), self.applied_offsets())

    def rebuild_signals(self) -> None:
        """Recompute the hybrid's signals from the stored histories, once the catalogue
        (their rows) is loaded."""
        if self.processor is not None and self.processor.signals is not None:
            started = time.perf_counter()
            users = self.processor.signals.rebuild(self.store)
            log.info("hybrid signals rebuilt from %d stored histories in %.2f s", users, time.perf_counter() - started)

    def upsert_items(self, items: list[Any]) -> tuple[int, int]:
        """Encode new or changed items in one batch and store them; returns (changed, catalogue size)."""
        assert self.store is not None and self.catalogue is not None
        texts = [item_text(i) for i in items]
        with self.store.read() as txn:
            stored = {i.item_id: txn.get_item(i.item_id) for i in items}
        changed = [(i, t) for i, t in zip(items, texts)
                   if (old := stored[i.item_id]) is None or old.text != t or old.attributes != stored_attributes(i)
                   or (self.stale_items and i.item_id not in self.reencoded)]
        if self.stale_items:
            self.reencoded.update(i.item_id for i, _ in changed)
        if not changed:
            return 0, len(self.catalogue)
        vectors = item_vectors(self.encoder, [i for i, _ in changed], [t for _, t in changed])
        stamp = now_ms()
        with self.store.write() as txn:
            for (item, text), vector in zip(changed, vectors):
                txn.put_item(ItemRecord(item.item_id, item.title, text, np.asarray(vector, np.float32), stored_attributes(item), stamp))
        for (item, text), vector in zip(changed, vectors):
            self.catalogue.upsert(item.item_id, vector, item.attributes, text)
        return len(changed), len(self.catalogue)

    def apply(self, windows: list[UserWindow[Any]], stamp_ms: int, keys: dict[str, bytes] | None = None) -> Applied:
        """The flush's transaction, then its changelog snapshot, in one job.

        A recommendation's record is keyed, and names its user, by the input records' key:
        ``keys`` maps store ids to it where they differ (pseudonyms, stream.privacy); else
        it is the store id itself, as the events' validation guarantees.
        """
        assert self.processor is not None and self.store is not None
        result = self.processor.flush(windows, stamp_ms)
        records, recommended = [], []
        for rec in result.recommendations:
            recommended.append(rec["user_id"])
            key = (keys.get(rec["user_id"]) if keys else None) or rec["user_id"].encode()
            rec["user_id"] = key.decode()
            records.append((key, orjson.dumps(rec)))
        result.recommendations = []
        return Applied(result, records, recommended, collect(self.store, windows), self.applied_offsets())

    def freeze_heap(self) -> None:
        """``gc.freeze()`` the owner's long-lived objects (see WorkerMetrics.freeze_heap)."""
        gc.freeze()

    def forget_user(self, user_id: str) -> bool:
        assert self.store is not None
        return self.store.forget_user(user_id)

    def applied_offsets(self) -> dict[tuple[str, int], int]:
        assert self.store is not None
        with self.store.read() as txn:
            return txn.get_offsets()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.encoder is not None:
            self.encoder.cache.close()


def on_store(state: StoreState, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(store, *args)``: for functions written against the store alone (stream.changelog)."""
    return fn(state.store, *args)


def detached(windows: list[UserWindow[Any]]) -> list[UserWindow[Any]]:
    """``windows`` without their Faust events, which neither pickle nor matter to the store."""
    return [UserWindow(w.user_id, w.events, [], w.first_window_end_ms) for w in windows]


class StoreOwner:
    """Runs ``fn(state, *args)`` where the worker's :class:`StoreState` lives: a thread or a
    child process (``settings.store.owner``)."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.in_process = settings.store.owner == "process"
        self.state: StoreState | None = None
        self._closed = False
        self._executor: Executor
        if self.in_process:
            # spawn, not fork: the parent holds an event loop, sockets and threads by then.
            self._executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start_child, initargs=(settings, os.getpid()))
        else:
            self.state = StoreState(settings, metrics)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recstream-store")

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Submit ``fn(state, *args)`` now (calls run in the order submitted); await the answer."""
        loop = asyncio.get_running_loop()
        if self.state is not None:
            return loop.run_in_executor(self._executor, fn, self.state, *args)
        answered = loop.run_in_executor(self._executor, _in_child, fn, args)
        out = loop.create_future()

        def unpack(done: asyncio.Future) -> None:
            if out.cancelled():
                return
            if done.cancelled():
                out.cancel()
            elif done.exception() is not None:
                out.set_exception(done.exception())
            else:
                answer, observations = done.result()
                self.metrics.replay(observations)
                out.set_result(answer)

        answered.add_done_callback(unpack)
        return out

    async def aclose(self) -> None:
        """Close the store, then stop the thread or the child; idempotent."""
        if not self._closed:
            self._closed = True
            try:
                await self.call(StoreState.close)
            except Exception:  # noqa: BLE001 - a dead child: nothing to close any more
                log.warning("store owner: closing the store failed", exc_info=True)
            self._executor.shutdown(wait=True)


_STATE: StoreState | None = None  #: the child process's state


def _start_child(settings: Settings, parent_pid: int) -> None:
    global _STATE
    from stream.logs import configure_logging

    _die_with(parent_pid)
    # Ctrl-C reaches the whole process group; the parent's graceful stop still needs the
    # child to flush the open windows, and it stops the child itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level, settings.log_format)
    log.debug("store owner process started")
    _STATE = StoreState(settings, ObservationLog())


def _die_with(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the worker dies, however it dies (Linux):
    an orphan would go on committing flushes nobody acks beside the worker's successor.
    Elsewhere the child ends at its next call, when the closed call queue raises."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the worker died before that took effect
        os._exit(1)


def _in_child(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, list[tuple[Any, ...]]]:
    assert _STATE is not None
    answer = fn(_STATE, *args)
    return answer, _STATE.metrics.take()


def _made_by_another_model(encoder: Any, stored: list[ItemRecord], sample: int = 8) -> bool:
    """True when the stored item vectors are not what ``encoder`` makes of their texts (the
    worker was restarted with another or a re-tuned model): checked on a few items."""
    probe = stored[:: max(1, len(stored) // sample)][:sample]
    if not probe:
        return False
    if any(item.vector.shape != (encoder.dim,) for item in probe):
        return True
    messages = [ItemMessage(item.item_id, item.title, None, {}, split_stored_attributes(item.attributes)[1]) for item in probe]
    fresh = item_vectors(encoder, messages, [item.text for item in probe])
    return not np.allclose(fresh, np.stack([item.vector for item in probe]), atol=1e-4)

