"""Business rules on top of relevance: excluded categories, fresh-item boost, diversity (MMR).

Relevance (:mod:`stream.ranking`) says how well an item fits a user; these rules say what a
shop or news app wants shown. Exclusion and the freshness boost change the scores
themselves, so replay measures them like any other ranking change; diversity re-orders the
best ``pool`` candidates afterwards. All three are off by default (``ranking.*``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import numpy as np

__all__ = ["excluded_rows", "freshness", "mmr", "published_ms"]

_YEAR = re.compile(r"^\d{4}$")


def excluded_rows(attributes: Sequence[Mapping[str, str | list[str]]], exclude: Mapping[str, Sequence[str]]) -> np.ndarray:
    """(N,) bool: rows whose attribute ``name`` has any of ``exclude[name]``'s values.

    Values compare case-insensitively (``{"genres": ["horror"]}`` drops "Horror" films).
    """
    out = np.zeros(len(attributes), bool)
    if not exclude:
        return out
    wanted = {name: {v.casefold() for v in values} for name, values in exclude.items() if values}
    for row, attrs in enumerate(attributes):
        for name, values in wanted.items():
            value = attrs.get(name)
            if value is None:
                continue
            present = [value] if isinstance(value, str) else value
            if any(v.casefold() in values for v in present):
                out[row] = True
                break
    return out


def published_ms(value: str | list[str] | None) -> float:
    """An item's publication time in epoch ms from its attribute, NaN if absent or unreadable.

    Accepts a 4-digit year (its 1 January, UTC), an ISO-8601 date or date-time (naive means
    UTC), or epoch seconds.
    """
    if isinstance(value, list):
        value = value[0] if value else None
    if not value:
        return math.nan
    value = value.strip()
    try:
        if _YEAR.match(value):
            return datetime(int(value), 1, 1, tzinfo=timezone.utc).timestamp() * 1000.0
        if re.fullmatch(r"\d+(\.\d+)?", value):
            return float(value) * 1000.0
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return math.nan
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp() * 1000.0


def freshness(published: np.ndarray, now_ms: np.ndarray, half_life_s: float) -> np.ndarray:
    """(U, N) float32 in [0, 1]: ``2^(-age / half_life)`` of each item at each user's "now".

    Items published after "now" count as brand new (1); items without a time get 0.
    """
    age_ms = np.asarray(now_ms, np.float64)[:, None] - np.asarray(published, np.float64)[None, :]
    fresh = np.exp2(-np.maximum(age_ms, 0.0) / (half_life_s * 1000.0))
    return np.nan_to_num(fresh, nan=0.0).astype(np.float32)


def mmr(rows: np.ndarray, scores: np.ndarray, matrix: np.ndarray, k: int, diversity: float) -> tuple[np.ndarray, np.ndarray]:
    """Maximal marginal relevance over each user's candidates, best first.

    Picks greedily ``argmax (1 - diversity) * relevance - diversity * max cos(item, picked)``
    where relevance is the candidate's score rescaled to [0, 1] within the user's candidates
    (so the knob means the same for any model's score scale). ``diversity`` 0 keeps the
    relevance order.

    :param rows: (U, P) candidate catalogue rows, best first; -1 pads (never picked).
    :param scores: (U, P) their scores.
    :returns: ``(rows, scores)`` (U, min(k, P)), padded with -1 / -inf.
    """
    n_users, pool = rows.shape
    k = min(k, pool)
    out_rows = np.full((n_users, k), -1, np.int64)
    out_scores = np.full((n_users, k), -np.inf, np.float32)
    valid = rows >= 0
    vectors = matrix[np.maximum(rows, 0)]  # (U, P, D)
    sims = np.einsum("upd,uqd->upq", vectors, vectors)  # (U, P, P)
    scores64 = np.where(valid, scores, 0.0).astype(np.float64)
    low = np.where(valid, scores64, np.inf).min(axis=1, keepdims=True)
    high = np.where(valid, scores64, -np.inf).max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    relevance = np.where(valid, (scores64 - np.where(np.isfinite(low), low, 0.0)) / span, -np.inf)
    picked = np.zeros((n_users, pool), bool)
    redundancy = np.full((n_users, pool), -np.inf)  # max similarity to the picked items so far
    users = np.arange(n_users)
    for j in range(k):
        penalty = np.where(np.isneginf(redundancy), 0.0, redundancy)
        value = (1.0 - diversity) * relevance - diversity * penalty
        value[picked | ~valid] = -np.inf
        best = np.argmax(value, axis=1)
        ok = np.isfinite(value[users, best])
        out_rows[ok, j] = rows[users[ok], best[ok]]
        out_scores[ok, j] = scores[users[ok], best[ok]]
        picked[users[ok], best[ok]] = True
        redundancy = np.maximum(redundancy, np.where(ok[:, None], sims[users, best], -np.inf))
    return out_rows, out_scores
