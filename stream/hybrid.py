"""Choosing the hybrid ranking's weights on the validation targets (``recstream replay --fit-hybrid``).

A leave-last-out replay hands every scored block of evaluations to :class:`HybridFit`
(``run_replay(observe_parts=...)``), with a function that re-scores the block under other
weights through :meth:`stream.processor.Processor.combine`, the worker's own blend. The fit
tries every pair of a grid for ``ranking.hybrid.cooccurrence`` and ``.popularity``, keeps the
pair with the best validation NDCG@K (ties: the smaller weights), then, for a tuned model,
the pair ``cold_cooccurrence`` / ``cold_popularity`` the same way, and reports the choice on
the test targets beside the profile alone. Test targets never choose anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from stream.metrics import metrics_from_ranks, rank_of_targets

__all__ = ["GRID", "HybridFit"]

#: Candidate weights for each signal (the profile's weight is 1).
GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)


class HybridFit:
    """Collects a replay's scored blocks, then picks the weights (see the module doc)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.blocks: list[tuple[np.ndarray, Callable[[tuple[float, ...]], np.ndarray], np.ndarray]] = []
        self._results: dict[tuple[float, ...], dict[str, dict[str, float]]] = {}

    def observe(self, roles: Sequence[str], combine: Callable[[tuple[float, ...]], np.ndarray], targets: np.ndarray) -> None:
        """``run_replay``'s ``observe_parts`` hook."""
        self.blocks.append((np.asarray(roles), combine, np.asarray(targets)))

    def evaluate(self, weights: tuple[float, float, float, float]) -> dict[str, dict[str, float]]:
        """HR, NDCG and MRR at K per role (valid, test) under ``weights`` (cooccurrence,
        popularity, cold_cooccurrence, cold_popularity)."""
        if weights not in self._results:
            ranks: dict[str, list[np.ndarray]] = {"valid": [], "test": []}
            for roles, combine, targets in self.blocks:
                scores = combine(weights)
                for role, acc in ranks.items():
                    mask = roles == role
                    if mask.any():
                        acc.append(rank_of_targets(scores[mask], targets[mask]))
            self._results[weights] = {role: metrics_from_ranks(np.concatenate(r), self.k) for role, r in ranks.items() if r}
        return self._results[weights]

    def _best(self, candidates: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
        return max(candidates, key=lambda w: (self.evaluate(w)["valid"]["ndcg"], -sum(w)))

    def fit(self, grid: Sequence[float] = GRID, cold: bool = False) -> dict:
        """The chosen weights and their metrics, beside the profile alone (all weights 0).

        Both weights over ``grid``; then, with ``cold`` (a tuned model, which has items it
        never saw), the two cold weights over ``grid`` with the first two fixed.
        """
        if not any((roles == "valid").any() for roles, _, _ in self.blocks):
            raise ValueError("no validation targets to fit on: use the leave-last-out protocol")
        best = self._best([(a, b, 0.0, 0.0) for a, b in itertools.product(grid, grid)])
        if cold:
            best = self._best([(best[0], best[1], c, d) for c, d in itertools.product(grid, grid)])
        alone = self.evaluate((0.0, 0.0, 0.0, 0.0))
        chosen = self.evaluate(best)
        return {
            "weights": dict(zip(("cooccurrence", "popularity", "cold_cooccurrence", "cold_popularity"), best)),
            "valid": chosen["valid"],
            "test": chosen.get("test", {}),
            "profile_alone": {"valid": alone["valid"], "test": alone.get("test", {})},
            "grid": list(grid),
        }
