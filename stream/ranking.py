"""Top-K ranking over the catalogue and the ``because`` explanations: pure numpy.

The blended score of item ``e`` is ``sum_h beta_h cos(P_h, e)``. Item embeddings are unit
vectors, so that equals ``q . e`` with ``q = sum_h beta_h P_h/|P_h|``: one query vector per
user and one matrix product per block of users, whatever the number of horizons.

Memory is bounded by scoring users in blocks (:func:`iter_blocks`, ``BLOCK_USERS`` rows of
``N`` float32 scores at a time), never all users × all items at once. Top-K order is
deterministic: score descending, then catalogue row ascending, so any blocking of the users
gives the same result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from stream.profile import normalised

__all__ = ["BLOCK_USERS", "blend_queries", "exclude_rows", "explain", "explain_positions", "iter_blocks", "score", "top_k"]

#: Users scored per matrix product: 256 × 100,000 items × 4 B = 100 MB of scores at most.
BLOCK_USERS = 256
#: Below this many items an exact k-th value threshold is cheap; above, block maxima bound it.
_EXACT_BELOW = 8192


def blend_queries(profile_vectors: np.ndarray, blend: np.ndarray) -> np.ndarray:
    """(U, H, D) decayed sums and (H,) blend weights → (U, D) query vectors.

    Horizons with an empty profile drop out and the remaining weights are renormalised, so
    a user with any history always gets a query of the same scale.
    """
    dirs = normalised(profile_vectors)  # (U, H, D)
    present = np.linalg.norm(dirs, axis=-1) > 0  # (U, H)
    beta = np.where(present, blend[None, :], 0.0)
    total = beta.sum(axis=1, keepdims=True)
    beta = np.divide(beta, total, out=np.zeros_like(beta), where=total > 0)
    return np.einsum("uh,uhd->ud", beta, dirs).astype(np.float32)


def score(queries: np.ndarray, items: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """(U, N) float32 blended scores; excluded item indices (seen items, per user) get -inf.

    :param queries: (U, D) float32 from :func:`blend_queries`.
    :param items: (N, D) float32 unit rows (C-contiguous: ``queries @ items.T`` is one sgemm).
    """
    return exclude_rows(np.asarray(queries, np.float32) @ items.T, exclude)


def exclude_rows(scores: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """``scores`` with row ``u``'s ``exclude[u]`` columns set to -inf, in place; returns it."""
    lengths = [len(idx) for idx in exclude]
    if sum(lengths):  # one scatter for the whole block, no per-row Python
        rows = np.repeat(np.arange(len(lengths)), lengths)
        scores[rows, np.concatenate([np.asarray(idx, np.int64) for idx in exclude])] = -np.inf
    return scores


