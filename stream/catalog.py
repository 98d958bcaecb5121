"""The item catalogue: item text, item-message validation, and the in-memory embedding matrix.

Every worker holds the full catalogue (items are global, users are partitioned); the matrix
is rebuilt lazily after upserts so ranking always sees one contiguous float32 array.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from stream.payloads import PayloadError, decode_object
from stream.config import LimitSettings

__all__ = ["FACTS_KEY", "Catalogue", "InvalidItem", "ItemMessage", "item_text", "item_vectors", "parse_item",
           "split_stored_attributes", "stored_attributes"]

#: Where an item record's attributes JSON keeps the item's facts (an attribute name items may not use).
FACTS_KEY = "@facts"


class InvalidItem(ValueError):
    """An item message that cannot be used; ``str(exc)`` is the dead-letter reason."""


@dataclass(slots=True, frozen=True)
class ItemMessage:
    """A catalogue item. ``facts`` (``relation → entity ids``, e.g. the director) are never
    encoder text: a tuned model learns a vector per (relation, entity) shared by tuned items,
    so a new item is linked to seen ones through them (:meth:`encoders.adapter.Adapter.adapt_items`)."""

    item_id: str
    title: str
    description: str | None
    attributes: dict[str, str | list[str]]
    facts: dict[str, list[str]] = field(default_factory=dict)


def stored_attributes(item: ItemMessage) -> dict[str, Any]:
    """The attributes JSON of the item's LMDB record: its attributes, and its facts under
    :data:`FACTS_KEY` when it has any (the record layout stays as it is)."""
    return {**item.attributes, FACTS_KEY: item.facts} if item.facts else dict(item.attributes)


def split_stored_attributes(stored: dict[str, Any]) -> tuple[dict[str, str | list[str]], dict[str, list[str]]]:
    """Inverse of :func:`stored_attributes`: ``(attributes, facts)``."""
    attributes = dict(stored)
    return attributes, attributes.pop(FACTS_KEY, None) or {}


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
    if adapter is None:
        return vectors
    return adapter.adapt_items([i.item_id for i in items], vectors, [i.facts for i in items])


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
    if FACTS_KEY in attributes:
        raise InvalidItem(f"attribute name {FACTS_KEY!r} is reserved")
    text_len = len(title) + len(description or "") + sum(len(str(v)) for v in attributes.values())
    if text_len > limits.max_text_chars:
        raise InvalidItem(f"item text longer than {limits.max_text_chars} characters")
    return ItemMessage(item_id, title, description, attributes, _parse_facts(obj.get("facts"), limits))


def _parse_facts(facts: object, limits: LimitSettings) -> dict[str, list[str]]:
    """``{relation: entity id or [entity ids]}`` → ``{relation: [entity ids]}`` (repeats dropped).

    Entity ids are ids (non-empty, at most ``limits.max_id_chars``); all relation names and
    ids together count against ``limits.max_text_chars`` like the item's text.
    """
    if facts is None:
        return {}
    if not isinstance(facts, dict):
        raise InvalidItem("facts must be an object of relation: entity id(s)")
    out: dict[str, list[str]] = {}
    size = 0
    for relation, value in facts.items():
        values = [value] if isinstance(value, str) else value
        if not relation or not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise InvalidItem(f"fact {relation!r} must be a non-empty string or a list of non-empty strings")
        if any(len(v) > limits.max_id_chars for v in values):
            raise InvalidItem(f"fact {relation!r} has an entity id longer than {limits.max_id_chars} characters")
        size += len(relation) + sum(len(v) for v in values)
        if values:
            out[relation] = list(dict.fromkeys(values))
    if size > limits.max_text_chars:
        raise InvalidItem(f"facts longer than {limits.max_text_chars} characters")
    return out


class Catalogue:
    """Item id ↔ row index, a contiguous (N, D) float32 matrix of unit embeddings, and each
    row's attributes (for the ranking's business rules, :mod:`stream.rerank`)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.attributes: list[dict[str, str | list[str]]] = []
        #: Per row, a 128-bit digest of the text the encoder saw and the attributes (None: text
        #: not given); a digest, not the text, so a large catalogue holds 16 bytes a row for it.
        self._text_keys: list[bytes | None] = []
        #: +1 per upsert: lets callers cache what they derive from the rows.
        self.version = 0
        self._rows: list[np.ndarray] = []
        self._matrix = np.zeros((0, dim), np.float32)
        self._dirty = False
        self._duplicates: tuple[int, np.ndarray, np.ndarray] = (-1, np.arange(0), np.arange(0))

    @classmethod
    def from_items(cls, items: list[ItemMessage], encoder, progress=None) -> "Catalogue":
        """Encode ``items`` into a new catalogue, in chunks (resumable through a cached
        encoder; ``progress`` gets an :class:`encoders.catalogue.EncodeProgress` per chunk);
        a tuned model's residuals are added as in :func:`item_vectors`."""
        from encoders.catalogue import encode_in_chunks

        texts = [item_text(i) for i in items]
        vectors = _with_residuals(encoder, items, encode_in_chunks(encoder, texts, progress=progress))
        catalogue = cls(encoder.dim)
        for item, vector, text in zip(items, vectors, texts):
            catalogue.upsert(item.item_id, vector, item.attributes, text)
        return catalogue

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.index

    def upsert(self, item_id: str, vector: np.ndarray, attributes: dict[str, str | list[str]] | None = None,
               text: str | None = None) -> None:
        """Add or replace a row; ``text`` (what the encoder saw) lets :attr:`duplicates` find
        repeats whose vectors differ (a tuned model's per-item residuals)."""
        vector = np.asarray(vector, np.float32).reshape(self.dim)
        attributes = dict(attributes or {})
        key = None if text is None else hashlib.blake2b(
            orjson.dumps([text, attributes], option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
        row = self.index.get(item_id)
        if row is None:
            self.index[item_id] = len(self.ids)
            self.ids.append(item_id)
            self._rows.append(vector)
            self.attributes.append(attributes)
            self._text_keys.append(key)
        else:
            self._rows[row] = vector
            self.attributes[row] = attributes
            self._text_keys[row] = key
        self._dirty = True
        self.version += 1

    @property
    def matrix(self) -> np.ndarray:
        if self._dirty:
            self._matrix = np.ascontiguousarray(np.vstack(self._rows)) if self._rows else self._matrix
            self._dirty = False
        return self._matrix

    @property
    def duplicates(self) -> tuple[np.ndarray, np.ndarray]:
        """``(canonical, repeats)``: for each row the first row with the same text and
        attributes, or, for rows upserted without their text, the same vector and attributes
        (itself for almost every row); and the rows that repeat an earlier one.

        Some catalogues list one thing twice under two ids (ml-100k has films entered twice,
        same title, year and genres). To a user they are one item, so the ranking shows only
        the first and treats having seen either as having seen it (:mod:`stream.processor`).
        The text decides where it is known: a tuned model gives each id its own residual, so
        the two entries' vectors differ. Recomputed when the catalogue changes: one dict pass
        over the texts; for the rest, a sort of the rows' first 16 bytes, then a whole-row
        comparison of the few rows that share them.
        """
        if self._duplicates[0] != self.version:
            m = self.matrix
            n = len(m)
            canonical = np.arange(n)
            first_with: dict[bytes, int] = {}
            untexted = []
            for row, key in enumerate(self._text_keys):
                if key is None:
                    untexted.append(row)
                else:
                    canonical[row] = first_with.setdefault(key, row)
            if len(untexted) > 1:  # candidates share their first columns' bytes; then compared whole
                rows = np.asarray(untexted)
                head = np.ascontiguousarray(m[rows, : min(self.dim, 4)])
                keys = head.view(np.dtype((np.void, head.itemsize * head.shape[1]))).ravel()
                _, label = np.unique(keys, return_inverse=True)
                label = label.ravel()
                shared = np.flatnonzero(np.bincount(label)[label] > 1)  # positions in rows, ascending
                groups: dict[int, list[int]] = {}  # head label -> the distinct rows seen so far
                bits = m.view(np.int32)  # bytes, not float equality (-0.0 == 0.0, NaN != NaN)
                for at in shared.tolist():
                    row = int(rows[at])
                    originals = groups.setdefault(int(label[at]), [])
                    for earlier in originals:
                        if np.array_equal(bits[earlier], bits[row]) and self.attributes[row] == self.attributes[earlier]:
                            canonical[row] = earlier
                            break
                    else:
                        originals.append(row)
            self._duplicates = (self.version, canonical, np.nonzero(canonical != np.arange(n))[0])
        return self._duplicates[1], self._duplicates[2]

    def indices(self, item_ids: list[str] | set[str]) -> np.ndarray:
        """Row indices of the known ids among ``item_ids``."""
        index = self.index
        return np.fromiter((index[i] for i in item_ids if i in index), dtype=np.int64)
