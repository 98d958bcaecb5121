"""bench/int8_parity.py: int8's backtest against fp32's, summarised over call sizes."""

from __future__ import annotations

import pytest

from bench.int8_parity import summarise


def test_summary_compares_int8_mean_and_worst_with_fp32():
    rows = [{"variant": "fp32", "max_batch_tokens": c, "hr": 0.020} for c in (256, 512)]
    rows += [{"variant": "int8", "max_batch_tokens": 256, "hr": 0.019}, {"variant": "int8", "max_batch_tokens": 512, "hr": 0.020}]
    summary = summarise(rows)
    assert summary["fp32"] == {"hr_mean": 0.02, "hr_min": 0.02, "hr_max": 0.02}
    assert summary["int8"] == {"hr_mean": 0.0195, "hr_min": 0.019, "hr_max": 0.020}
    assert summary["int8_vs_fp32"] == pytest.approx(-0.025)
    assert summary["int8_worst_vs_fp32"] == pytest.approx(-0.05)


def test_no_ratio_without_both_variants():
    summary = summarise([{"variant": "int8", "max_batch_tokens": 512, "hr": 0.019}])
    assert "int8_vs_fp32" not in summary and summary["int8"]["hr_mean"] == 0.019
