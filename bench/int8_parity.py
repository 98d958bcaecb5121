"""int8 against fp32 in the backtest, over several call sizes: ``python -m bench int8-parity``.

Dynamic int8 quantises each call's activations with one scale per tensor, so a text's int8
vector depends a little on the texts it was encoded with, and so does the backtest. On
ml-100k the prequential HR@10 of int8 moved from 0 to -5% of fp32's with
``encoder.max_batch_tokens`` alone (BENCHMARKS.md, 2026-12-03). One replay per call size
therefore says little; this runs ``recstream replay --dataset ml-100k --protocol prequential``
for each variant and each ``max_batch_tokens``, each with an empty embedding cache (models
and data come from the machine's cache), and reports int8's mean against fp32's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson

from stream.config import load_settings

__all__ = ["DEFAULT_CAPS", "run", "summarise"]

DEFAULT_CAPS = (256, 512, 768, 1024, 2048)


def _replay(variant: str, cap: int, cache_dir: Path, protocol: str) -> dict:
    """One backtest in a child process (as a user runs it), with a fresh embedding cache."""
    with tempfile.TemporaryDirectory(prefix="int8-parity-") as tmp:
        fresh = Path(tmp)
        for shared in ("models", "datasets"):  # exports and data are reused; embeddings are not
            (cache_dir / shared).mkdir(parents=True, exist_ok=True)
            (fresh / shared).symlink_to(cache_dir / shared)
        env = {**os.environ, "RECSTREAM_ENCODER__VARIANT": variant, "RECSTREAM_ENCODER__MAX_BATCH_TOKENS": str(cap),
               "RECSTREAM_ENCODER__CACHE_DIR": str(fresh)}
        done = subprocess.run([sys.executable, "-m", "stream.cli", "replay", "--dataset", "ml-100k", "--protocol", protocol, "--json"],
                              env=env, capture_output=True, check=False)
        if done.returncode:
            raise RuntimeError(f"replay ({variant}, max_batch_tokens {cap}) failed: {done.stderr.decode()[-2000:]}")
    metrics = orjson.loads(done.stdout)["metrics"]["recstream"]
    return {"variant": variant, "max_batch_tokens": cap, "hr": metrics["hr"], "ndcg": round(metrics["ndcg"], 6)}


def summarise(rows: list[dict]) -> dict:
    """Per variant, HR@10's mean, min and max over the call sizes; int8's mean relative to fp32's."""
    by_variant: dict[str, list[float]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row["hr"])
    summary = {v: {"hr_mean": round(float(np.mean(h)), 5), "hr_min": min(h), "hr_max": max(h)} for v, h in by_variant.items()}
    if {"fp32", "int8"} <= summary.keys():
        fp32, int8 = summary["fp32"]["hr_mean"], summary["int8"]["hr_mean"]
        summary["int8_vs_fp32"] = round(int8 / fp32 - 1, 4)
        summary["int8_worst_vs_fp32"] = round(summary["int8"]["hr_min"] / fp32 - 1, 4)
    return summary


def run(caps: tuple[int, ...] = DEFAULT_CAPS, protocol: str = "prequential") -> dict:
    cache_dir = load_settings().encoder.cache_dir
    rows = [_replay(variant, cap, cache_dir, protocol) for cap in caps for variant in ("fp32", "int8")]
    return {"benchmark": "int8-parity", "protocol": protocol, "rows": rows, **summarise(rows)}
