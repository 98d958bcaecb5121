"""Top-K ranking over the catalogue and the ``because`` explanations: pure numpy.

The blended score of item ``e`` is ``sum_h beta_h cos(P_h, e)``. Item embeddings are unit
vectors, so that equals ``q . e`` with ``q = sum_h beta_h P_h/|P_h|``: one query vector per
user and one matrix product per flush for all users, whatever the number of horizons.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream.profile import normalised

__all__ = ["blend_queries", "explain", "score", "top_k"]


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
    """(U, N) blended scores; excluded item indices (seen items, per user) get -inf.

    :param queries: (U, D) float32 from :func:`blend_queries`.
    :param items: (N, D) float32 unit rows.
    """
    scores = queries @ items.T
    for row, idx in enumerate(exclude):
        if len(idx):
            scores[row, idx] = -np.inf
    return scores


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns per row of ``scores``, best first.

    :returns: ``(indices, scores)``, each (U, k') with ``k' = min(k, N)``; a slot only an
        excluded item (-inf) could fill has index -1.
    """
    n_rows, n_items = scores.shape
    if n_items == 0 or n_rows == 0:
        return np.empty((n_rows, 0), np.int64), np.empty((n_rows, 0), scores.dtype)
    k = min(k, n_items)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    best_scores = np.take_along_axis(part_scores, order, axis=1)
    return np.where(np.isneginf(best_scores), -1, best), best_scores


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
