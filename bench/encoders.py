"""Encoder throughput: torch original vs ONNX fp32/int8 (see :mod:`encoders.bench`)."""

from __future__ import annotations

from encoders.bench import format_table, rows_as_dicts, run_bench

__all__ = ["run"]


def run(rounds: int = 3) -> dict:
    rows = run_bench(rounds=rounds)
    return {"benchmark": "encoders", "rows": rows_as_dicts(rows), "table": format_table(rows)}
