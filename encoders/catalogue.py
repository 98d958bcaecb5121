"""Encode a large catalogue in chunks, with progress, resumable after an interruption.

Each chunk goes through a :class:`~encoders.cache.CachedEncoder`, whose LMDB cache commits
the chunk's vectors before the next chunk starts. An interrupted run therefore keeps every
finished chunk, and a re-run finds them in the cache and encodes only the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

__all__ = ["EncodeProgress", "encode_in_chunks", "progress_bar"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeProgress:
    """Where a chunked encoding stands after a chunk (``items_per_s`` over this run so far)."""

    done: int
    total: int
    elapsed_s: float

    @property
    def items_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.items_per_s
        return (self.total - self.done) / rate if rate > 0 else None


def encode_in_chunks(
    encoder,
    texts: Sequence[str],
    chunk_size: int = 1024,
    progress: Callable[[EncodeProgress], None] | None = None,
) -> np.ndarray:
    """Vectors for ``texts`` (row *i* for ``texts[i]``), ``chunk_size`` texts per encoder call.

    Give a cached encoder to make the work resumable: each chunk is stored as soon as it is
    encoded. ``progress`` is called after every chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = np.empty((len(texts), encoder.dim), np.float32)
    started = time.perf_counter()
    for start in range(0, len(texts), chunk_size):
        part = texts[start : start + chunk_size]
        out[start : start + len(part)] = encoder.encode(part)
        if progress is not None:
            progress(EncodeProgress(start + len(part), len(texts), time.perf_counter() - started))
    log.info("encoded %d texts in %.1f s", len(texts), time.perf_counter() - started)
    return out


@contextmanager
def progress_bar(description: str, total: int, console=None) -> Iterator[Callable[[EncodeProgress], None]]:
    """A rich progress bar (done/total, items/s, ETA) fed by :func:`encode_in_chunks`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}")]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, rate="")

        def update(p: EncodeProgress) -> None:
            eta = f", ETA {p.eta_s:,.0f} s" if p.eta_s is not None and p.done < p.total else ""
            bar.update(task, completed=p.done, rate=f"{p.items_per_s:,.0f} items/s{eta}")

        yield update
