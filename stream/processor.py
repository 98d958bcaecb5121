"""One window flush: closed user windows → profiles in one LMDB transaction → top-K.

This is the single scoring path: the Faust worker calls :meth:`Processor.flush` and so does
the replay tool. Commit order, which is what makes a profile count every event exactly once
although Kafka delivers at least once:

1. one LMDB write transaction stores every touched profile together with, per user and input
   partition, the highest offset applied (``ProfileRecord.applied``), plus seen items,
   counters and the partition positions;
2. the transaction commits;
3. only then does the caller send recommendations and ack the Kafka records.

A crash before 2 leaves the records un-acked, so Kafka redelivers them; a crash after 2
redelivers records whose offsets are already in ``applied``, and they are skipped.
Must run on one thread per store (LMDB's single writer): the worker's store owner (stream.owner).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from collections.abc import Iterable
from operator import attrgetter
from typing import Any, Protocol

import numpy as np

from store import HistoryEntry, LmdbStore, ProfileRecord, event_id_hash
from stream.catalog import Catalogue
from stream.config import EVENT_KINDS, Settings
from stream.events import Event
from stream.profile import apply_events, apply_one_each
from stream.ranking import blend_queries, exclude_rows, explain_positions, iter_blocks, score, top_k
from stream.rerank import excluded_rows, freshness, mmr, published_ms
from stream.signals import ItemSignals, blend_signals
from stream.windows import UserWindow

__all__ = ["FlushResult", "Processor", "ScoreParts", "TextEncoder", "with_history"]

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(slots=True)
class FlushResult:
    """What a flush did; ``rejected`` events go to the dead-letter topic with their reason."""

    recommendations: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[Event, str]] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    users: int = 0


@dataclass(slots=True)
class ScoreParts:
    """What a block of users' scores are made of, before exclusions and business rules:
    (U, N) profile scores and, with the hybrid ranking, (U, N) item-kNN and (N,) or (U, N)
    popularity scores (None when not kept)."""

    profile: np.ndarray
    cooccurrence: np.ndarray | None = None
    popularity: np.ndarray | None = None


class Processor:
    """Applies windows to profiles and ranks the catalogue for the users they touched.

    With ``ranking.hybrid`` weights (or ``keep_signals``) it owns :class:`ItemSignals`;
    whoever owns the store keeps them in step with the stored histories (the worker through
    the store's ``on_history_change``, replay event by event).
    """

    def __init__(
        self, settings: Settings, store: LmdbStore, catalogue: Catalogue, encoder: TextEncoder | None = None,
        keep_signals: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalogue = catalogue
        self.encoder = encoder
        #: A tuned model (``recstream encoders tune``) brings the horizons, kind weights and
        #: query it was trained with; they replace ``profile.*`` and ``ranking.blend``.
        self.adapter = getattr(encoder, "adapter", None)
        if self.adapter is not None:
            self.horizons = [str(h) for h in self.adapter.horizons]
            self.half_lives_ms = np.asarray(self.adapter.half_lives_s, np.float64) * 1000.0
            self.kind_weights = np.asarray(self.adapter.kind_weights, np.float64)
        else:
            self.horizons = list(settings.profile.half_lives_s)
            self.half_lives_ms = np.array([settings.profile.half_lives_s[h] * 1000.0 for h in self.horizons])
            self.blend = np.array([settings.ranking.blend.get(h, 0.0) for h in self.horizons])
            self.kind_weights = np.array([settings.profile.kind_weights[k] for k in EVENT_KINDS])
        #: (catalogue version, excluded rows, publication times) for :meth:`_business_rules`.
        self._rule_columns: tuple[int, np.ndarray, np.ndarray] = (-1, np.zeros(0, bool), np.zeros(0))
        lateness = settings.windows.allowed_lateness_s
        self.lateness_ms = None if lateness is None else int(lateness * 1000)
        hybrid = settings.ranking.hybrid
        # the cold weights concern items a tuned model never saw: an untuned model has none
        self.hybrid_weights = hybrid.weights if self.adapter is not None else (*hybrid.weights[:2], 0.0, 0.0)
        self.signals = (ItemSignals(catalogue, hybrid.window, hybrid.popularity_half_life_s, hybrid.max_items)
                        if any(self.hybrid_weights) or keep_signals else None)
        self._cold_columns: tuple[int, np.ndarray] = (-1, np.zeros(0, np.float32))  # for _cold_items

    def follow_store(self) -> None:
        """Keep the hybrid's signals in step with every history the store commits (the
        worker; replay advances them itself, event by event). Call :meth:`ItemSignals.rebuild`
        for the histories already stored."""
        if self.signals is not None:
            self.store.on_history_change = self.signals.apply

    def new_profile(self, user_id: str) -> ProfileRecord:
        return ProfileRecord(
            user_id=user_id,
            vectors=np.zeros((len(self.horizons), self.catalogue.dim), np.float32),
            weights=np.zeros(len(self.horizons), np.float64),
            last_ts_ms=0,
            event_count=0,
            version=0,
            applied={},
            history=[],
            kind_counts=[0] * len(EVENT_KINDS),
            updated_ms=0,
        )

    def conform(self, rec: ProfileRecord) -> ProfileRecord:
        """``rec`` in this model's shape: a profile stored under another model (other
        dimension or horizons) is rebuilt from its bounded history with this model's vectors."""
        shape = (len(self.horizons), self.catalogue.dim)
        if rec.vectors.shape == shape:
            return rec
        known = [h for h in rec.history if h.item_id in self.catalogue]
        # referenced at the record's own time (or its newest known event, if later)
        vectors, weights, last = apply_events(
            np.zeros(shape, np.float32), np.zeros(shape[0]), rec.last_ts_ms,
            self.catalogue.matrix[self.catalogue.indices([h.item_id for h in known])],
            self.kind_weights[[h.kind for h in known]], np.array([h.ts_ms for h in known], np.int64), self.half_lives_ms,
        )
        log.info("profile of %s rebuilt from %d history items for the current model", rec.user_id, len(known))
        return replace(rec, vectors=vectors, weights=weights, last_ts_ms=last)

    def embedding(self, event: Event, text_vectors: dict[str, np.ndarray]) -> np.ndarray | None:
        """The vector an event contributes, None if it has none (rejected).

        A known item's vector, mixed with the event's own text (a review, the query that led
        to it) at ``profile.event_text_weight``; an unknown item's text alone (a search query
        sent as an event with an item id of its own); else None.
        """
        row = self.catalogue.index.get(event.item_id)
        text = text_vectors.get(event.text) if event.text else None
        if row is not None:
            item = self.catalogue.matrix[row]
            alpha = self.settings.profile.event_text_weight
            return item if text is None or not alpha else (1.0 - alpha) * item + alpha * text
        return text

    def fold(self, rec: ProfileRecord, event: Event, text_vectors: dict[str, np.ndarray] | None = None) -> ProfileRecord:
        """A copy of ``rec`` with one event applied (what a flush would store); events with
        text need ``text_vectors`` from :meth:`text_vectors`, as in the flush.

        Replay uses it to rank each event against the exact state just before it.
        """
        vector = self.embedding(event, text_vectors or {})
        if vector is None:
            return rec
        vectors, weights, last = apply_events(
            rec.vectors, rec.weights, rec.last_ts_ms, vector[None, :],
            self.kind_weights[event.kind : event.kind + 1], np.array([event.ts_ms], np.int64), self.half_lives_ms,
        )
        history = rec.history
        if self.adapter is not None:  # the query reads the most recent items by position
            history = with_history(history, [HistoryEntry(event.item_id, event.ts_ms, event.kind)],
                                    self.settings.store.history_len)
        return replace(rec, vectors=vectors, weights=weights, last_ts_ms=last, history=history)

    def text_vectors(self, events: Iterable[Event]) -> dict[str, np.ndarray]:
        """Embed the texts :meth:`embedding` will use among ``events``: one encoder call."""
        with_items = self.settings.profile.event_text_weight > 0
        texts = sorted({e.text for e in events if e.text and (with_items or e.item_id not in self.catalogue)})
        if not texts or self.encoder is None:
            return {}
        return dict(zip(texts, self.encoder.encode(texts)))

    def flush(self, windows: list[UserWindow[Any]], now_ms: int, recommend: bool = True) -> FlushResult:
        """Apply ``windows`` in one transaction; rank for the users it changed if ``recommend``."""
        result = FlushResult()
        if not windows:
            return result
        text_vectors = self.text_vectors(e for w in windows for e in w.events)
        history_len = self.settings.store.history_len
        dedupe_ids = self.settings.store.dedupe_ids
        updated: list[ProfileRecord] = []
        seen: dict[str, set[str]] = {}
        kinds: Counter[str] = Counter()
        positions: dict[str, int] = {}

        with self.store.write() as txn:
            profiles = txn.get_profiles([w.user_id for w in windows])
            pending: list[_Pending] = []  # users with new events, profile maths still to do
            pending_users: set[str] = set()

            def settle() -> None:
                """Apply the pending users' events (batched) and stage their records."""
                self._apply_pending(pending)
                for rec, _, _, _, items in pending:
                    previous = rec.history  # what the store holds: put_profile needs no read-back
                    if items:
                        rec.history = with_history(rec.history, [HistoryEntry(e.item_id, e.ts_ms, e.kind) for e in items], history_len)
                        for e in items:
                            rec.kind_counts[e.kind] += 1
                            kinds[EVENT_KINDS[e.kind]] += 1
                        rec.event_count += len(items)
                        rec.version += 1
                        txn.add_seen(rec.user_id, {e.item_id for e in items})
                    rec.updated_ms = now_ms
                    txn.put_profile(rec, previous)
                    if items:
                        updated.append(rec)
                        if recommend and self.settings.ranking.exclude_seen:
                            seen[rec.user_id] = txn.get_seen(rec.user_id)
                    result.applied += len(items)
                pending.clear()
                pending_users.clear()

            for window in windows:
                if window.user_id in pending_users:
                    settle()  # the same user twice in one flush: apply the first window first
                rec = profiles.get(window.user_id) or self.new_profile(window.user_id)
                rec = self.conform(rec)
                applied = dict(rec.applied)
                recent = list(rec.recent_ids)  # event-id dedupe: hashes of the last ids applied
                vectors, weights, ts, items = [], [], [], []
                for event in sorted(window.events, key=_SOURCE_OFFSET):
                    positions[event.source] = max(positions.get(event.source, -1), event.offset)
                    if event.offset <= applied.get(event.source, -1):
                        result.duplicates += 1
                        continue
                    applied[event.source] = event.offset
                    id_hash = event_id_hash(event.event_id) if dedupe_ids and event.event_id else None
                    if id_hash is not None and id_hash in recent:  # a producer retry: DLQ, with the reason
                        result.rejected.append((event, f"duplicate event_id {event.event_id[:40]!r}"))
                        continue
                    if self.lateness_ms is not None and rec.last_ts_ms and event.ts_ms < rec.last_ts_ms - self.lateness_ms:
                        late_s = (rec.last_ts_ms - event.ts_ms) / 1000
                        result.rejected.append((event, f"late event: {late_s:.0f} s older than the user's newest"))
                        continue
                    vector = self.embedding(event, text_vectors)
                    if vector is None:
                        result.rejected.append((event, f"unknown item {event.item_id!r} and no text to encode"))
                        continue
                    if id_hash is not None:
                        recent.append(id_hash)
                    vectors.append(vector)
                    weights.append(self.kind_weights[event.kind])
                    ts.append(event.ts_ms)
                    items.append(event)
                if applied == rec.applied:
                    continue  # nothing new for this user (all duplicates)
                rec.applied = applied
                rec.recent_ids = recent[-dedupe_ids:] if dedupe_ids else []
                profiles[rec.user_id] = rec
                pending.append((rec, vectors, weights, ts, items))
                pending_users.add(rec.user_id)
            settle()
            # the highest offset yet: a flush of some users' windows may end below the last one's
            stored = txn.get_offsets() if positions else {}
            for source, offset in positions.items():
                topic, partition = source.rsplit(":", 1)
                if offset > stored.get((topic, int(partition)), -1):
                    txn.put_offset(topic, int(partition), offset)
            for kind, n in kinds.items():
                txn.incr(f"events.{kind}", n)
            if result.duplicates:
                txn.incr("events.duplicates_skipped", result.duplicates)
        result.users = len(updated)
        if recommend:
            result.recommendations = self.recommend(updated, seen)
        return result

    def _apply_pending(self, pending: list[_Pending]) -> None:
        """Fold each pending user's new events into its profile, in place: one batched
        :func:`apply_one_each` for the users with exactly one event, :func:`apply_events`
        per user for the others (same results either way, see apply_one_each)."""
        single = [p for p in pending if len(p[4]) == 1]
        if single:
            vectors, weights, last = apply_one_each(
                np.stack([rec.vectors for rec, *_ in single]), np.stack([rec.weights for rec, *_ in single]),
                np.array([rec.last_ts_ms for rec, *_ in single], np.int64), np.vstack([v[0] for _, v, *_ in single]),
                np.array([w[0] for _, _, w, _, _ in single], np.float64), np.array([t[0] for *_, t, _ in single], np.int64),
                self.half_lives_ms,
            )
            for (rec, *_), v, w, t in zip(single, vectors, weights, last.tolist()):
                rec.vectors, rec.weights, rec.last_ts_ms = v, w, t
        for rec, vectors, weights, ts, items in pending:
            if len(items) > 1:
                rec.vectors, rec.weights, rec.last_ts_ms = apply_events(
                    rec.vectors, rec.weights, rec.last_ts_ms,
                    np.vstack(vectors), np.asarray(weights), np.asarray(ts, np.int64), self.half_lives_ms,
                )

    def score_rows(self, profiles: list[ProfileRecord], exclude: list[np.ndarray]) -> np.ndarray:
        """(U, N) scores over catalogue rows, the ``exclude`` rows (seen items) at -inf.

        The one scoring function: the worker takes its top-K (:meth:`top_rows`); replay, which
        needs the signals of each evaluation's moment, calls its two steps, :meth:`score_parts`
        and :meth:`combine`, itself.
        """
        if self.signals is None or not any(self.hybrid_weights):  # the profile alone, without a copy
            return self._business_rules(profiles, score(self.queries(profiles), self.catalogue.matrix, self._seen(exclude)))
        return self.combine(self.score_parts(profiles), profiles, exclude)

    def score_parts(self, profiles: list[ProfileRecord], signals: tuple[np.ndarray, np.ndarray] | None = None) -> ScoreParts:
        """The unmasked parts :meth:`combine` blends: profile scores and the kept signals
        (``signals``: item-kNN and popularity scores to use instead of the current ones)."""
        parts = ScoreParts(score(self.queries(profiles), self.catalogue.matrix, []))
        if self.signals is not None:
            if signals is None:
                signals = (self.signals.cooccurrence_scores([p.history for p in profiles]), self.signals.popularity_scores())
            parts.cooccurrence, parts.popularity = signals
        return parts

    def combine(self, parts: ScoreParts, profiles: list[ProfileRecord], exclude: list[np.ndarray],
                weights: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """``parts`` blended with ``weights`` (default ``ranking.hybrid.weights``; all 0: the
        profile alone, unstandardised), ``exclude`` at -inf, then the business rules."""
        weights = self.hybrid_weights if weights is None else weights
        scores = parts.profile.copy()
        if any(weights):
            scores = blend_signals(scores, parts.cooccurrence, parts.popularity, self._item_weights(weights))
        return self._business_rules(profiles, exclude_rows(scores, self._seen(exclude)))

    def _seen(self, exclude: list[np.ndarray]) -> list[np.ndarray]:
        """``exclude`` with each row replaced by its catalogue original (Catalogue.duplicates):
        a user who saw an item's repeat has seen the item; the repeats themselves are always
        masked, by :meth:`_business_rules`."""
        canonical, repeats = self.catalogue.duplicates
        if not len(repeats):
            return exclude
        return [canonical[np.asarray(rows, np.int64)] for rows in exclude]

    def _item_weights(self, weights: tuple[float, float, float, float]) -> tuple[float | np.ndarray, float | np.ndarray]:
        """The (co-occurrence, popularity) weights, per item where the cold weights apply."""
        cooc, pop, cold_cooc, cold_pop = weights
        cold = self._cold_items()
        if cold is None or not (cold_cooc or cold_pop):
            return cooc, pop
        return cooc + cold_cooc * cold, pop + cold_pop * cold

    def _cold_items(self) -> np.ndarray | None:
        """(N,) 1.0 for the items the tuned model never saw in tuning, else 0; None untuned."""
        if self.adapter is None:
            return None
        if self._cold_columns[0] != self.catalogue.version:
            tuned = self.adapter.residual_rows()
            cold = np.array([item_id not in tuned for item_id in self.catalogue.ids], np.float32)
            self._cold_columns = (self.catalogue.version, cold)
        return self._cold_columns[1]

    def _business_rules(self, profiles: list[ProfileRecord], scores: np.ndarray) -> np.ndarray:
        """Repeated catalogue items (Catalogue.duplicates) and ``ranking.exclude`` at -inf;
        ``ranking.fresh_boost`` added, at each user's last event time."""
        repeats = self.catalogue.duplicates[1]
        if len(repeats):
            scores[:, repeats] = -np.inf
        r = self.settings.ranking
        if not r.exclude and not r.fresh_boost:
            return scores
        if self._rule_columns[0] != self.catalogue.version:
            attrs = self.catalogue.attributes
            published = np.array([published_ms(a.get(r.fresh_attribute)) for a in attrs], np.float64)
            self._rule_columns = (self.catalogue.version, excluded_rows(attrs, r.exclude), published)
        _, banned, published = self._rule_columns
        if banned.any():
            scores[:, banned] = -np.inf
        if r.fresh_boost:
            now = np.array([p.last_ts_ms for p in profiles], np.float64)
            scores += np.float32(r.fresh_boost) * freshness(published, now, r.fresh_half_life_s)
        return scores

    def top_rows(self, profiles: list[ProfileRecord], seen: dict[str, set[str]],
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(U, k) best catalogue rows and scores: :meth:`score_rows` in blocks of users, so
        a flush holds at most ``ranking.BLOCK_USERS`` × N scores whatever its size. With
        ``ranking.diversity`` the best ``diversity_pool`` are re-ordered by MMR first.

        The third value, with the hybrid's co-occurrence, is each user's (U,) scale of an
        item-kNN share beside a similarity in ``because`` (:meth:`_because`); else None.
        """
        exclude = [self.catalogue.indices(seen.get(p.user_id, set())) for p in profiles]
        diversity = self.settings.ranking.diversity
        pool = max(k, self.settings.ranking.diversity_pool) if diversity else k
        cooc_weight = self._item_weights(self.hybrid_weights)[0]
        explained = bool(np.any(cooc_weight)) and self.signals is not None
        parts, scales = [], []
        for b in iter_blocks(len(profiles)):
            if explained:
                block_parts = self.score_parts(profiles[b])
                block_scores = self.combine(block_parts, profiles[b], exclude[b])
                scales.append(self._share_scale(block_parts))
            else:
                block_scores = self.score_rows(profiles[b], exclude[b])
            rows, scores = top_k(block_scores, pool)
            parts.append(mmr(rows, scores, self.catalogue.matrix, k, diversity) if diversity else (rows, scores))
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate(scales) if scales else None)

    def _share_scale(self, parts: ScoreParts) -> np.ndarray:
        """(U,) ``σ_p / σ_c``: the blend standardises the profile's scores by their spread σ_p
        and item-kNN's by σ_c, so an item-kNN share ``c`` of an item with co-occurrence weight
        ``w`` weighs as much as a similarity of ``w · σ_p / σ_c · c`` (0 where item-kNN is flat)."""
        sigma_p, sigma_c = parts.profile.std(axis=1), parts.cooccurrence.std(axis=1)
        return np.divide(sigma_p, sigma_c, out=np.zeros_like(sigma_p), where=sigma_c > 0)

    def queries(self, profiles: list[ProfileRecord]) -> np.ndarray:
        """(U, D) query vectors: the blend of unit horizons, or a tuned model's query MLP."""
        vectors = np.stack([p.vectors for p in profiles])
        if self.adapter is None:
            return blend_queries(vectors, self.blend)
        n_recent = self.adapter.recent_items
        rows = np.full((len(profiles), n_recent), -1, np.int64)
        index = self.catalogue.index
        for u, p in enumerate(profiles):
            recent = [index[h.item_id] for h in reversed(p.history) if h.item_id in index][:n_recent]
            rows[u, : len(recent)] = recent
        mask = rows >= 0
        recent_vectors = self.catalogue.matrix[np.maximum(rows, 0)] * mask[..., None]
        return self.adapter.query(vectors, recent_vectors, mask)

    def recommend(self, profiles: list[ProfileRecord], seen: dict[str, set[str]]) -> list[dict[str, Any]]:
        """Top-K with ``because`` items for each profile; one matrix product per block of users.

        Ids, scores and ``because`` lists come out of whole-block arrays (one ``tolist``
        each); only the records themselves are built per user.
        """
        if not profiles or len(self.catalogue) == 0:
            return []
        best, scores, scales = self.top_rows(profiles, seen, self.settings.ranking.k)
        item_ids = np.asarray(self.catalogue.ids, dtype=object)
        rounded = _round6(scores)
        out = []
        for b in iter_blocks(len(profiles)):
            block, rows = profiles[b], best[b]
            kept = (rows >= 0).sum(axis=1).tolist()  # -1 (nothing left to rank) only trails
            because = self._because(block, rows, item_ids, None if scales is None else scales[b])
            for p, n, ids, row_scores, why in zip(block, kept, item_ids[np.maximum(rows, 0)].tolist(), rounded[b].tolist(), because):
                out.append(
                    {
                        "user_id": p.user_id,
                        "ts": p.last_ts_ms,
                        "items": [{"item_id": i, "score": s, "because": w} for i, s, w in zip(ids[:n], row_scores, why)],
                        "event_count": p.event_count,
                        "profile_version": p.version,
                    }
                )
        return out

    def _because(self, block: list[ProfileRecord], rows: np.ndarray, item_ids: np.ndarray,
                 scale: np.ndarray | None = None) -> list[list[list[str]]]:
        """Per user and recommended row, the ids of the ``ranking.because`` most similar
        distinct history items (newest first on ties), as :func:`stream.ranking.explain` picks
        them; with the hybrid's co-occurrence (``scale``, from :meth:`top_rows`), similarity
        plus ``scale`` × each item's share of the item-kNN score, so the items that drove a
        recommendation are named."""
        index = self.catalogue.index
        histories = [[i for i in dict.fromkeys([h.item_id for h in reversed(p.history)]) if i in index] for p in block]
        canonical, repeats = self.catalogue.duplicates
        if len(repeats):  # one name per item, not one per catalogue entry of it
            histories = [_first_per_item(h, index, canonical) for h in histories]
        m = max(map(len, histories), default=0)
        n = min(self.settings.ranking.because, m)
        if n <= 0 or rows.shape[1] == 0:
            return [[[] for _ in range(rows.shape[1])] for _ in block]
        hist = np.full((len(block), m), -1, np.int64)
        for u, h in enumerate(histories):
            hist[u, : len(h)] = [index[i] for i in h]
        recs = np.maximum(rows, 0)
        positions = explain_positions(self.catalogue.matrix, recs, hist, n,
                                      self._cooccurrence_share(block, recs, hist, histories, scale))
        names = item_ids[np.maximum(hist, 0)]  # padding positions only sort after every real one
        because = names[np.arange(len(block))[:, None, None], positions].tolist()
        return [why if len(h) >= n else [w[: len(h)] for w in why] for why, h in zip(because, histories)]


    def _cooccurrence_share(self, block: list[ProfileRecord], recs: np.ndarray, hist: np.ndarray,
                            histories: list[list[str]], scale: np.ndarray | None) -> np.ndarray | None:
        """(U, k, m) ``scale`` × the recommended item's co-occurrence weight × each history
        item's item-kNN share of it (its count in the user's co-occurrence window weighs it);
        None without a scale."""
        if scale is None or self.signals is None:
            return None
        weight = np.broadcast_to(np.asarray(self._item_weights(self.hybrid_weights)[0], np.float32), (len(self.catalogue),))
        in_window = np.zeros(hist.shape, np.float32)
        for u, (p, names) in enumerate(zip(block, histories)):
            counts = Counter(h.item_id for h in p.history[-self.signals.window :])
            in_window[u, : len(names)] = [counts.get(name, 0) for name in names]
        share = self.signals.pair_strength(recs, hist, in_window)
        return (scale[:, None, None] * weight[recs][:, :, None] * share).astype(np.float32)


def _round6(scores: np.ndarray) -> np.ndarray:
    """``round(s, 6)`` of every score, as float64 (what the JSON record shows).

    For float32 scores ``s * 1e6`` is exact in float64 (24 + 14 significant bits), so
    numpy's ``rint(s * 1e6) / 1e6`` rounds the same exact value half-to-even as Python's
    ``round`` does and divides correctly: bit-identical, without a Python call per score.
    """
    if scores.dtype == np.float32:
        return np.round(scores.astype(np.float64), 6)
    return np.array([[round(s, 6) for s in row] for row in scores.tolist()], np.float64).reshape(scores.shape)


#: A window's events in input order: partition, then offset.
_SOURCE_OFFSET = attrgetter("source", "offset")

#: A user with new events in a flush: (record, embeddings, event weights, event times, events).
_Pending = tuple[ProfileRecord, list[np.ndarray], list[float], list[int], list[Event]]


def with_history(history: list[HistoryEntry], new: list[HistoryEntry], limit: int) -> list[HistoryEntry]:
    """The newest ``limit`` entries of ``history + new`` in event-time order (stable for ties)."""
    return sorted(history + new, key=lambda h: h.ts_ms)[-limit:]


def _first_per_item(ids: list[str], index: dict[str, int], canonical: np.ndarray) -> list[str]:
    """``ids`` (known to the catalogue) without those whose catalogue original came earlier."""
    taken: set[int] = set()
    out = []
    for item_id in ids:
        row = int(canonical[index[item_id]])
        if row not in taken:
            taken.add(row)
            out.append(item_id)
    return out
