"""Baselines for the replay tool, all updated incrementally in event time (no look-ahead).

Each baseline answers ``scores(user, ts_ms)`` with the state built from events strictly before
the one being evaluated, then sees that event through ``update``. Scores are (N,) float64
over catalogue rows; the replay masks seen items.
"""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np

__all__ = ["AllTimePopularity", "Baseline", "DecayedPopularity", "ItemKNN", "RecentPopularity", "default_baselines"]

DAY_MS = 86_400_000


class Baseline:
    name = "baseline"

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def scores(self, user: str, ts_ms: int) -> np.ndarray:
        raise NotImplementedError

    def update(self, user: str, item: int, ts_ms: int) -> None:
        raise NotImplementedError


class AllTimePopularity(Baseline):
    """Number of interactions per item so far."""

    name = "popularity"

    def __init__(self, n_items: int) -> None:
        super().__init__(n_items)
        self.counts = np.zeros(n_items)

    def scores(self, user: str, ts_ms: int) -> np.ndarray:
        return self.counts

    def update(self, user: str, item: int, ts_ms: int) -> None:
        self.counts[item] += 1


class DecayedPopularity(Baseline):
    """Interactions per item, each decayed with a half-life (default 7 days) in event time."""

    name = "popularity_decayed"

    def __init__(self, n_items: int, half_life_ms: float = 7 * DAY_MS) -> None:
        super().__init__(n_items)
        self.values = np.zeros(n_items)
        self.half_life_ms = half_life_ms
        self.ts_ms = 0

    def _advance(self, ts_ms: int) -> None:
        if ts_ms > self.ts_ms:
            self.values *= np.exp2(-(ts_ms - self.ts_ms) / self.half_life_ms)
            self.ts_ms = ts_ms

    def scores(self, user: str, ts_ms: int) -> np.ndarray:
        return self.values  # a global decay factor changes no ranking

    def update(self, user: str, item: int, ts_ms: int) -> None:
        self._advance(ts_ms)
        self.values[item] += np.exp2(-(self.ts_ms - ts_ms) / self.half_life_ms)


class RecentPopularity(Baseline):
    """Interactions per item in the trailing window (default 7 days)."""

    name = "most_recent_popular"

    def __init__(self, n_items: int, window_ms: int = 7 * DAY_MS) -> None:
        super().__init__(n_items)
        self.counts = np.zeros(n_items)
        self.window_ms = window_ms
        self.events: deque[tuple[int, int]] = deque()

    def scores(self, user: str, ts_ms: int) -> np.ndarray:
        while self.events and self.events[0][0] < ts_ms - self.window_ms:
            _, item = self.events.popleft()
            self.counts[item] -= 1
        return self.counts

    def update(self, user: str, item: int, ts_ms: int) -> None:
        self.events.append((ts_ms, item))
        self.counts[item] += 1


class ItemKNN(Baseline):
    """Item co-occurrence from user histories, cosine-normalised, over the recent history.

    ``score(i) = sum_h C[h, i] / sqrt(n_h n_i)`` over the user's last ``history`` items, with a
    tiny popularity term so cold users still get a ranking.
    """

    name = "itemknn"

    def __init__(self, n_items: int, history: int = 50) -> None:
        super().__init__(n_items)
        self.cooc = np.zeros((n_items, n_items), np.float32)
        self.counts = np.zeros(n_items)
        self.history_len = history
        self.histories: dict[str, list[int]] = defaultdict(list)

    def scores(self, user: str, ts_ms: int) -> np.ndarray:
        pop = self.counts / (self.counts.max() or 1.0) * 1e-6
        hist = self.histories.get(user)
        if not hist:
            return pop
        recent = hist[-self.history_len :]
        norm = np.sqrt(np.maximum(self.counts, 1.0))
        rows = self.cooc[recent] / norm[recent][:, None]
        return rows.sum(axis=0) / norm + pop

    def update(self, user: str, item: int, ts_ms: int) -> None:
        hist = self.histories[user]
        if hist:
            self.cooc[hist, item] += 1.0
            self.cooc[item, hist] += 1.0
        hist.append(item)
        self.counts[item] += 1


def default_baselines(n_items: int) -> list[Baseline]:
    return [AllTimePopularity(n_items), DecayedPopularity(n_items), RecentPopularity(n_items), ItemKNN(n_items)]
