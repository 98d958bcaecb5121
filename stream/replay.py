"""Backtests: a historical event log through the worker's own Processor, in event time.

Protocols:

* ``leave-last-out``: each user's last event is the test target and the one before it the
  validation target; full ranking over the catalogue, seen items excluded (an item the
  catalogue lists twice is one item: recstream's hit on either entry counts).
* ``prequential``: test-then-train on every event.

Both run as one pass in event-time order, so nothing from the future reaches a profile or
a baseline: an evaluated event is ranked against the state just before it, then applied.
Events are stored in chunks through :meth:`Processor.flush` (one LMDB transaction each, like
the worker's flushes); inside a chunk each user's state is advanced event by event with
:meth:`Processor.fold`, the same maths, so every evaluation sees exactly its prefix.
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

from store import HistoryEntry, LmdbStore
from stream.baselines import Baseline, default_baselines
from stream.catalog import Catalogue
from stream.config import Settings
from stream.events import Event
from stream.metrics import MetricAccumulator, rank_of_targets
from stream.processor import Processor, TextEncoder, with_history
from stream.ranking import iter_blocks
from stream.windows import UserWindow

__all__ = ["LeakageError", "Protocol", "history_segment", "run_replay"]

log = logging.getLogger(__name__)

Protocol = Literal["leave-last-out", "prequential"]
MAX_CHUNK = 2000
SEGMENTS = ("cold (<=5)", "6-20", "21-100", ">100")
#: Item segments of a tuned model: targets seen in tuning, or embedded from their text (and facts) alone.
TUNED, COLD_ITEM = "seen in tuning", "cold item (not seen in tuning)"


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
        self.item_seg: list[str] = []  # tuned models only: was the target item seen in tuning
        self.scores: dict[str, list[float]] = {"target": [], "kth": []}  # recstream, test role

    def result(self) -> tuple[dict, dict, dict]:
        test, valid = self.acc["test"], self.acc["valid"]
        metrics = {m: a.summary() for m, a in test.items()}
        validation = {m: a.summary() for m, a in valid.items()} if any(a.ranks for a in valid.values()) else {}
        kinds = [("history", self.history_seg), ("time", self.time_seg)] + ([("item", self.item_seg)] if self.item_seg else [])
        segments: dict[str, dict[str, Any]] = {kind: {} for kind, _ in kinds}
        for kind, labels in kinds:
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
    keep_ranks: bool = False,
    observe: Callable[[str, str, np.ndarray, int], None] | None = None,
    observe_parts: Callable[[list[str], Callable[[tuple[float, ...]], np.ndarray], np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Replay ``events`` (sorted by event time) and return the metrics report as a dict.

    With ``keep_ranks`` the result also holds ``ranks`` (per model, every test target's
    0-based rank), ``eval_months`` (the month of each test evaluation) and ``scores``
    (recstream's score of each test target and of its K-th best item), for reports.
    ``observe(role, model, scores, target_row)`` sees every evaluation's (N,) scores, seen
    items at -inf, in the same order for every model (recstream's ``target_row`` is the
    entry it ranks of an item the catalogue lists twice).
    ``observe_parts(roles, combine, target_rows)`` sees each scored block of evaluations
    with ``combine(weights)``, its (U, N) scores under other hybrid weights (for
    :mod:`stream.hybrid`'s fit); it also makes the replay keep the signals.

    With the hybrid ranking the item signals follow each user's history event by event, as
    the worker's follow its committed histories, so every evaluation sees exactly the
    signals of its moment.
    """
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
        store = LmdbStore(Path(tmp) / "store.lmdb", map_size_mb=settings.store.map_size_mb, durable=False,
                          vector_dtype=settings.store.vector_dtype)
        processor = Processor(settings, store, catalogue, encoder, keep_signals=observe_parts is not None)
        signals = processor.signals
        histories: dict[str, list[HistoryEntry]] = defaultdict(list)  # as the flush stores them
        history_len = settings.store.history_len
        tuned_items = set(processor.adapter.residual_rows()) if processor.adapter is not None else None
        # recstream ranks one entry of an item the catalogue lists twice (Catalogue.duplicates):
        # a target on the other entry is a hit for that one
        canonical = catalogue.duplicates[0]

        def process(chunk: list[int]) -> None:
            nonlocal skipped, applied_until
            eval_users = {events[i].user_id for i in chunk if i in roles}
            with store.read() as txn:
                stored = txn.get_profiles(eval_users)
            state = {u: stored.get(u) or processor.new_profile(u) for u in eval_users}
            texts = processor.text_vectors(events[i] for i in chunk)  # event texts, as the flush embeds them
            snapshots, excludes, targets, evaluated = [], [], [], []
            cooc_rows, pop_rows = [], []  # the signals at each evaluation's moment
            for i in chunk:  # sequential test-then-train, exact per event
                e = events[i]
                user, role, row = e.user_id, roles.get(i), catalogue.index.get(e.item_id)
                if role is not None:
                    if applied_until > e.ts_ms:
                        raise LeakageError(
                            f"event {i} (ts {e.ts_ms}) evaluated after applying an event at {applied_until}: "
                            "events must be replayed in event-time order"
                        )
                    if row is None or row in seen_rows[user]:
                        skipped += 1
                    else:
                        exclude = np.fromiter(seen_rows[user], np.int64, len(seen_rows[user]))
                        snapshots.append(state[user])
                        excludes.append(exclude)
                        if signals is not None:
                            cooc_rows.append(signals.cooccurrence_scores([histories[user]])[0])
                            pop_rows.append(signals.popularity_scores())
                        targets.append(row)
                        evaluated.append(role)
                        for b in baselines:
                            s = np.array(b.scores(user, e.ts_ms), dtype=np.float64)
                            s[exclude] = -np.inf
                            top = np.argpartition(-s, k - 1)[:k] if n_items > k else np.arange(n_items)
                            evaluation.acc[role][b.name].add(rank_of_targets(s[None, :], np.array([row])), top)
                            if observe is not None:
                                observe(role, b.name, s, row)
                        if role == "test":
                            evaluation.history_seg.append(history_segment(prior[user]))
                            evaluation.time_seg.append(datetime.fromtimestamp(e.ts_ms / 1000, timezone.utc).strftime("%Y-%m"))
                            if tuned_items is not None:
                                evaluation.item_seg.append(TUNED if e.item_id in tuned_items else COLD_ITEM)
                if row is not None:
                    for b in baselines:
                        b.update(user, row, e.ts_ms)
                    seen_rows[user].add(row)
                if signals is not None and processor.embedding(e, texts) is not None:
                    before = histories[user]
                    histories[user] = with_history(before, [HistoryEntry(e.item_id, e.ts_ms, e.kind)], history_len)
                    signals.replace(before, histories[user])
                if user in state:
                    state[user] = processor.fold(state[user], e, texts)
                prior[user] += 1
                applied_until = max(applied_until, e.ts_ms)
            for part in iter_blocks(len(snapshots)):  # the worker's scoring, in its blocks
                moment = None if signals is None else (np.stack(cooc_rows[part]), np.stack(pop_rows[part]))
                block, block_exclude = snapshots[part], excludes[part]
                parts = processor.score_parts(block, moment)
                target_rows = canonical[np.array(targets[part], np.int64)]
                if observe_parts is not None:
                    observe_parts(evaluated[part], lambda w, p=parts, b=block, x=block_exclude: processor.combine(p, b, x, w),
                                  target_rows)
                scores = processor.combine(parts, block, block_exclude)
                ranks = rank_of_targets(scores, target_rows)
                top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if n_items > k else np.tile(np.arange(n_items), (len(ranks), 1))
                target_scores = scores[np.arange(len(target_rows)), target_rows]
                kth_scores = np.take_along_axis(scores, top, axis=1).min(axis=1)
                for j, (role, rank, row_top, ts_, kth) in enumerate(zip(evaluated[part], ranks, top, target_scores, kth_scores)):
                    evaluation.acc[role]["recstream"].add(np.array([rank]), row_top)
                    if observe is not None:
                        observe(role, "recstream", scores[j], int(target_rows[j]))
                    if role == "test":
                        evaluation.scores["target"].append(float(ts_))
                        evaluation.scores["kth"].append(float(kth))
            windows: dict[str, UserWindow[None]] = {}
            for i in chunk:
                e = events[i]
                windows.setdefault(e.user_id, UserWindow(e.user_id)).events.append(e)
            processor.flush(list(windows.values()), now_ms=int(time.time() * 1000), recommend=False)
            if progress is not None:
                progress(len(chunk))

        # each evaluation holds (N,) signal rows until its chunk is scored: bound them
        max_chunk = MAX_CHUNK if signals is None else max(64, min(MAX_CHUNK, 50_000_000 // (8 * max(n_items, 1))))
        chunk: list[int] = []
        for i in range(len(events)):
            if len(chunk) >= max_chunk:
                process(chunk)
                chunk = []
            chunk.append(i)
        if chunk:
            process(chunk)
        store.close()

    metrics, validation, segments = evaluation.result()
    extra = {}
    if keep_ranks:
        extra = {"ranks": {m: a.ranks for m, a in evaluation.acc["test"].items()}, "eval_months": evaluation.time_seg,
                 "scores": evaluation.scores}
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
        **extra,
    }
