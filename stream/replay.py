"""Backtests: a historical event log through the worker's own Processor, in event time.

Protocols:

* ``leave-last-out``: each user's last event is the test target and the one before it the
  validation target; full ranking over the catalogue, seen items excluded.
* ``prequential``: test-then-train on every event.

Both run as one pass in event-time order, so nothing from the future reaches a profile or
a baseline: an evaluated event is ranked against the state before it, then applied. Events
are applied in chunks (one LMDB transaction each, as the worker's flushes); a chunk is cut
before an evaluated event whose user already appears in it, so the user's state is exact.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from store import LmdbStore
from stream.baselines import Baseline, default_baselines
from stream.catalog import Catalogue
from stream.config import Settings
from stream.events import Event
from stream.metrics import MetricAccumulator, rank_of_targets
from stream.processor import Processor, TextEncoder
from stream.windows import UserWindow

__all__ = ["LeakageError", "Protocol", "history_segment", "run_replay"]

log = logging.getLogger(__name__)

Protocol = Literal["leave-last-out", "prequential"]
MAX_CHUNK = 2000
SEGMENTS = ("cold (<=5)", "6-20", "21-100", ">100")


class LeakageError(RuntimeError):
    """State that includes events later than the one being evaluated: results would lie."""


def history_segment(n_prior: int) -> str:
    """The history-length bucket of a user with ``n_prior`` earlier events."""
    if n_prior <= 5:
        return SEGMENTS[0]
    if n_prior <= 20:
        return SEGMENTS[1]
    return SEGMENTS[2] if n_prior <= 100 else SEGMENTS[3]


def _roles(events: Sequence[Event], protocol: Protocol) -> dict[int, str]:
    if protocol == "prequential":
        return {i: "test" for i in range(len(events))}
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(events):
        by_user[e.user_id].append(i)
    roles: dict[int, str] = {}
    for indices in by_user.values():
        if len(indices) >= 3:
            roles[indices[-1]] = "test"
            roles[indices[-2]] = "valid"
    return roles


class _Evaluation:
    """Ranks, per model and role, plus the segment labels of each test evaluation."""

    def __init__(self, models: list[str], k: int, n_items: int) -> None:
        self.acc = {role: {m: MetricAccumulator(k, n_items) for m in models} for role in ("test", "valid")}
        self.history_seg: list[str] = []
        self.time_seg: list[str] = []

    def result(self) -> tuple[dict, dict, dict]:
        test, valid = self.acc["test"], self.acc["valid"]
        metrics = {m: a.summary() for m, a in test.items()}
        validation = {m: a.summary() for m, a in valid.items()} if any(a.ranks for a in valid.values()) else {}
        segments: dict[str, dict[str, Any]] = {"history": {}, "time": {}}
        for kind, labels in (("history", self.history_seg), ("time", self.time_seg)):
            labels_arr = np.asarray(labels)
            for label in sorted(set(labels), key=lambda s: (SEGMENTS.index(s) if s in SEGMENTS else 0, s)):
                mask = labels_arr == label
                segments[kind][label] = {"n": int(mask.sum()), **{m: a.summary(mask) for m, a in test.items()}}
        return metrics, validation, segments


def run_replay(
    settings: Settings,
    events: Sequence[Event],
    catalogue: Catalogue,
    *,
    protocol: Protocol = "leave-last-out",
    encoder: TextEncoder | None = None,
    baselines: list[Baseline] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replay ``events`` (sorted by event time) and return the metrics report as a dict."""
    started = time.perf_counter()
    k = settings.ranking.k
    n_items = len(catalogue)
    baselines = default_baselines(n_items) if baselines is None else baselines
    models = ["recstream", *(b.name for b in baselines)]
    roles = _roles(events, protocol)
    evaluation = _Evaluation(models, k, n_items)
    seen_rows: dict[str, set[int]] = defaultdict(set)
    prior: dict[str, int] = defaultdict(int)
    skipped = 0
    applied_until = -(2**63)  # newest event time applied to any state so far

    with tempfile.TemporaryDirectory(prefix="recstream-replay-") as tmp:
        store = LmdbStore(Path(tmp) / "store.lmdb", map_size_mb=settings.store.map_size_mb)
        processor = Processor(settings, store, catalogue, encoder)

        def process(chunk: list[int]) -> None:
            nonlocal skipped, applied_until
            evals = []  # (event index, role, target row)
            for i in chunk:
                e = events[i]
                role = roles.get(i)
                row = catalogue.index.get(e.item_id)
                if role is not None:
                    if row is None or row in seen_rows[e.user_id]:
                        skipped += 1
                    else:
                        evals.append((i, role, row))
            if evals:
                users = [events[i].user_id for i, _, _ in evals]
                with store.read() as txn:
                    stored = txn.get_profiles(users)
                    seen = {u: txn.get_seen(u) for u in users}
                profiles = [stored.get(u) or processor.new_profile(u) for u in users]
                scores = processor.score(profiles, seen)
                targets = np.array([row for _, _, row in evals])
                ranks = rank_of_targets(scores, targets)
                top = np.argsort(-scores, axis=1)[:, :k]
                for (i, role, _), rank, row_top in zip(evals, ranks, top):
                    evaluation.acc[role]["recstream"].add(np.array([rank]), row_top)
            eval_rows = {i: (role, row) for i, role, row in evals}
            for i in chunk:  # baselines: exact test-then-train per event
                e = events[i]
                row = catalogue.index.get(e.item_id)
                if i in eval_rows:
                    if applied_until > e.ts_ms:
                        raise LeakageError(
                            f"event {i} (ts {e.ts_ms}) evaluated after applying an event at {applied_until}: "
                            "events must be replayed in event-time order"
                        )
                    role, target = eval_rows[i]
                    for b in baselines:
                        s = np.array(b.scores(e.user_id, e.ts_ms), dtype=np.float64)
                        s[list(seen_rows[e.user_id])] = -np.inf
                        rank = rank_of_targets(s[None, :], np.array([target]))
                        top = np.argpartition(-s, k - 1)[:k] if n_items > k else np.arange(n_items)
                        evaluation.acc[role][b.name].add(rank, top)
                    if role == "test":
                        evaluation.history_seg.append(history_segment(prior[e.user_id]))
                        evaluation.time_seg.append(datetime.fromtimestamp(e.ts_ms / 1000, timezone.utc).strftime("%Y-%m"))
                if row is not None:
                    for b in baselines:
                        b.update(e.user_id, row, e.ts_ms)
                    seen_rows[e.user_id].add(row)
                prior[e.user_id] += 1
                applied_until = max(applied_until, e.ts_ms)
            windows: dict[str, UserWindow[None]] = {}
            for i in chunk:
                e = events[i]
                windows.setdefault(e.user_id, UserWindow(e.user_id)).events.append(e)
            processor.flush(list(windows.values()), now_ms=int(time.time() * 1000), recommend=False)
            if progress is not None:
                progress(len(chunk))

        chunk: list[int] = []
        in_chunk: set[str] = set()
        for i, e in enumerate(events):
            if len(chunk) >= MAX_CHUNK or (i in roles and e.user_id in in_chunk):
                process(chunk)
                chunk, in_chunk = [], set()
            chunk.append(i)
            in_chunk.add(e.user_id)
        if chunk:
            process(chunk)
        store.close()

    metrics, validation, segments = evaluation.result()
    return {
        "protocol": protocol,
        "k": k,
        "users": len(prior),
        "events": len(events),
        "evaluated": len(evaluation.acc["test"]["recstream"].ranks),
        "skipped": skipped,
        "metrics": metrics,
        "validation": validation,
        "segments": segments,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