def iter_blocks(n: int, block: int = BLOCK_USERS) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``block`` rows: the unit of scoring memory."""
    for start in range(0, n, block):
        yield slice(start, min(n, start + block))


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns per row of ``scores``, best first (ties: lower column first).

    Large catalogues: the row is cut into ~1,024 column blocks; the k-th largest block maximum
    is a threshold no larger than the k-th best score (the k best blocks each hold a distinct
    item at least that good), and only blocks whose maximum reaches it can hold candidates.
    Those few blocks are gathered and filtered, then the few dozen candidates sorted: one
    pass over ``scores`` (the maxima) instead of a full argpartition or a full comparison.

    :returns: ``(indices, scores)``, each (U, k') with ``k' = min(k, N)``; a slot only an
        excluded item (-inf) could fill has index -1.
    """
    n_rows, n_items = scores.shape
    if n_items == 0 or n_rows == 0:
        return np.empty((n_rows, 0), np.int64), np.empty((n_rows, 0), scores.dtype)
    k = min(k, n_items)
    n_blocks = min(1024, n_items // 8)
    if n_items < _EXACT_BELOW or n_blocks < 4 * k:
        threshold = np.partition(scores, n_items - k, axis=1)[:, n_items - k]
        rows, cols = np.nonzero(scores >= threshold[:, None])
    else:
        rows, cols = _block_candidates(scores, k, n_blocks)
    # every row has >= k candidates: threshold <= its k-th best (-inf >= -inf counts)
    values = scores[rows, cols]
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    first = np.searchsorted(rows, np.arange(n_rows))
    keep = np.arange(len(rows)) - first[rows] < k
    best = cols[keep].reshape(n_rows, k)
    best_scores = values[keep].reshape(n_rows, k)
    return np.where(np.isneginf(best_scores), -1, best), best_scores


def _block_candidates(scores: np.ndarray, k: int, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every score >= its row's threshold (the k-th largest block maximum)."""
    n_rows, n_items = scores.shape
    width = -(-n_items // n_blocks)
    maxima = np.maximum.reduceat(scores, np.arange(0, n_items, width), axis=1)
    n_kept = maxima.shape[1]
    threshold = np.partition(maxima, n_kept - k, axis=1)[:, n_kept - k]
    block_rows, blocks = np.nonzero(maxima >= threshold[:, None])
    cols = blocks[:, None] * width + np.arange(width)
    rows = np.broadcast_to(block_rows[:, None], cols.shape)
    inside = cols < n_items  # the last block may be short
    rows, cols = rows[inside], cols[inside]
    hit = scores[rows, cols] >= threshold[rows]
    return rows[hit], cols[hit]


def explain(
    rec_vectors: np.ndarray, history_vectors: np.ndarray, history_ids: Sequence[str], n: int
) -> list[list[str]]:
    """For each recommended item, the ``n`` history items most similar to it.

    :param rec_vectors: (k, D) embeddings of the recommended items.
    :param history_vectors: (m, D) embeddings of the user's recent items (distinct ids).
    """
    if n <= 0 or len(history_ids) == 0 or rec_vectors.shape[0] == 0:
        return [[] for _ in range(rec_vectors.shape[0])]
    sims = rec_vectors @ history_vectors.T  # (k, m)
    n = min(n, len(history_ids))
    best = np.argsort(-sims, axis=1, kind="stable")[:, :n]
    return [[history_ids[j] for j in row] for row in best]


def explain_positions(matrix: np.ndarray, recs: np.ndarray, hist: np.ndarray, n: int,
                      extra: np.ndarray | None = None) -> np.ndarray:
    """(U, k, n) positions into each row of ``hist`` of the ``n`` history items most similar
    to each of ``recs``, best first (ties: earlier position), padding (-1 rows) last.

    :param recs: (U, k) catalogue rows of the recommended items (any valid row as padding).
    :param hist: (U, m) catalogue rows of the users' distinct history items, -1 padded; n <= m.
    :param extra: (U, k, m) added to the similarities (the hybrid's co-occurrence share).
    """
    sims = matrix[recs] @ matrix[np.maximum(hist, 0)].transpose(0, 2, 1)  # (U, k, m)
    if extra is not None:
        sims += extra
    padding = hist < 0
    sims[np.broadcast_to(padding[:, None, :], sims.shape)] = -np.inf  # padding sorts last
    if n > _ARGMAX_UP_TO:
        return np.argsort(-sims, axis=2, kind="stable")[:, :, :n]
    return _best_positions(sims, padding, n)


#: Up to this many explanations per item, ``n`` passes of argmax beat a full sort of ``m``.
_ARGMAX_UP_TO = 8


def _best_positions(sims: np.ndarray, padding: np.ndarray, n: int) -> np.ndarray:
    """What ``argsort(-sims, stable)[..., :n]`` gives, by ``n`` argmax passes (argmax takes the
    first of equal maxima: the stable order). ``sims`` is consumed: each pass's pick is set to
    -inf. Slots past a user's real items take its padding positions in order, as the sort does."""
    u, k, m = sims.shape
    out = np.empty((u, k, n), np.int64)
    real = m - padding.sum(axis=1)  # (U,) real items per user
    pad_order = np.argsort(~padding, axis=1, kind="stable")  # each row's padding positions first, in order
    for j in range(n):
        best = sims.argmax(axis=2)
        out[:, :, j] = best
        np.put_along_axis(sims, best[..., None], -np.inf, axis=2)
    short = real < n
    if short.any():  # slots j >= real[u]: the (j - real[u])-th padding position
        slots = np.arange(n)
        pad = np.take_along_axis(pad_order[short], np.clip(slots[None, :] - real[short, None], 0, m - 1), axis=1)
        fill = slots[None, :] >= real[short, None]  # (S, n)
        out[short] = np.where(fill[:, None, :], pad[:, None, :], out[short])
    return out
