"""Ranking metrics for one held-out target per evaluation, from the target's 0-based rank.

With a single relevant item, Recall@K equals HR@K; both are reported because users compare
against papers that use either name. Ranks are over the full catalogue minus seen items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MetricAccumulator", "metrics_from_ranks", "rank_of_targets"]


def rank_of_targets(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target: items scored higher, plus half of those tied.

    Counting ties at half keeps a model that scores everything equal (a user with no
    profile yet) at the expected rank of a random guess rather than a free hit. Excluded
    items must carry -inf. Returns float ranks.
    """
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    higher = (scores > target_scores).sum(axis=1)
    tied = (scores == target_scores).sum(axis=1) - 1
    return higher + tied / 2.0


def metrics_from_ranks(ranks: np.ndarray, k: int) -> dict[str, float]:
    """HR@K, NDCG@K, MRR and Recall@K averaged over evaluations (0-based ranks)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {"hr": 0.0, "ndcg": 0.0, "mrr": 0.0, "recall": 0.0}
    hit = ranks < k
    return {
        "hr": float(hit.mean()),
        "ndcg": float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()),
        "mrr": float((1.0 / (ranks + 1.0)).mean()),
        "recall": float(hit.mean()),
    }


@dataclass
class MetricAccumulator:
    """Collects ranks and recommended items for one model; ``summary`` adds coverage."""

    k: int
    n_items: int
    ranks: list[float] = field(default_factory=list)
    recommended: set[int] = field(default_factory=set)

    def add(self, ranks: np.ndarray, top: np.ndarray) -> None:
        self.ranks.extend(float(r) for r in ranks)
        self.recommended.update(int(i) for i in top.ravel() if i >= 0)

    def summary(self, mask: np.ndarray | None = None) -> dict[str, float]:
        ranks = np.asarray(self.ranks)
        out = metrics_from_ranks(ranks if mask is None else ranks[mask], self.k)
        if mask is None:
            out["coverage"] = len(self.recommended) / max(self.n_items, 1)
        return out
