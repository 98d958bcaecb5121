"""Read-only views of the store for operators: a user's profile, explained with item titles."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from store import LmdbStore, ProfileRecord
from stream.config import EVENT_KINDS, Settings
from stream.privacy import Pseudonymiser
from stream.profile import normalised

__all__ = ["profile_summary", "summarise_profile"]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def profile_summary(settings: Settings, user_id: str, top: int = 5) -> dict[str, Any]:
    """The user's horizons with their closest catalogue items, counts and recent history.

    Opens the store read-only, so it never blocks a running worker (LMDB readers don't).
    """
    if not settings.store.path.exists():
        raise ValueError(f"no store at {settings.store.path}")
    store = LmdbStore(settings.store.path, map_size_mb=settings.store.map_size_mb, readonly=True)
    try:
        with store.read() as txn:
            rec = txn.get_profile(Pseudonymiser(settings.privacy).store_id(user_id))
            if rec is None:
                raise ValueError(f"no profile for user {user_id!r} in {settings.store.path}")
            items = list(txn.iter_items())
    finally:
        store.close()
    titles = {i.item_id: i.title for i in items}
    ids = [i.item_id for i in items]
    matrix = np.stack([i.vector for i in items]) if items else np.zeros((0, rec.vectors.shape[1]), np.float32)
    return summarise_profile(settings, rec, ids, matrix, lambda item_id: titles.get(item_id, item_id), top)


def summarise_profile(
    settings: Settings, rec: ProfileRecord, ids: Sequence[str], matrix: np.ndarray,
    title_of: Callable[[str], str], top: int = 5,
) -> dict[str, Any]:
    """:func:`profile_summary` for a profile already read; ``matrix`` rows are ``ids``' vectors.

    The worker's HTTP API calls it with its in-memory catalogue and looks titles up one by one.
    """
    horizons = []
    for (name, half_life_s), vector, weight in zip(settings.profile.half_lives_s.items(), rec.vectors, rec.weights):
        sims = matrix @ normalised(vector[None, :])[0] if len(ids) else np.zeros(0)
        best = np.argsort(-sims)[:top]
        horizons.append(
            {
                "name": name,
                "half_life_h": half_life_s / 3600,
                "weight": float(weight),
                "top_interests": [{"item_id": ids[j], "title": title_of(ids[j]), "similarity": float(sims[j])} for j in best],
            }
        )
    return {
        "user_id": rec.user_id,
        "event_count": rec.event_count,
        "profile_version": rec.version,
        "last_event": _iso(rec.last_ts_ms) if rec.last_ts_ms else None,
        "updated": _iso(rec.updated_ms) if rec.updated_ms else None,
        "kinds": dict(zip(EVENT_KINDS, rec.kind_counts)),
        "horizons": horizons,
        "recent": [
            {"item_id": h.item_id, "title": title_of(h.item_id), "kind": EVENT_KINDS[h.kind], "ts": _iso(h.ts_ms)}
            for h in reversed(rec.history[-top:])
        ],
    }
