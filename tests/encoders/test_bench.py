"""`recstream encoders bench`: every engine measured in every cell, ratios to torch, real texts.

Only the shape of the results is checked here: speed is proven by BENCHMARKS.md, not tests.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from encoders import EncoderError
from encoders.bench import bench_texts, check_variants, format_table, run_bench


def test_texts_are_short_item_texts_and_long_paragraphs(cache_dir, encoder):
    texts = bench_texts(cache_dir, n=64)
    assert len(texts["short"]) == len(texts["long"]) == 64
    assert texts["short"][0].startswith("Toy Story (1995)")
    short = [len(e.ids) for e in encoder.tokenizer.encode_batch(texts["short"])]
    long = [len(e.ids) for e in encoder.tokenizer.encode_batch(texts["long"])]
    assert max(short) <= 40 and min(long) >= 100


def test_one_run_measures_torch_and_each_variant(cache_dir, fp32_dir, int8_dir):
    rows = run_bench(cache_dir=cache_dir, variants=("fp32", "int8"), batch_sizes=(4, 8), rounds=1, budget_s=0.05, threads=1)
    cells = {(r.texts, r.batch_size) for r in rows}
    assert cells == {("short", 4), ("short", 8), ("long", 4), ("long", 8)}
    assert sorted({r.engine for r in rows}) == ["onnx-fp32", "onnx-int8", "torch"] and len(rows) == 12
    for r in rows:
        assert r.sentences_per_s > 0
        torch_rate = next(t.sentences_per_s for t in rows if t.engine == "torch" and (t.texts, t.batch_size) == (r.texts, r.batch_size))
        assert r.vs_torch == pytest.approx(r.sentences_per_s / torch_rate, rel=0.05, abs=0.01)  # both rounded
    assert {r.provider for r in rows if r.engine != "torch"} == {"cpu"}
    table = format_table(rows)
    assert table.splitlines()[0] == "| texts (mean tokens) | batch | torch | onnx-fp32 | onnx-int8 |"
    assert len(table.splitlines()) == 6 and "×)" in table


def test_fp16_is_refused_without_cuda():
    import onnxruntime as ort

    with pytest.raises(EncoderError, match="fp16 is a GPU variant"):
        check_variants(["fp32", "fp16"], "cpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(EncoderError):
            check_variants(["fp16"], "auto")
    check_variants(["fp32", "int8"], "cpu")


def test_cli_refuses_fp16_on_cpu_in_one_line():
    out = subprocess.run([sys.executable, "-m", "stream.cli", "encoders", "bench", "--variants", "fp32,fp16"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "RECSTREAM_ENCODER__PROVIDER": "cpu"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "recstream: error: fp16 is a GPU variant: it needs onnxruntime's CUDA provider (pip install onnxruntime-gpu)"
