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
dense float32 matrix while the catalogue has at most ``max_items`` items (4,096: 64 MB);
past that it is kept sparse (:class:`SparseCounts`: 12 bytes per distinct pair, which the
users' windows bound), with the same counts and the same scores up to float rounding.
Entries whose item is not in the catalogue (a query sent as an event) count in neither.
Not thread-safe: the worker changes and reads it in its store owner only (stream.owner).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from store import HistoryEntry, LmdbStore
from stream.catalog import Catalogue

__all__ = ["HistoryChange", "ItemSignals", "SparseCounts", "blend_signals", "zscore_rows"]

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
        self._sparse: SparseCounts | None = None  # instead of _cooc, past max_items
        self.counts = np.zeros(0, np.float64)
        self.popularity = np.zeros(0, np.float64)  # referenced at self.ref_ms
        self.ref_ms = 0

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
        """(U, N) float32 item-kNN scores of users with these histories (zeros for a user
        with no known item in their window)."""
        self._grow()
        out = np.zeros((len(histories), self.size), np.float32)
        if not self.size:
            return out
        norm = self._norm()
        for u, hist in enumerate(histories):
            rows = self._rows([h.item_id for h in hist[-self.window :]])
            if not len(rows):
                continue
            if self._sparse is None:
                out[u] = (1.0 / norm[rows]) @ self._cooc[rows, : self.size]  # one (W,) x (W, N) product per user
            else:  # the same sum, row by row over the stored pairs
                for row, scale in zip(rows.tolist(), 1.0 / norm[rows]):
                    cols, values = self._sparse.row(row)
                    out[u, cols] += scale * values
        out /= norm
        return out

    def pair_strength(self, recs: np.ndarray, hist: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """(U, k, m) each history item's share of each recommended item's item-kNN score,
        ``weight · C[h, i] / sqrt(n_h n_i)``: what :meth:`cooccurrence_scores` sums.

        :param recs: (U, k) catalogue rows; ``hist``: (U, m) rows, -1 padded;
            ``weight``: (U, m) how often each history item is in the user's window (0 outside).
        """
        self._grow()
        if not self.size:
            return np.zeros((*recs.shape, hist.shape[1]), np.float32)
        norm = self._norm()
        rows = np.maximum(hist, 0)
        if self._sparse is None:
            pair = self._cooc[rows[:, None, :], recs[:, :, None]]  # (U, k, m): C[h, i]
        else:
            pair = np.zeros((*recs.shape, hist.shape[1]), np.float32)
            for u, j in zip(*np.nonzero(hist >= 0)):
                pair[u, :, j] = self._sparse.get(int(hist[u, j]), recs[u])
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
        """The (N, N) co-occurrence counts: a view of the dense matrix, or the sparse counts
        written out (for inspection and tests: N × N floats)."""
        if self._sparse is not None:
            return self._sparse.dense(self.size)
        return self._cooc[: self.size, : self.size]

    @property
    def sparse(self) -> bool:
        return self._sparse is not None

    def _grow(self) -> None:
        """Follow the catalogue's growth: capacity doubles, so items added one by one do not
        copy the matrix each time."""
        n = len(self.catalogue)
        if n == self.size:
            return
        self.counts = np.pad(self.counts, (0, n - self.size))
        self.popularity = np.pad(self.popularity, (0, n - self.size))
        if self._sparse is None and n > self.max_items:
            log.info("catalogue has %d items, over ranking.hybrid.max_items (%d): item co-occurrence kept sparse", n, self.max_items)
            self._sparse = SparseCounts.from_dense(self.cooc)
            self._cooc = np.zeros((0, 0), np.float32)
        if self._sparse is not None:
            self._sparse.grow(n)
        elif n > len(self._cooc):
            capacity = min(self.max_items, max(n, 2 * len(self._cooc)))
            grown = np.zeros((capacity, capacity), np.float32)
            grown[: self.size, : self.size] = self.cooc
            self._cooc = grown
        self.size = n

    def _pairs(self, a: np.ndarray, b: np.ndarray, sign: float) -> None:
        """``C += sign`` for each pair of an ``a`` row with a ``b`` row and of two ``a``
        positions, both ways round; pairs of an item with itself are not counted."""
        if len(a) == 1 and self._sparse is None:  # a flush's usual change: one new item (or one evicted)
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
        if self._sparse is None:
            np.add.at(self._cooc, (rows[keep], cols[keep]), np.float32(sign))
        else:
            self._sparse.add(rows[keep], cols[keep], sign)

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


class SparseCounts:
    """An (N, N) matrix of counts stored by row: sorted column and value arrays per row, and a
    small dict per row of the changes since its last merge.

    A change is a dict update, whether or not its column is stored already: the dict holds
    deltas. The deltas are merged into the arrays when :data:`MERGE_AT` columns have
    collected, or when the row is read. Zeros are dropped at the merge. Values are float32, as
    in the dense matrix; deltas are summed in float64, so counts stay exact.
    """

    MERGE_AT = 32

    def __init__(self) -> None:
        self._cols: list[np.ndarray] = []  # per row: sorted, distinct int64 columns
        self._values: list[np.ndarray] = []  # per row: float32, aligned with _cols
        self._deltas: list[dict[int, float]] = []

    @classmethod
    def from_dense(cls, matrix: np.ndarray) -> "SparseCounts":
        out = cls()
        out.grow(len(matrix))
        for row in np.flatnonzero(matrix.any(axis=1)).tolist():
            cols = np.flatnonzero(matrix[row])
            out._cols[row], out._values[row] = cols, matrix[row, cols].astype(np.float32)
        return out

    def grow(self, n: int) -> None:
        """Rows for a catalogue of ``n`` items (rows are only ever added)."""
        for _ in range(n - len(self._cols)):
            self._cols.append(np.zeros(0, np.int64))
            self._values.append(np.zeros(0, np.float32))
            self._deltas.append({})

    def add(self, rows: np.ndarray, cols: np.ndarray, sign: float) -> None:
        """``C[rows[j], cols[j]] += sign`` for every j (repeated pairs count each time)."""
        deltas = self._deltas
        for row, col in zip(rows.tolist(), cols.tolist()):
            delta = deltas[row]
            delta[col] = delta.get(col, 0.0) + sign
            if len(delta) >= self.MERGE_AT:
                self._merge(row)

    def row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``row``'s (columns, values): columns distinct and sorted, values non-zero."""
        if self._deltas[row]:
            self._merge(row)
        return self._cols[row], self._values[row]

    def get(self, row: int, cols: np.ndarray) -> np.ndarray:
        """``C[row, cols]`` as float32 (0 for pairs never counted)."""
        stored, values = self.row(row)
        out = np.zeros(len(cols), np.float32)
        if len(stored):
            at = np.minimum(np.searchsorted(stored, cols), len(stored) - 1)
            found = stored[at] == cols
            out[found] = values[at[found]]
        return out

    def dense(self, n: int) -> np.ndarray:
        out = np.zeros((n, n), np.float32)
        for row in range(min(n, len(self._cols))):
            cols, values = self.row(row)
            out[row, cols] = values
        return out

    def _merge(self, row: int) -> None:
        delta = self._deltas[row]
        cols = np.concatenate([self._cols[row], np.fromiter(delta.keys(), np.int64, len(delta))])
        values = np.concatenate([self._values[row], np.fromiter(delta.values(), np.float64, len(delta))])
        cols, at = np.unique(cols, return_inverse=True)
        summed = np.bincount(at, weights=values, minlength=len(cols))
        keep = summed != 0
        self._cols[row], self._values[row] = cols[keep], summed[keep].astype(np.float32)
        delta.clear()


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
