"""Encoder throughput, side by side in one run: the torch original against the ONNX exports.

The torch baseline is what sentence-transformers does (length-sorted batches, fast
tokenizer, mean pooling, L2 norm) under ``torch.inference_mode`` with the same thread count
as onnxruntime, so the ratios compare engines, not set-ups. Every engine includes its own
tokenisation. Engines take turns in short rounds and each keeps its best round: on a shared
machine another process's burst then costs one round, not one engine's whole figure.

Texts are real: *short* are ml-100k item texts (about 15-30 tokens); *long* join
consecutive item texts into ~128-token "watched list" paragraphs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from encoders.manifest import EncoderError

__all__ = ["BenchRow", "bench_texts", "format_table", "item_texts", "run_bench"]

log = logging.getLogger(__name__)

Encode = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class BenchRow:
    engine: str  # torch | onnx-fp32 | onnx-int8 | onnx-fp16
    texts: str  # short | long
    batch_size: int
    mean_tokens: float
    sentences_per_s: float
    vs_torch: float | None  # sentences/s ÷ torch's in the same (texts, batch) cell
    provider: str


def item_texts(cache_dir: Path) -> list[str]:
    """The text the worker encodes for each ml-100k item, in catalogue order."""
    from stream.catalog import item_text, parse_item
    from stream.config import LimitSettings
    from stream import movielens
    import orjson

    items = movielens.load_items(movielens.fetch_ml100k(cache_dir))
    limits = LimitSettings()
    return [item_text(parse_item(orjson.dumps(movielens.item_message(i)), limits)) for i in items]


def bench_texts(cache_dir: Path, n: int = 512, long_tokens: int = 128) -> dict[str, list[str]]:
    """``{"short": [...], "long": [...]}``: ``n`` ml-100k item texts and ``n`` ~``long_tokens``
    paragraphs made of consecutive item texts (word count as a token proxy, ~1.3 tokens/word)."""
    texts = item_texts(cache_dir)
    short = [texts[i % len(texts)] for i in range(n)]
    long, words_wanted = [], int(long_tokens / 1.3)
    start = 0
    while len(long) < n:
        parts, words = [], 0
        while words < words_wanted:
            text = texts[start % len(texts)]
            parts.append(text)
            words += len(text.split())
            start += 1
        long.append("Watched: " + "; ".join(parts))
    return {"short": short, "long": long}


def _torch_encoder(model_dir: Path, max_length: int, threads: int) -> tuple[Encode, Callable[[Sequence[str]], float]]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()

    def encode(texts: Sequence[str]) -> np.ndarray:
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()

    def mean_tokens(texts: Sequence[str]) -> float:
        return float(np.mean([len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]))

    return encode, mean_tokens


def _sorted_batches(encode: Encode, batch_size: int) -> Encode:
    """sentence-transformers' loop: sort by length, encode batch by batch (torch baseline)."""

    def run(texts: Sequence[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.vstack([encode([texts[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)])
        result = np.empty_like(out)
        result[order] = out
        return result

    return run


def _time_rounds(engines: dict[str, Encode], texts: Sequence[str], rounds: int, budget_s: float,
                 max_cell_s: float = 20.0) -> dict[str, float]:
    """Best sentences/s per engine over ``rounds`` turns; each turn encodes whole batches of
    ``texts`` until ``budget_s`` is spent (at least one call). No new round starts once the
    cell has taken ``max_cell_s`` (big batches of long texts take seconds per call)."""
    best = dict.fromkeys(engines, 0.0)
    cell_started = time.perf_counter()
    for _ in range(rounds):
        if time.perf_counter() - cell_started > max_cell_s:
            break
        for name, encode in engines.items():
            done, started = 0, time.perf_counter()
            while True:
                encode(texts)
                done += len(texts)
                elapsed = time.perf_counter() - started
                if elapsed >= budget_s:
                    break
            best[name] = max(best[name], done / elapsed)
    return best


def run_bench(
    model_dir: Path | None = None,
    cache_dir: Path | None = None,
    variants: Sequence[str] = ("fp32", "int8"),
    batch_sizes: Sequence[int] = (32, 256),
    lengths: Sequence[str] = ("short", "long"),
    max_length: int = 128,
    threads: int | None = None,
    provider: str = "cpu",
    rounds: int = 3,
    budget_s: float = 0.6,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Sentences/s of torch and each ONNX ``variant`` in every (texts, batch size) cell.

    One call of an engine encodes one batch of ``batch_size`` texts (its own bucketing
    inside), ``rounds`` turns of about ``budget_s`` each per engine and cell. fp16 needs a
    GPU: it is refused on ``provider="cpu"`` (:class:`EncoderError`). torch always runs on CPU,
    so on a GPU the ratios compare a GPU graph with the CPU original.
    """
    from encoders.export import default_model_dir, ensure_exported
    from encoders.runtime import OnnxTextEncoder
    from stream.config import default_cache_dir

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    threads = threads or os.cpu_count() or 1
    source = Path(model_dir) if model_dir is not None else default_model_dir()
    say = progress or (lambda message: None)
    say("loading texts and models")
    texts = bench_texts(cache_dir, n=max(batch_sizes))
    torch_encode, mean_tokens = _torch_encoder(source, max_length, threads)
    onnx: dict[str, OnnxTextEncoder] = {}
    for variant in variants:
        directory = ensure_exported(model_dir, cache_dir, variant)
        onnx[variant] = OnnxTextEncoder(directory, provider=provider, max_length=max_length, threads=threads)
    rows: list[BenchRow] = []
    for length in lengths:
        for batch_size in batch_sizes:
            sample = texts[length][:batch_size]
            engines: dict[str, Encode] = {"torch": _sorted_batches(torch_encode, batch_size)}
            for variant, encoder in onnx.items():
                encoder.batch_size = batch_size
                engines[f"onnx-{variant}"] = encoder.encode
            for encode in engines.values():
                encode(sample[:8])  # warm-up: allocations, first-call kernels
            say(f"{length} texts, batch {batch_size}")
            rates = _time_rounds(engines, sample, rounds, budget_s)
            tokens = mean_tokens(sample)
            for name, rate in rates.items():
                variant = name.removeprefix("onnx-")
                rows.append(BenchRow(
                    engine=name, texts=length, batch_size=batch_size, mean_tokens=round(tokens, 1),
                    sentences_per_s=round(rate, 1), vs_torch=round(rate / rates["torch"], 2),
                    provider="torch-cpu" if name == "torch" else onnx[variant].providers[0].removesuffix("ExecutionProvider").lower(),
                ))
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    """A Markdown table: one row per (texts, batch), one sentences/s (× torch) column per engine."""
    engines = list(dict.fromkeys(r.engine for r in rows))
    cells: dict[tuple[str, int], dict[str, BenchRow]] = {}
    for r in rows:
        cells.setdefault((r.texts, r.batch_size), {})[r.engine] = r
    head = "| texts (mean tokens) | batch | " + " | ".join(engines) + " |"
    lines = [head, "|" + "---|" * (2 + len(engines))]
    for (texts, batch), by_engine in cells.items():
        mean = next(iter(by_engine.values())).mean_tokens
        values = []
        for engine in engines:
            r = by_engine.get(engine)
            values.append("—" if r is None else f"{r.sentences_per_s:,.0f}" if engine == "torch" else f"{r.sentences_per_s:,.0f} ({r.vs_torch:.2f}×)")
        lines.append(f"| {texts} ({mean:g}) | {batch} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def check_variants(variants: Sequence[str], provider: str) -> None:
    """fp16 graphs are for GPUs: onnxruntime's CPU kernels run most fp16 ops through casts,
    slower than fp32, so benchmarking fp16 on CPU would only mislead."""
    import onnxruntime as ort

    if "fp16" in variants and (provider == "cpu" or "CUDAExecutionProvider" not in ort.get_available_providers()):
        raise EncoderError("fp16 is a GPU variant: it needs onnxruntime's CUDA provider (pip install onnxruntime-gpu)")
