"""EmbeddingCache and CachedEncoder: hits skip the encoder, bytes round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest

from encoders import CachedEncoder, EmbeddingCache

from encoder_texts import SENTENCES


class Counting:
    """A thin wrapper that records what reaches the real encoder."""

    def __init__(self, encoder):
        self.inner = encoder
        self.dim, self.model_id, self.max_length = encoder.dim, encoder.model_id, encoder.max_length
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return self.inner.encode(texts)


@pytest.fixture
def cache(tmp_path):
    with EmbeddingCache(tmp_path / "embeddings.lmdb", map_size_mb=1) as c:
        yield c


def test_second_encode_is_served_from_the_cache(encoder, cache):
    counting = Counting(encoder)
    cached = CachedEncoder(counting, cache)
    texts = SENTENCES + SENTENCES[:5]  # repeats are encoded once
    first = cached.encode(texts)
    assert counting.calls == [SENTENCES]
    np.testing.assert_allclose(first, encoder.encode(texts), atol=1e-6)
    second = cached.encode(texts)
    assert len(counting.calls) == 1
    assert second.tobytes() == first.tobytes()
    assert cached.dim == 384 and cached.model_id == encoder.model_id


def test_only_misses_are_encoded(encoder, cache):
    counting = Counting(encoder)
    cached = CachedEncoder(counting, cache)
    cached.encode(SENTENCES[:3])
    mixed = cached.encode([SENTENCES[0], "brand new text", SENTENCES[1], "brand new text"])
    assert counting.calls[1] == ["brand new text"]
    assert mixed.shape == (4, 384) and mixed[1].tobytes() == mixed[3].tobytes()
    assert cached.encode([]).shape == (0, 384)


def test_survives_reopening_and_keys_by_model(encoder, tmp_path):
    path = tmp_path / "embeddings.lmdb"
    with EmbeddingCache(path) as c:
        CachedEncoder(encoder, c).encode(["persisted"])
    with EmbeddingCache(path) as c:
        counting = Counting(encoder)
        CachedEncoder(counting, c).encode(["persisted"])
        assert counting.calls == []
        assert c.get_many("another-model", ["persisted"]) == [None]


def test_cache_key_includes_max_length(encoder, cache):
    """Truncation changes long texts' vectors, so another max_length must not hit."""
    short = Counting(type(encoder)(encoder.export_dir, provider="cpu", max_length=16))
    CachedEncoder(Counting(encoder), cache).encode(["some text"])
    CachedEncoder(short, cache).encode(["some text"])
    assert short.calls == [["some text"]]


def test_raw_float32_bytes_and_map_growth(cache):
    texts = [f"t{i}" for i in range(3000)]
    vectors = np.random.default_rng(0).random((3000, 384), dtype=np.float32)  # 4.6 MB > 1 MB map
    cache.put_many("m", texts, vectors)
    got = cache.get_many("m", texts)
    assert all(g.dtype == np.float32 and g.tobytes() == v.tobytes() for g, v in zip(got, vectors))
    with cache.env.begin() as txn:
        assert txn.get(cache.key("m", "t0")) == vectors[0].astype("<f4").tobytes()
    with pytest.raises(ValueError):
        cache.put_many("m", ["a"], vectors[:2])
