"""Human-readable replay reports (the JSON form is the replay result itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_report", "write_report"]


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
    if "hybrid_fit" in result:
        _print_hybrid_fit(result["hybrid_fit"], k, console)


def _print_hybrid_fit(fit: dict[str, Any], k: int, console: Console) -> None:
    w = fit["weights"]
    table = Table(title=f"hybrid weights chosen on validation NDCG@{k}: "
                        + ", ".join(f"{name} {value:g}" for name, value in w.items()))
    for column in ("ranking", f"valid HR@{k}", f"valid NDCG@{k}", f"test HR@{k}", f"test NDCG@{k}"):
        table.add_column(column, justify="right" if column != "ranking" else "left")
    for name, m in (("hybrid (chosen weights)", fit), ("profile alone", fit["profile_alone"])):
        table.add_row(name, f"{m['valid']['hr']:.4f}", f"{m['valid']['ndcg']:.4f}",
                      f"{m['test'].get('hr', float('nan')):.4f}", f"{m['test'].get('ndcg', float('nan')):.4f}")
    console.print(table)
    console.print("to serve them: " + " ".join(f"RECSTREAM_RANKING__HYBRID__{name.upper()}={value:g}"
                                               for name, value in w.items() if value or not name.startswith("cold")),
                  soft_wrap=True)  # one line to copy


def write_report(result: dict[str, Any], directory: Path) -> Path:
    """Markdown + HTML report with plots into ``directory``; returns the Markdown path.

    Needs ``result`` from ``run_replay(..., keep_ranks=True)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    k, models = result["k"], list(result["metrics"])

    fig, ax = plt.subplots(figsize=(8, 4))
    months = list(result["segments"]["time"])
    for model in models:
        ax.plot(months, [result["segments"]["time"][m][model]["hr"] for m in months], marker="o", label=model)
    ax.set(title=f"HR@{k} over time (test events per month)", ylabel=f"HR@{k}")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.savefig(directory / "hr_by_time.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    segments = list(result["segments"]["history"])
    width = 0.8 / max(len(models), 1)
    for j, model in enumerate(models):
        values = [result["segments"]["history"][s][model]["hr"] for s in segments]
        ax.bar(np.arange(len(segments)) + j * width, values, width, label=model)
    ax.set_xticks(np.arange(len(segments)) + 0.4 - width / 2, [f"{s}\n(n={result['segments']['history'][s]['n']})" for s in segments])
    ax.set(title=f"HR@{k} by user history length", ylabel=f"HR@{k}")
    ax.legend(fontsize=8)
    fig.savefig(directory / "hr_by_history.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    cutoffs = np.arange(1, 201)
    for model in models:
        ranks = np.asarray(result["ranks"][model])
        ax.plot(cutoffs, [(ranks < c).mean() if ranks.size else 0 for c in cutoffs], label=model)
    ax.set(title="Hit rate as the cut-off grows (distribution of target ranks)", xlabel="K", ylabel="HR@K", xscale="log")
    ax.legend(fontsize=8)
    fig.savefig(directory / "rank_distribution.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    scores = result["scores"]
    bins = np.linspace(min(scores["target"] + scores["kth"] + [0.0]), max(scores["target"] + scores["kth"] + [1.0]), 50)
    ax.hist(scores["kth"], bins=bins, alpha=0.6, label=f"score of the {k}th recommendation")
    ax.hist(scores["target"], bins=bins, alpha=0.6, label="score of the held-out item")
    ax.set(title="recstream score distributions (test evaluations)", xlabel="blended cosine score", ylabel="evaluations")
    ax.legend(fontsize=8)
    fig.savefig(directory / "score_distribution.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    header = f"| model | HR@{k} | NDCG@{k} | MRR | Recall@{k} | coverage |\n|---|---|---|---|---|---|\n"
    rows = "".join(f"| {m} | {v['hr']:.4f} | {v['ndcg']:.4f} | {v['mrr']:.4f} | {v['recall']:.4f} | {v['coverage']:.3f} |\n"
                   for m, v in result["metrics"].items())
    markdown = (
        f"# recstream replay: {result['protocol']}\n\n{result['events']:,} events, {result['users']:,} users, "
        f"{result['evaluated']:,} test evaluations, {result['elapsed_s']} s.\n\n{header}{rows}\n"
        "![HR over time](hr_by_time.png)\n\n![HR by history](hr_by_history.png)\n\n![Rank distribution](rank_distribution.png)\n\n"
        "![Score distribution](score_distribution.png)\n"
    )
    md_path = directory / "report.md"
    md_path.write_text(markdown)
    table = "".join(f"<tr><td>{m}</td>" + "".join(f"<td>{v[c]:.4f}</td>" for c in ("hr", "ndcg", "mrr", "recall", "coverage")) + "</tr>"
                    for m, v in result["metrics"].items())
    (directory / "report.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>recstream replay</title><h1>recstream replay: {result['protocol']}</h1>"
        f"<p>{result['events']:,} events, {result['users']:,} users, {result['evaluated']:,} test evaluations.</p>"
        f"<table border=1><tr><th>model</th><th>HR@{k}</th><th>NDCG@{k}</th><th>MRR</th><th>Recall@{k}</th><th>coverage</th></tr>{table}</table>"
        '<img src="hr_by_time.png"><img src="hr_by_history.png"><img src="rank_distribution.png"><img src="score_distribution.png">'
    )
    return md_path
