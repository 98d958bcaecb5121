"""Would blending in co-occurrence and popularity help? ``python -m bench.hybrid [--model DIR]``.

Replays ml-100k leave-last-out once, keeps every validation and test evaluation's scores of
recstream, the online item-kNN and the decayed-popularity baselines (same events, same
state, seen items excluded), then chooses blend weights on the validation targets and
reports them on the test targets:
``z(recstream) + a·z(itemknn) + b·z(popularity)``, ``z`` standardising each user's scores.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from stream.config import load_settings
from stream.metrics import metrics_from_ranks, rank_of_targets

SIGNALS = ("recstream", "itemknn", "popularity_decayed")
GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 3.0, 10.0)


def _z(scores: np.ndarray) -> np.ndarray:
    finite = np.isfinite(scores)
    values = np.where(finite, scores, np.nan)
    mean, std = np.nanmean(values, 1, keepdims=True), np.nanstd(values, 1, keepdims=True) + 1e-12
    return np.where(finite, (np.nan_to_num(values) - mean) / std, -np.inf)


def _hr_ndcg(scores: np.ndarray, targets: np.ndarray, k: int) -> tuple[float, float]:
    m = metrics_from_ranks(rank_of_targets(scores, targets), k)  # the replay's own metrics
    return m["hr"], m["ndcg"]


def run(model: Path | None = None, k: int = 10) -> dict:
    from encoders import CachedEncoder, EmbeddingCache, load_encoder
    from stream.catalog import Catalogue
    from stream.replay import run_replay
    from stream.sources import dataset_source

    settings = load_settings(None, **({"encoder": {"model": model}} if model else {}), ranking={"k": k})
    events, items = dataset_source("ml-100k", settings, None)
    encoder = CachedEncoder(load_encoder(settings.encoder), EmbeddingCache(settings.encoder.cache_dir / "embeddings.lmdb"))
    catalogue = Catalogue.from_items(items, encoder)
    kept: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    targets: dict[str, list[int]] = defaultdict(list)

    def observe(role: str, name: str, scores: np.ndarray, target: int) -> None:
        if name in SIGNALS:
            kept[role, name].append(np.asarray(scores, np.float32))
            if name == "recstream":
                targets[role].append(target)

    run_replay(settings, events, catalogue, encoder=encoder, observe=observe)
    z = {key: _z(np.stack(rows)) for key, rows in kept.items()}
    t = {role: np.array(rows) for role, rows in targets.items()}

    def metrics(role: str, a: float, b: float) -> tuple[float, float]:
        blended = z[role, "recstream"].copy()
        for weight, name in ((a, "itemknn"), (b, "popularity_decayed")):
            if weight:  # (0 × -inf would be NaN: seen items stay -inf through the recstream term)
                blended += weight * z[role, name]
        return _hr_ndcg(blended, t[role], k)

    a, b = max(itertools.product(GRID, GRID), key=lambda w: (metrics("valid", *w)[1], -w[0] - w[1]))
    return {
        "benchmark": "hybrid", "model": str(model or "default"), "k": k,
        "weights": {"itemknn": a, "popularity_decayed": b},
        "valid": dict(zip(("hr", "ndcg"), metrics("valid", a, b))),
        "test_blended": dict(zip(("hr", "ndcg"), metrics("test", a, b))),
        "test_recstream_alone": dict(zip(("hr", "ndcg"), metrics("test", 0.0, 0.0))),
        "test_itemknn_alone": dict(zip(("hr", "ndcg"), _hr_ndcg(z["test", "itemknn"], t["test"], k))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hybrid", description=__doc__)
    parser.add_argument("--model", type=Path, help="a model directory (default: the embedded MiniLM)")
    args = parser.parse_args()
    print(json.dumps(run(args.model)))


if __name__ == "__main__":
    main()
