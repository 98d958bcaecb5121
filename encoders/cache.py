"""An LMDB cache of embeddings keyed by sha256(model id, text): no text is encoded twice.

Values are the vector's raw little-endian float32 bytes (no pickle). The cache is shared by
every process on the machine (LMDB is multi-process safe). Commits are not fsync'd: after
a power loss the cache may miss recent entries, which only costs re-encoding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import lmdb
import numpy as np

__all__ = ["CachedEncoder", "EmbeddingCache"]

_F32 = np.dtype("<f4")


class EmbeddingCache:
    """Vectors by ``(model_id, text)`` in an LMDB environment at ``path`` (a directory).

    The map grows by doubling when full, so ``map_size_mb`` is only the starting size.
    Safe to share between threads; ``put_many`` is one write transaction.
    """

    def __init__(self, path: Path, map_size_mb: int = 512) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(self.path), map_size=map_size_mb << 20, sync=False, metasync=False)

    @staticmethod
    def key(model_id: str, text: str) -> bytes:
        """sha256(model_id + NUL + text), 32 bytes; lone surrogates in ``text`` are allowed."""
        return hashlib.sha256(model_id.encode() + b"\0" + text.encode("utf-8", "surrogatepass")).digest()

    def get_many(self, model_id: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        """One float32 vector per text, or ``None`` where the cache has none; one read txn."""
        with self.env.begin() as txn:
            raw = [txn.get(self.key(model_id, t)) for t in texts]
        return [np.frombuffer(r, _F32).astype(np.float32) if r is not None else None for r in raw]

    def put_many(self, model_id: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` for ``texts[i]``, all in one write transaction."""
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        items = [(self.key(model_id, t), np.asarray(v, _F32).tobytes()) for t, v in zip(texts, vectors)]
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in items:
                        txn.put(k, v)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CachedEncoder:
    """An encoder in front of an :class:`EmbeddingCache`, with the same ``encode`` contract.

    Only texts the cache lacks reach ``encoder.encode``, each once per call however often
    it repeats; their vectors are stored before returning. The cache key includes
    ``max_length`` as well as ``model_id``, since truncation changes long texts' vectors.
    """

    def __init__(self, encoder, cache: EmbeddingCache) -> None:
        self.encoder = encoder
        self.cache = cache
        self.dim: int = encoder.dim
        self.model_id: str = encoder.model_id
        self.adapter = getattr(encoder, "adapter", None)
        self.max_length: int | None = getattr(encoder, "max_length", None)
        self._namespace = f"{self.model_id}/max_length={self.max_length}"
        #: texts that missed the cache and went to the encoder, over this object's life
        self.encoded = 0

    @property
    def providers(self) -> list[str]:
        return list(getattr(self.encoder, "providers", []))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``(len(texts), dim)``, row *i* for ``texts[i]``, cached or freshly encoded."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one str")
        texts = list(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        cached = [v if v is not None and v.shape == (self.dim,) else None for v in self.cache.get_many(self._namespace, texts)]
        missing = list(dict.fromkeys(t for t, v in zip(texts, cached) if v is None))
        fresh: dict[str, np.ndarray] = {}
        if missing:
            vectors = self.encoder.encode(missing)
            self.encoded += len(missing)
            self.cache.put_many(self._namespace, missing, vectors)
            fresh = dict(zip(missing, vectors))
        for i, (text, vector) in enumerate(zip(texts, cached)):
            out[i] = vector if vector is not None else fresh[text]
        return out
