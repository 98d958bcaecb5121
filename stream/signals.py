"""Online behavioural item signals for the hybrid ranking: co-occurrence and decayed popularity.

Both are functions of the users' *stored histories* (the newest ``store.history_len`` events
of each profile), kept up to date by applying each committed change of a history as a diff
(:meth:`ItemSignals.replace`). So they are exactly as crash-safe as the histories: a worker
restarted on its LMDB, or given a partition restored from the changelog, ends with the same
signals as one that never stopped (:meth:`ItemSignals.rebuild` recomputes them from a store).

* **co-occurrence** ``C[i, j]``: how many users hold ``i`` and ``j`` together among their
  last ``window`` history items; ``n[i]`` how many such windows hold ``i``. A user's score
  for item ``i`` is ``sum_h C[h, i] / sqrt(n_h n_i)`` over the items ``h`` of the user's own
  window (cosine-normalised item-kNN).
* **popularity**: per item, the history entries holding it, each decayed from its own event
  time with ``half_life_s`` (referenced at the newest event time seen, like the profiles).

Rows are catalogue rows (append-only, so they stay valid as the catalogue grows). ``C`` is a
dense float32 matrix, so co-occurrence is kept only while the catalogue has at most
``max_items`` items (4,096: 64 MB); past that the signal is dropped, with one warning.
Entries whose item is not in the catalogue (a query sent as an event) count in neither.
Not thread-safe: the worker changes and reads it on its store thread only.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from store import HistoryEntry, LmdbStore
from stream.catalog import Catalogue

__all__ = ["HistoryChange", "ItemSignals", "blend_signals", "zscore_rows"]

log = logging.getLogger(__name__)

#: A committed change of one user's stored history: (before, after); [] for none.
HistoryChange = tuple[Sequence[HistoryEntry], Sequence[HistoryEntry]]
#: Re-reference the popularity vector before its terms grow past 2^this.
_MAX_EXPONENT = 60.0


class ItemSignals:
    """Co-occurrence and decayed popularity over the stored histories (see the module doc)."""

    def __init__(self, catalogue: Catalogue, window: int, half_life_s: float, max_items: int = 4096) -> None:
        self.catalogue = catalogue
        self.window = window
        self.half_life_ms = half_life_s * 1000.0
        self.max_items = max_items
        self.reset()

    def reset(self) -> None:
        """Forget everything (the state of a store without histories)."""
        self.size = 0
        self._cooc = np.zeros((0, 0), np.float32)
        self.counts = np.zeros(0, np.float64)
        self.popularity = np.zeros(0, np.float64)  # referenced at self.ref_ms
        self.ref_ms = 0
        self.cooc_enabled = True

    def rebuild(self, store: LmdbStore) -> int:
        """Recompute both signals from every history in ``store``; returns the users read."""
        self.reset()
        users = 0
        with store.read() as txn:
            for _, history in txn.iter_histories():
                self.replace((), history)
                users += 1
        return users

    def apply(self, changes: Iterable[HistoryChange]) -> None:
        """Apply committed history changes (the store's ``on_history_change`` hook)."""
        for before, after in changes:
            self.replace(before, after)

    def replace(self, before: Sequence[HistoryEntry], after: Sequence[HistoryEntry]) -> None:
        """One user's stored history went from ``before`` to ``after``: apply the difference."""
        self._grow()
        added, removed, _ = _difference(before, after)
        self._popularity(added, +1.0)
        self._popularity(removed, -1.0)
        if not self.cooc_enabled:
            return
        w_added, w_removed, kept = _difference(before[-self.window :], after[-self.window :])
        if not w_added and not w_removed:
            return
        rows = self._rows
        kept_rows = rows(e.item_id for e in kept)
        self._pairs(rows(e.item_id for e in w_added), kept_rows, +1.0)
        self._pairs(rows(e.item_id for e in w_removed), kept_rows, -1.0)
        np.add.at(self.counts, rows(e.item_id for e in w_added), 1.0)
        np.add.at(self.counts, rows(e.item_id for e in w_removed), -1.0)

    def cooccurrence_scores(self, histories: Sequence[Sequence[HistoryEntry]]) -> np.ndarray:
        """(U, N) float32 item-kNN scores of users with these histories (zeros when the
        co-occurrence signal is off or a user has no known item in their window)."""
        self._grow()
        out = np.zeros((len(histories), self.size), np.float32)
        if not self.cooc_enabled or not self.size:
            return out
        norm = self._norm()
        for u, hist in enumerate(histories):
            rows = self._rows([h.item_id for h in hist[-self.window :]])
            if len(rows):
                out[u] = (1.0 / norm[rows]) @ self._cooc[rows, : self.size]  # one (W,) x (W, N) product per user
        out /= norm
        return out

    def pair_strength(self, recs: np.ndarray, hist: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """(U, k, m) each history item's share of each recommended item's item-kNN score,
        ``weight · C[h, i] / sqrt(n_h n_i)``: what :meth:`cooccurrence_scores` sums.

        :param recs: (U, k) catalogue rows; ``hist``: (U, m) rows, -1 padded;
            ``weight``: (U, m) how often each history item is in the user's window (0 outside).
        """
        self._grow()
        if not self.cooc_enabled or not self.size:
            return np.zeros((*recs.shape, hist.shape[1]), np.float32)
        norm = self._norm()
        rows = np.maximum(hist, 0)
        pair = self._cooc[rows[:, None, :], recs[:, :, None]]  # (U, k, m): C[h, i]
        return pair * (weight / norm[rows])[:, None, :] / norm[recs][:, :, None]

    def popularity_scores(self) -> np.ndarray:
        """(N,) float32 decayed popularity (up to a common factor, which no ranking sees)."""
        self._grow()
        peak = self.popularity.max(initial=0.0)
        return (self.popularity / peak if peak > 0 else self.popularity).astype(np.float32)

    # -- internals ------------------------------------------------------------------------

    def _norm(self) -> np.ndarray:
        """(N,) float32 ``sqrt(n_i)``, at least 1: item-kNN's cosine normalisation."""
        return np.sqrt(np.maximum(self.counts, 1.0)).astype(np.float32)

    def _rows(self, item_ids: Iterable[str]) -> np.ndarray:
        index = self.catalogue.index
        return np.fromiter((index[i] for i in item_ids if i in index), np.int64)

    @property
    def cooc(self) -> np.ndarray:
        """The (N, N) co-occurrence counts (a view of the allocated matrix)."""
        return self._cooc[: self.size, : self.size]

    def _grow(self) -> None:
        """Follow the catalogue's growth: capacity doubles, so items added one by one do not
        copy the matrix each time."""
        n = len(self.catalogue)
        if n == self.size:
            return
        self.counts = np.pad(self.counts, (0, n - self.size))
        self.popularity = np.pad(self.popularity, (0, n - self.size))
        if self.cooc_enabled and n > self.max_items:
            log.warning("catalogue has %d items, over ranking.hybrid.max_items (%d): item co-occurrence is off", n, self.max_items)
            self.cooc_enabled = False
            self._cooc = np.zeros((0, 0), np.float32)
        elif self.cooc_enabled and n > len(self._cooc):
            capacity = min(self.max_items, max(n, 2 * len(self._cooc)))
            grown = np.zeros((capacity, capacity), np.float32)
            grown[: self.size, : self.size] = self.cooc
            self._cooc = grown
        self.size = n

    def _pairs(self, a: np.ndarray, b: np.ndarray, sign: float) -> None:
        """``C += sign`` for each pair of an ``a`` row with a ``b`` row and of two ``a``
        positions, both ways round; pairs of an item with itself are not counted."""
        if len(a) == 1:  # a flush's usual change: one new item (or one evicted)
            others = b[b != a[0]]
            np.add.at(self._cooc[a[0]], others, np.float32(sign))
            np.add.at(self._cooc[:, a[0]], others, np.float32(sign))
            return
        if not len(a):
            return
        pos = np.arange(len(a))
        inner = np.repeat(pos, len(a)) != np.tile(pos, len(a))  # distinct positions of a
        rows = np.concatenate([np.repeat(a, len(b)), np.tile(b, len(a)), np.repeat(a, len(a))[inner]])
        cols = np.concatenate([np.tile(b, len(a)), np.repeat(a, len(b)), np.tile(a, len(a))[inner]])
        keep = rows != cols
        np.add.at(self._cooc, (rows[keep], cols[keep]), np.float32(sign))

    def _popularity(self, entries: Sequence[HistoryEntry], sign: float) -> None:
        rows, ts = [], []
        index = self.catalogue.index
        for e in entries:
            row = index.get(e.item_id)
            if row is not None:
                rows.append(row)
                ts.append(e.ts_ms)
        if not rows:
            return
        t = np.asarray(ts, np.float64)
        newest = int(t.max())
        if not self.ref_ms:
            self.ref_ms = newest
        elif (newest - self.ref_ms) / self.half_life_ms > _MAX_EXPONENT:  # keep the terms in range
            self.popularity *= np.exp2(-(newest - self.ref_ms) / self.half_life_ms)
            self.ref_ms = newest
        np.add.at(self.popularity, np.asarray(rows), sign * np.exp2((t - self.ref_ms) / self.half_life_ms))
        if sign < 0:
            np.maximum(self.popularity, 0.0, out=self.popularity)


def _difference(before: Sequence[HistoryEntry], after: Sequence[HistoryEntry]) -> tuple[list, list, list]:
    """``(added, removed, kept)`` as multisets of entries: ``after = kept + added``,
    ``before = removed + kept``.

    A flush's usual change slides the history (the oldest entries drop out, the new ones are
    the newest): found by comparing the two lists at each shift. Anything else (a late
    event sorted into the middle, a restore) falls back to counting.
    """
    if not before or not after:
        return list(after), list(before), []
    first = after[0]
    for shift in range(len(before)):
        if before[shift] == first:
            n_kept = len(before) - shift
            if list(before[shift:]) == list(after[:n_kept]):
                return list(after[n_kept:]), list(before[:shift]), list(after[:n_kept])
            break  # the first match decides: entries are distinct enough that this is rare
    old, new = Counter((e.item_id, e.ts_ms, e.kind) for e in before), Counter((e.item_id, e.ts_ms, e.kind) for e in after)
    entries = lambda counts: [HistoryEntry(*key) for key in counts.elements()]  # noqa: E731
    return entries(new - old), entries(old - new), entries(new & old)


def zscore_rows(scores: np.ndarray) -> np.ndarray:
    """Each row standardised to mean 0 and standard deviation 1 (constant rows become 0), float32."""
    scores = np.asarray(scores, np.float32)
    mean = scores.mean(axis=-1, keepdims=True)
    std = scores.std(axis=-1, keepdims=True)
    return np.divide(scores - mean, std, out=np.zeros_like(scores), where=std > 0)


def blend_signals(profile: np.ndarray, cooccurrence: np.ndarray | None, popularity: np.ndarray | None,
                  weights: tuple[float | np.ndarray, float | np.ndarray]) -> np.ndarray:
    """The hybrid score ``z(profile) + a·z(cooccurrence) + b·z(popularity)``, rows standardised
    so each signal counts by its weight whatever its scale; ``popularity`` may be (N,) or (U, N),
    and each weight a number or (N,) per item."""
    out = zscore_rows(profile)
    for weight, signal in zip(weights, (cooccurrence, popularity)):
        if np.any(weight) and signal is not None:
            out += np.asarray(weight, np.float32) * zscore_rows(signal)
    return out
