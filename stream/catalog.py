"""The item catalogue: item text, item-message validation, and the in-memory embedding matrix.

Every worker holds the full catalogue (items are global, users are partitioned); the matrix
is rebuilt lazily after upserts so ranking always sees one contiguous float32 array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.payloads import PayloadError, decode_object
from stream.config import LimitSettings

__all__ = ["Catalogue", "InvalidItem", "ItemMessage", "item_text", "item_vectors", "parse_item"]


class InvalidItem(ValueError):
    """An item message that cannot be used; ``str(exc)`` is the dead-letter reason."""


@dataclass(slots=True, frozen=True)
class ItemMessage:
    item_id: str
    title: str
    description: str | None
    attributes: dict[str, str | list[str]]


def item_text(item: ItemMessage) -> str:
    """The text the encoder sees: ``Title (year). Genres: a, b. Other: c. Description``.

    ``year`` joins the title, as titles are usually cited; every other attribute becomes a
    ``Name: values`` sentence in sorted order so the text (and its cache key) is stable.
    """
    year = item.attributes.get("year")
    head = f"{item.title} ({year})" if isinstance(year, str) and year else item.title
    parts = [head]
    for name in sorted(item.attributes):
        if name == "year":
            continue
        value = item.attributes[name]
        values = value if isinstance(value, list) else [value]
        if values:
            parts.append(f"{name.replace('_', ' ').capitalize()}: {', '.join(values)}")
    if item.description:
        parts.append(item.description)
    return ". ".join(parts)


def item_vectors(encoder, items: list[ItemMessage], texts: list[str] | None = None) -> np.ndarray:
    """The catalogue vectors of ``items``: the encoder's text vectors, plus, for a tuned
    model, the learned residual of each item seen in tuning (one batched encoder call)."""
    return _with_residuals(encoder, items, encoder.encode(texts if texts is not None else [item_text(i) for i in items]))


def _with_residuals(encoder, items: list[ItemMessage], vectors: np.ndarray) -> np.ndarray:
    adapter = getattr(encoder, "adapter", None)
    return adapter.adapt_items([i.item_id for i in items], vectors) if adapter is not None else vectors


def parse_item(payload: bytes | None, limits: LimitSettings) -> ItemMessage:
    """Validate a catalogue message; raise :class:`InvalidItem` with the reason."""
    try:
        obj = decode_object(payload, limits.max_payload_bytes)
    except PayloadError as exc:
        raise InvalidItem(str(exc)) from None
    item_id, title = obj.get("item_id"), obj.get("title")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not item_id.strip() or len(item_id) > limits.max_id_chars:
        raise InvalidItem(f"item_id must be a non-empty string of at most {limits.max_id_chars} characters")
    try:
        if len(item_id.encode("utf-8")) > 511:  # an LMDB key
            raise InvalidItem("item_id longer than 511 UTF-8 bytes")
    except UnicodeEncodeError:
        raise InvalidItem("item_id is not valid Unicode") from None
    if not isinstance(title, str) or not title.strip():
        raise InvalidItem("title must be a non-empty string")
    description = obj.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidItem("description must be a string")
    attributes = obj.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise InvalidItem("attributes must be an object")
    for name, value in attributes.items():
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not ok:
            raise InvalidItem(f"attribute {name!r} must be a string or a list of strings")
    text_len = len(title) + len(description or "") + sum(len(str(v)) for v in attributes.values())
    if text_len > limits.max_text_chars:
        raise InvalidItem(f"item text longer than {limits.max_text_chars} characters")
    return ItemMessage(item_id, title, description, attributes)


class Catalogue:
    """Item id ↔ row index, a contiguous (N, D) float32 matrix of unit embeddings, and each
    row's attributes (for the ranking's business rules, :mod:`stream.rerank`)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.attributes: list[dict[str, str | list[str]]] = []
        #: +1 per upsert: lets callers cache what they derive from the rows.
        self.version = 0
        self._rows: list[np.ndarray] = []
        self._matrix = np.zeros((0, dim), np.float32)
        self._dirty = False

    @classmethod
    def from_items(cls, items: list[ItemMessage], encoder, progress=None) -> "Catalogue":
        """Encode ``items`` into a new catalogue, in chunks (resumable through a cached
        encoder; ``progress`` gets an :class:`encoders.catalogue.EncodeProgress` per chunk);
        a tuned model's residuals are added as in :func:`item_vectors`."""
        from encoders.catalogue import encode_in_chunks

        vectors = _with_residuals(encoder, items, encode_in_chunks(encoder, [item_text(i) for i in items], progress=progress))
        catalogue = cls(encoder.dim)
        for item, vector in zip(items, vectors):
            catalogue.upsert(item.item_id, vector, item.attributes)
        return catalogue

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.index

    def upsert(self, item_id: str, vector: np.ndarray, attributes: dict[str, str | list[str]] | None = None) -> None:
        vector = np.asarray(vector, np.float32).reshape(self.dim)
        row = self.index.get(item_id)
        if row is None:
            self.index[item_id] = len(self.ids)
            self.ids.append(item_id)
            self._rows.append(vector)
            self.attributes.append(dict(attributes or {}))
        else:
            self._rows[row] = vector
            self.attributes[row] = dict(attributes or {})
        self._dirty = True
        self.version += 1

    @property
    def matrix(self) -> np.ndarray:
        if self._dirty:
            self._matrix = np.ascontiguousarray(np.vstack(self._rows)) if self._rows else self._matrix
            self._dirty = False
        return self._matrix

    def indices(self, item_ids: list[str] | set[str]) -> np.ndarray:
        """Row indices of the known ids among ``item_ids``."""
        index = self.index
        return np.fromiter((index[i] for i in item_ids if i in index), dtype=np.int64)
