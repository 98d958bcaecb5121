"""Top-K scoring throughput: user-recommendations/s over a large catalogue.

Brute force uses the worker's own functions (``blend_queries``, then per block of
``ranking.BLOCK_USERS`` users ``score`` and ``top_k``, as ``Processor.top_rows`` does) on a
synthetic 100,000 × 384 float32 catalogue with 100 seen items per user. The split into the
matrix product and the top-K step is reported too, with the former argpartition top-K timed
on the same scores for comparison. With ``hnswlib`` installed, an HNSW index (not used by the
worker) is timed on the same queries, with its recall@K against the exact top-K.
"""

from __future__ import annotations

import time

import numpy as np

from stream.profile import normalised
from stream.ranking import BLOCK_USERS, blend_queries, iter_blocks, score, top_k

__all__ = ["run"]


def _argpartition_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The top-K before issue 6: argpartition of the negated (U, N) scores, then a sort."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def run(n_items: int = 100_000, dim: int = 384, users: int = 2_048, k: int = 10, seed: int = 0, ann: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    items = normalised(rng.standard_normal((n_items, dim), dtype=np.float32))
    profiles = rng.standard_normal((users, 2, dim), dtype=np.float32)
    blend = np.array([0.5, 0.5])
    exclude = [rng.choice(n_items, size=100, replace=False) for _ in range(users)]
    queries = blend_queries(profiles, blend)
    top_k(score(queries[:BLOCK_USERS], items, exclude[:BLOCK_USERS]), k)  # warm-up
    exact = []
    started, cpu = time.perf_counter(), time.process_time()
    for b in iter_blocks(users):
        exact.append(top_k(score(blend_queries(profiles[b], blend), items, exclude[b]), k)[0])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    exact_rows = np.concatenate(exact)

    block = slice(0, BLOCK_USERS)  # the split of one block's time, and the former top-K
    t0 = time.perf_counter()
    scores = score(queries[block], items, exclude[block])
    t1 = time.perf_counter()
    top_k(scores, k)
    t2 = time.perf_counter()
    _argpartition_top_k(scores, k)
    t3 = time.perf_counter()
    result = {
        "benchmark": "scoring", "n_items": n_items, "dim": dim, "users": users, "block": BLOCK_USERS, "k": k,
        "user_recs_per_s": round(users / elapsed, 1), "elapsed_s": round(elapsed, 3),
        # CPU seconds are what other processes on a shared machine cannot take away: on an
        # idle 2-core machine, throughput ~= 2 × this (the product runs on both cores).
        "user_recs_per_cpu_s": round(users / cpu, 1),
        "block_matmul_ms": round((t1 - t0) * 1e3, 1), "block_top_k_ms": round((t2 - t1) * 1e3, 1),
        "block_argpartition_top_k_ms": round((t3 - t2) * 1e3, 1),
    }
    if ann:
        result.update(_hnsw(items, queries, exact_rows, exclude, k))
    return result


def _hnsw(items: np.ndarray, queries: np.ndarray, exact: np.ndarray, exclude: list[np.ndarray], k: int) -> dict:
    """HNSW (inner product) over the same catalogue: build time, queries/s, recall@k.

    Seen items are filtered after the search by asking for ``k + 100`` neighbours (each user
    has 100 seen items), so the comparison with the exact, excluding path is like for like.
    """
    try:
        import hnswlib
    except ImportError:
        return {"hnsw": "hnswlib not installed"}
    index = hnswlib.Index(space="ip", dim=items.shape[1])
    started = time.perf_counter()
    index.init_index(max_elements=len(items), ef_construction=100, M=16)
    index.add_items(items, num_threads=2)
    build = time.perf_counter() - started
    out: dict = {"hnsw_build_s": round(build, 1), "hnsw_M": 16, "hnsw_ef_construction": 100}
    for ef in (128, 256):
        index.set_ef(ef)
        started = time.perf_counter()
        labels, _ = index.knn_query(queries, k=k + 100, num_threads=2)
        elapsed = time.perf_counter() - started
        hits = 0
        for row, seen, truth in zip(labels, exclude, exact):
            found = row[~np.isin(row, seen)][:k]
            hits += len(np.intersect1d(found, truth[truth >= 0]))
        out[f"hnsw_ef{ef}_user_recs_per_s"] = round(len(queries) / elapsed, 1)
        out[f"hnsw_ef{ef}_recall_at_{k}"] = round(hits / (len(queries) * k), 4)
    return out
