"""Human-readable replay reports (the JSON form is the replay result itself)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_report"]


def print_report(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    k = result["k"]
    table = Table(title=f"{result['protocol']} on {result['events']:,} events, {result['users']:,} users, "
                        f"{result['evaluated']:,} evaluations ({result['elapsed_s']} s)")
    for column in ("model", f"HR@{k}", f"NDCG@{k}", "MRR", f"Recall@{k}", "coverage"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for model, m in result["metrics"].items():
        table.add_row(model, f"{m['hr']:.4f}", f"{m['ndcg']:.4f}", f"{m['mrr']:.4f}", f"{m['recall']:.4f}", f"{m['coverage']:.3f}")
    console.print(table)
    for kind, segments in result["segments"].items():
        seg = Table(title=f"HR@{k} by {kind}")
        models = list(result["metrics"])
        seg.add_column(kind)
        seg.add_column("n", justify="right")
        for model in models:
            seg.add_column(model, justify="right")
        for label, values in segments.items():
            seg.add_row(label, str(values["n"]), *(f"{values[m]['hr']:.4f}" for m in models))
        console.print(seg)
