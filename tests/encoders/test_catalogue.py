"""Chunked catalogue encoding: progress per chunk, and a re-run after an interruption
encodes only what the first run did not finish."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import orjson
import pytest

from encoders import CachedEncoder, EmbeddingCache
from encoders.catalogue import encode_in_chunks

from encoder_texts import SENTENCES

TEXTS = [f"{s} #{n}" for n in range(2) for s in SENTENCES]  # 40 distinct texts


class Interrupting:
    """The real encoder, recording what reaches it; raises KeyboardInterrupt on call ``stop_at``."""

    def __init__(self, encoder, stop_at: int | None = None):
        self.inner, self.stop_at = encoder, stop_at
        self.dim, self.model_id, self.max_length = encoder.dim, encoder.model_id, encoder.max_length
        self.calls: list[list[str]] = []

    def encode(self, texts):
        if self.stop_at is not None and len(self.calls) + 1 == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append(list(texts))
        return self.inner.encode(texts)


def test_interrupted_encoding_resumes_where_it_stopped(encoder, tmp_path):
    path = tmp_path / "embeddings.lmdb"
    first = Interrupting(encoder, stop_at=3)
    with EmbeddingCache(path) as cache, pytest.raises(KeyboardInterrupt):
        encode_in_chunks(CachedEncoder(first, cache), TEXTS, chunk_size=8)
    assert [len(c) for c in first.calls] == [8, 8]  # two chunks committed before the interrupt

    second = Interrupting(encoder)
    with EmbeddingCache(path) as cache:
        cached = CachedEncoder(second, cache)
        vectors = encode_in_chunks(cached, TEXTS, chunk_size=8)
    assert [t for call in second.calls for t in call] == TEXTS[16:]  # only the rest
    assert cached.encoded == len(TEXTS) - 16
    np.testing.assert_allclose(vectors, encoder.encode(TEXTS), atol=1e-5)


def test_progress_after_every_chunk(encoder):
    seen = []
    vectors = encode_in_chunks(encoder, TEXTS[:10], chunk_size=4, progress=seen.append)
    assert [p.done for p in seen] == [4, 8, 10] and {p.total for p in seen} == {10}
    assert all(p.items_per_s > 0 for p in seen)
    assert seen[-1].eta_s == 0 and seen[0].eta_s > 0
    assert vectors.shape == (10, 384)
    assert encode_in_chunks(encoder, [], progress=seen.append).shape == (0, 384)
    with pytest.raises(ValueError):
        encode_in_chunks(encoder, TEXTS, chunk_size=0)


def test_cli_encode_fills_the_cache_then_hits_it(fp32_dir, tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_bytes(b"\n".join(orjson.dumps({"item_id": str(i), "title": t or "untitled"}) for i, t in enumerate(SENTENCES)))
    env_args = ["--model", str(fp32_dir), "encoders", "encode", str(items), "--chunk-size", "7"]
    env = {"RECSTREAM_ENCODER__CACHE_DIR": str(tmp_path / "cache"), "RECSTREAM_ENCODER__PROVIDER": "cpu"}

    def run():
        return subprocess.run([sys.executable, "-m", "stream.cli", *env_args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env})

    first, second = run(), run()
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"{len(SENTENCES)} items: {len(SENTENCES)} encoded, 0 from the cache" in first.stdout
    assert f"{len(SENTENCES)} items: 0 encoded, {len(SENTENCES)} from the cache" in second.stdout
    assert (tmp_path / "cache" / "embeddings.lmdb").is_dir()
