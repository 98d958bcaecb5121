"""Top-K scoring throughput: user-recommendations/s over a large catalogue.

Uses the worker's own functions (``blend_queries``, ``score``, ``top_k``) on a synthetic
100,000 × 384 float32 catalogue, in batches as a flush would score them.
"""

from __future__ import annotations

import time

import numpy as np

from stream.profile import normalised
from stream.ranking import blend_queries, score, top_k

__all__ = ["run"]


def run(n_items: int = 100_000, dim: int = 384, users: int = 2_048, batch: int = 256, k: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    items = normalised(rng.standard_normal((n_items, dim), dtype=np.float32))
    profiles = rng.standard_normal((users, 2, dim), dtype=np.float32)
    blend = np.array([0.5, 0.5])
    exclude = [rng.choice(n_items, size=100, replace=False) for _ in range(users)]
    top_k(score(blend_queries(profiles[:batch], blend), items, exclude[:batch]), k)  # warm-up
    started = time.perf_counter()
    for start in range(0, users, batch):
        part = slice(start, start + batch)
        top_k(score(blend_queries(profiles[part], blend), items, exclude[part]), k)
    elapsed = time.perf_counter() - started
    return {"benchmark": "scoring", "n_items": n_items, "dim": dim, "users": users, "batch": batch, "k": k,
            "user_recs_per_s": round(users / elapsed, 1), "elapsed_s": round(elapsed, 3)}
