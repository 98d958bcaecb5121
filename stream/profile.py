"""Exponentially time-decayed interest profiles: pure functions over numpy arrays.

For each horizon ``h`` with half-life ``tau_h`` a profile keeps a decayed sum ``P_h`` of
weighted item embeddings and a decayed sum ``W_h`` of the weights, both referenced at the
event time ``t_ref`` of the newest applied event::

    P_h(t_ref') = P_h(t_ref) * 2^(-(t_ref' - t_ref)/tau_h) + sum_k w_k e_k 2^(-(t_ref' - t_k)/tau_h)

with ``t_ref' = max(t_ref, max_k t_k)``. Every term is decayed from its own event time, so
the result is the same whatever order or grouping the events arrive in (late events are
applied exactly), and applying windows one by one equals recomputing from scratch.
All times are event time in milliseconds.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_events", "apply_one_each", "decay", "normalised"]


def decay(dt_ms: np.ndarray | float, half_lives_ms: np.ndarray) -> np.ndarray:
    """``2^(-dt/tau)``, broadcast as ``dt[..., None]`` over horizons; dt must be ≥ 0."""
    dt = np.asarray(dt_ms, dtype=np.float64)
    return np.exp2(-dt[..., None] / half_lives_ms)


def apply_events(
    vectors: np.ndarray,
    weights: np.ndarray,
    last_ts_ms: int,
    embeddings: np.ndarray,
    event_weights: np.ndarray,
    ts_ms: np.ndarray,
    half_lives_ms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fold events into a profile; returns new ``(vectors, weights, last_ts_ms)``.

    :param vectors: (H, D) decayed sums referenced at ``last_ts_ms`` (zeros for a new user).
    :param weights: (H,) decayed weight sums at ``last_ts_ms``.
    :param embeddings: (n, D) item embeddings of the events.
    :param event_weights: (n,) per-event weights (by kind).
    :param ts_ms: (n,) event times.
    :param half_lives_ms: (H,) half-lives.
    Computed in float64; vectors are returned as float32.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    if ts.size == 0:
        return vectors, weights, last_ts_ms
    new_ref = max(int(last_ts_ms), int(ts.max()))
    carry = decay(new_ref - last_ts_ms, half_lives_ms)  # (H,)
    per_event = decay(new_ref - ts, half_lives_ms) * np.asarray(event_weights, np.float64)[:, None]  # (n, H)
    new_vectors = vectors.astype(np.float64) * carry[:, None] + per_event.T @ embeddings.astype(np.float64)
    new_weights = weights.astype(np.float64) * carry + per_event.sum(axis=0)
    return new_vectors.astype(np.float32), new_weights, new_ref


def apply_one_each(
    vectors: np.ndarray,
    weights: np.ndarray,
    last_ts_ms: np.ndarray,
    embeddings: np.ndarray,
    event_weights: np.ndarray,
    ts_ms: np.ndarray,
    half_lives_ms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`apply_events` for ``U`` profiles that get one event each, in one pass of numpy.

    The common case of a flush (most users have a single event in their window). Every
    element goes through the same float64 operations as :func:`apply_events` with ``n = 1``
    (a one-term product is exact), so the results are bit-identical to calling it per user.

    :param vectors: (U, H, D); ``weights``: (U, H); ``last_ts_ms``, ``ts_ms``: (U,) int64;
        ``embeddings``: (U, D); ``event_weights``: (U,).
    :returns: ``(vectors (U, H, D) float32, weights (U, H), last_ts_ms (U,) int64)``.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    last = np.asarray(last_ts_ms, dtype=np.int64)
    new_ref = np.maximum(last, ts)
    carry = decay(new_ref - last, half_lives_ms)  # (U, H)
    per_event = decay(new_ref - ts, half_lives_ms) * np.asarray(event_weights, np.float64)[:, None]  # (U, H)
    new_vectors = vectors.astype(np.float64) * carry[:, :, None] + per_event[:, :, None] * embeddings.astype(np.float64)[:, None, :]
    new_weights = weights.astype(np.float64) * carry + per_event
    return new_vectors.astype(np.float32), new_weights, new_ref


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float32), where=norms > 0)
