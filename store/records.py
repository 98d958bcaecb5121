"""Compact, versioned binary records for the LMDB store.

Every record starts with one format-version byte. After it come fixed-width little-endian
integers (``struct``), UTF-8 strings prefixed with their byte length, and numpy arrays as raw
little-endian bytes. No pickle anywhere; only an item's free-form ``attributes`` go through
orjson. Decoding checks every length against the buffer, so truncated or padded bytes and
unknown versions raise :class:`RecordError` (a ``ValueError``) with a one-line message, never
a half-filled record.

Profile format version 2 added a vector dtype byte (float32, or float16 on request: 384 x 2
horizons 3 KB -> 1.5 KB at about 3 significant digits) and the hashes of the user's recent
event ids (event-id dedupe). Version 3 moves the bounded history and the recent event ids
out into their own history record (:func:`encode_history`, stored in its own database), so
the profile record is the fixed-size part a ranking reads: at 384 dimensions, two horizons
and float16 about 1.6 KB, whatever the history length. Decoded vectors are always float32.

Stability: profile versions 1-3, history version 1, item version 1 and changelog versions
1-2 are frozen; :func:`decode_profile` reads every profile version (1 and 2 carry their
history inside), the encoders write the newest. Change a layout only by adding a version,
and keep decoding the old ones.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from collections.abc import Iterable
from itertools import accumulate
from operator import sub

import hashlib

import numpy as np
import orjson

__all__ = [
    "HistoryEntry",
    "ItemRecord",
    "ProfileRecord",
    "RecordError",
    "decode_changelog",
    "decode_history",
    "decode_item",
    "decode_profile",
    "encode_changelog",
    "encode_history",
    "encode_item",
    "encode_profile",
    "event_id_hash",
]

PROFILE_VERSION = 3
HISTORY_VERSION = 1
#: Vector dtypes a profile record may hold (code = index).
VECTOR_DTYPES = ("float32", "float16")
_VECTOR_NP = (np.dtype("<f4"), np.dtype("<f2"))
_F16_MAX = 65504.0
ITEM_VERSION = 1
CHANGELOG_VERSION = 2

_F32 = np.dtype("<f4")
_F64 = np.dtype("<f8")


class RecordError(ValueError):
    """Bytes that are not a record this code can read (unknown version, truncated, padded)."""


def _eq(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    for f in fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
                return False
            if x.dtype != y.dtype or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


@dataclass(slots=True)
class HistoryEntry:
    """One applied event in a profile's history."""

    item_id: str
    ts_ms: int  #: event time, epoch ms
    kind: int  #: index into ``stream.config.EVENT_KINDS``: 0 view, 1 click, 2 purchase


@dataclass(slots=True, eq=False)
class ProfileRecord:
    """A user's profile, as stored under the user id in the ``profiles`` database.

    ``vectors`` and ``weights`` are decayed sums referenced at ``last_ts_ms`` (event time);
    ``updated_ms`` is processing time. ``==`` compares arrays by dtype and value.
    """

    user_id: str
    vectors: np.ndarray  #: float32 (H, dim): per-horizon decayed weighted sum of item embeddings
    weights: np.ndarray  #: float64 (H,): per-horizon decayed sum of event weights
    last_ts_ms: int  #: event time of the newest applied event
    event_count: int
    version: int  #: profile_version: +1 per flush that changed the profile
    applied: dict[str, int]  #: "topic:partition" -> highest input offset applied
    history: list[HistoryEntry]  #: oldest first, bounded by the caller
    kind_counts: list[int]  #: events applied per kind
    updated_ms: int  #: processing time of the last flush
    #: :func:`event_id_hash` of the newest event ids applied, oldest first, bounded by the caller
    recent_ids: list[int] = field(default_factory=list)

    __eq__ = _eq


def event_id_hash(event_id: str) -> int:
    """A 64-bit hash of an event id (blake2b): 8 bytes per remembered id, collisions ~2^-64."""
    return int.from_bytes(hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(slots=True, eq=False)
class ItemRecord:
    """A catalogue item and its embedding, stored under the item id in ``items``."""

    item_id: str
    title: str
    text: str  #: the text that was encoded
    vector: np.ndarray  #: float32 (dim,), L2-normalised by the caller
    attributes: dict[str, str | list[str]]
    updated_ms: int

    __eq__ = _eq


# -- writing ------------------------------------------------------------------------------

_HDR = struct.Struct("<B")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_PROFILE_FIXED = struct.Struct("<qqqqHI")  # last_ts_ms, event_count, version, updated_ms, H, dim
_ITEM_FIXED = struct.Struct("<qI")  # updated_ms, dim
_APPLIED = struct.Struct("<q")


def _str16(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ValueError(f"string of {len(b)} bytes is too long for a record (max 65535)")
    return _U16.pack(len(b)) + b


def _str32(s: str) -> bytes:
    b = s.encode("utf-8")
    return _U32.pack(len(b)) + b


def _history(entries: list[HistoryEntry]) -> bytes:
    """Columns: count, flags, id lengths, ids, first ts, ts deltas, kinds.

    flags bit 0: id lengths as uint16 (else uint8); bit 1: ts deltas as int64 (else int32).
    Most ids are short and most histories span less than 24 days, so the usual entry is
    1 + len(id) + 4 + 1 bytes. Plain ``struct`` over Python lists: for the usual 50
    entries, several numpy calls each cost more than the work they do.
    """
    n = len(entries)
    if n == 0:
        return _U32.pack(0)
    names = [e.item_id for e in entries]
    text = "".join(names)
    blob = text.encode("utf-8")
    if len(blob) == len(text):  # ASCII: byte lengths are character lengths, one encode
        lens = list(map(len, names))
    else:
        ids = [name.encode("utf-8") for name in names]
        lens, blob = list(map(len, ids)), b"".join(ids)
    ts = [e.ts_ms for e in entries]
    if min(ts) < -(2**63) or max(ts) >= 2**63:  # else a delta below would wrap silently
        raise ValueError("history event time outside int64")
    try:
        kinds = bytes([e.kind for e in entries])
    except ValueError:
        raise ValueError("history kind must be in 0..255") from None
    longest = max(lens)
    if longest > 0xFFFF:
        raise ValueError("history item id too long for a record (max 65535 bytes)")
    wide_ids = longest > 0xFF
    deltas = list(map(sub, ts[1:], ts))
    if n > 1 and (min(deltas) < -(2**63) or max(deltas) >= 2**63):  # int64 arithmetic, as the decoder undoes it
        deltas = list(map(_wrap64, deltas))
    wide_ts = n > 1 and (min(deltas) < -(2**31) or max(deltas) >= 2**31)
    flags = int(wide_ids) | (int(wide_ts) << 1)
    return b"".join((
        _U32.pack(n),
        _U8.pack(flags),
        struct.pack(f"<{n}H", *lens) if wide_ids else bytes(lens),
        blob,
        _I64.pack(ts[0]),
        struct.pack(f"<{n - 1}{'q' if wide_ts else 'i'}", *deltas),
        kinds,
    ))


def _wrap64(d: int) -> int:
    """``d`` as int64 arithmetic leaves it (two's complement wrap-around)."""
    return d if -(2**63) <= d < 2**63 else (d + 2**63) % 2**64 - 2**63


def encode_profile(rec: ProfileRecord, vector_dtype: str = "float32") -> bytes:
    """Serialise ``rec`` without its history (format version 3; the history and recent event
    ids go through :func:`encode_history`). Vectors as ``vector_dtype``, weights float64.

    float16 rounds the vectors (relative error <= 2^-11); a record whose vectors exceed
    float16's range (65504) is written as float32 instead (the dtype is per record).

    :raises ValueError: if ``vectors`` is not 2-D, ``weights`` does not have one value per
        horizon, or a string or count does not fit its field.
    """
    code = VECTOR_DTYPES.index(vector_dtype)
    vectors = np.ascontiguousarray(rec.vectors, dtype=_F32)
    if code == 1 and vectors.size and not float(np.abs(vectors).max()) <= _F16_MAX:
        code = 0
    weights = np.ascontiguousarray(rec.weights, dtype=_F64)
    if vectors.ndim != 2 or weights.shape != (vectors.shape[0],):
        raise ValueError(
            f"profile arrays must be vectors (H, dim) and weights (H,), got {vectors.shape} and {weights.shape}"
        )
    h, dim = vectors.shape
    if h > 0xFFFF:
        raise ValueError(f"too many horizons: {h}")
    parts = [
        _HDR.pack(PROFILE_VERSION),
        _str16(rec.user_id),
        _PROFILE_FIXED.pack(rec.last_ts_ms, rec.event_count, rec.version, rec.updated_ms, h, dim),
        _U8.pack(code),
        vectors.astype(_VECTOR_NP[code]).tobytes(),
        weights.tobytes(),
        _U8.pack(len(rec.kind_counts)),
        np.asarray(rec.kind_counts, dtype="<i8").tobytes(),
        _U16.pack(len(rec.applied)),
    ]
    for source, offset in rec.applied.items():
        parts.append(_str16(source))
        parts.append(_APPLIED.pack(offset))
    return b"".join(parts)


def encode_history(rec: ProfileRecord) -> bytes:
    """Serialise ``rec``'s bounded history and recent event-id hashes (history version 1).

    :raises ValueError: an item id, kind, event time or count that does not fit its field.
    """
    if len(rec.recent_ids) > 0xFFFF:
        raise ValueError(f"too many recent event ids: {len(rec.recent_ids)} (max 65535)")
    return b"".join((
        _HDR.pack(HISTORY_VERSION),
        _history(rec.history),
        _U16.pack(len(rec.recent_ids)),
        np.asarray(rec.recent_ids, dtype="<u8").tobytes(),
    ))


def encode_item(rec: ItemRecord) -> bytes:
    """Serialise ``rec`` (format version 1); the vector as float32, attributes as JSON."""
    vector = np.ascontiguousarray(rec.vector, dtype=_F32)
    if vector.ndim != 1:
        raise ValueError(f"item vector must be 1-D, got shape {vector.shape}")
    return b"".join((
        _HDR.pack(ITEM_VERSION),
        _str16(rec.item_id),
        _str32(rec.title),
        _str32(rec.text),
        _ITEM_FIXED.pack(rec.updated_ms, vector.shape[0]),
        vector.tobytes(),
        _str32_bytes(orjson.dumps(rec.attributes)),
    ))


def _str32_bytes(b: bytes) -> bytes:
    return _U32.pack(len(b)) + b


def encode_changelog(profile: bytes, history: bytes | None, seen: Iterable[str]) -> bytes:
    """A changelog value (format version 2): an encoded profile, its history record (or
    None) and the user's seen item ids.

    The seen set travels with the profile so that a worker restoring the partition can keep
    excluding everything the user interacted with, not only the bounded history.
    """
    ids = sorted(seen)
    return b"".join((
        _HDR.pack(CHANGELOG_VERSION), _str32_bytes(profile), _str32_bytes(history or b""), _U32.pack(len(ids)),
        *map(_str16, ids),
    ))


# -- reading ------------------------------------------------------------------------------


class _Reader:
    """Bounds-checked cursor over a record's bytes."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise RecordError(f"truncated {self.what} record: needs {end} bytes, has {len(self.data)}")
        view = self.data[self.pos : end]
        self.pos = end
        return view

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))

    def u8(self) -> int:
        return self.unpack(_U8)[0]

    def u16(self) -> int:
        return self.unpack(_U16)[0]

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def i64(self) -> int:
        return self.unpack(_I64)[0]

    def str16(self) -> str:
        return self._utf8(self.take(self.u16()))

    def str32(self) -> str:
        return self._utf8(self.take(self.u32()))

    def array(self, dtype: np.dtype | str, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        # A writable copy: callers update profiles in place.
        return np.frombuffer(self.take(dt.itemsize * count), dtype=dt).copy()

    def _utf8(self, view: memoryview) -> str:
        try:
            return str(view, "utf-8")
        except UnicodeDecodeError:
            raise RecordError(f"invalid UTF-8 in {self.what} record at byte {self.pos}") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise RecordError(f"{self.what} record has {len(self.data) - self.pos} trailing bytes")

    def version(self, *known: int) -> int:
        v = self.u8()
        if v not in known:
            raise RecordError(f"unknown {self.what} record version {v} (this code reads {', '.join(map(str, known))})")
        return v


def _read_history(r: _Reader) -> list[HistoryEntry]:
    n = r.u32()
    if n == 0:
        return []
    flags = r.u8()
    if flags & ~3:
        raise RecordError(f"bad history flags {flags:#x} in {r.what} record")
    lens = struct.unpack(f"<{n}{'H' if flags & 1 else 'B'}", r.take(n * (2 if flags & 1 else 1)))
    ends = list(accumulate(lens))
    blob = r.take(ends[-1]).tobytes()
    ts0 = r.i64()
    deltas = struct.unpack(f"<{n - 1}{'q' if flags & 2 else 'i'}", r.take((n - 1) * (8 if flags & 2 else 4)))
    ts = list(accumulate(deltas, initial=ts0))
    if min(ts) < -(2**63) or max(ts) >= 2**63:  # undo int64 wrap-around of the encoder's diff
        ts = [(t + 2**63) % 2**64 - 2**63 for t in ts]
    kinds = r.take(n).tobytes()
    try:
        text = blob.decode("utf-8")
        if len(text) == len(blob):  # ASCII: character and byte offsets agree, slice once decoded
            ids = [text[s:e] for s, e in zip((0, *ends), ends)]
        else:  # each id must be valid UTF-8 on its own
            ids = [blob[s:e].decode("utf-8") for s, e in zip((0, *ends), ends)]
    except UnicodeDecodeError:
        raise RecordError(f"invalid UTF-8 in {r.what} history") from None
    return list(map(HistoryEntry, ids, ts, kinds))


def decode_profile(data: bytes, history: bytes | None = None) -> ProfileRecord:
    """Inverse of :func:`encode_profile` and :func:`encode_history`; arrays come back as
    writable copies.

    ``history`` is the user's history record; without it a version-3 profile has an empty
    history (versions 1 and 2 carry theirs inside, which a history record overrides).

    :raises RecordError: unknown version, truncated or trailing bytes, invalid UTF-8.
    """
    r = _Reader(data, "profile")
    format_version = r.version(1, 2, PROFILE_VERSION)
    user_id = r.str16()
    last_ts_ms, event_count, version, updated_ms, h, dim = r.unpack(_PROFILE_FIXED)
    code = r.u8() if format_version >= 2 else 0
    if code >= len(_VECTOR_NP):
        raise RecordError(f"unknown vector dtype code {code} in profile record")
    vectors = r.array(_VECTOR_NP[code], h * dim).reshape(h, dim).astype(_F32, copy=False)
    weights = r.array(_F64, h)
    kind_counts = r.array("<i8", r.u8()).tolist()
    applied = {}
    for _ in range(r.u16()):
        source = r.str16()
        applied[source] = r.i64()
    entries: list[HistoryEntry] = []
    recent_ids: list[int] = []
    if format_version < 3:
        entries = _read_history(r)
        recent_ids = r.array("<u8", r.u16()).tolist() if format_version == 2 else []
    r.end()
    if history is not None:
        entries, recent_ids = decode_history(history)
    return ProfileRecord(
        user_id, vectors, weights, last_ts_ms, event_count, version, applied, entries, kind_counts, updated_ms,
        recent_ids,
    )


def decode_history(data: bytes) -> tuple[list[HistoryEntry], list[int]]:
    """Inverse of :func:`encode_history`: the history entries and recent event-id hashes.

    :raises RecordError: unknown version, truncated or trailing bytes, invalid UTF-8.
    """
    r = _Reader(data, "history")
    r.version(HISTORY_VERSION)
    entries = _read_history(r)
    recent_ids = r.array("<u8", r.u16()).tolist()
    r.end()
    return entries, recent_ids


def decode_item(data: bytes) -> ItemRecord:
    """Inverse of :func:`encode_item`.

    :raises RecordError: unknown version, truncated or trailing bytes, invalid UTF-8 or JSON.
    """
    r = _Reader(data, "item")
    r.version(ITEM_VERSION)
    item_id = r.str16()
    title = r.str32()
    text = r.str32()
    updated_ms, dim = r.unpack(_ITEM_FIXED)
    vector = r.array(_F32, dim)
    try:
        attributes = orjson.loads(r.take(r.u32()))
    except orjson.JSONDecodeError:
        raise RecordError("invalid JSON attributes in item record") from None
    r.end()
    return ItemRecord(item_id, title, text, vector, attributes, updated_ms)


def decode_changelog(data: bytes) -> tuple[ProfileRecord, set[str]]:
    """Inverse of :func:`encode_changelog`: the profile and the seen item ids.

    :raises RecordError: unknown version, truncated or trailing bytes, a bad inner profile.
    """
    r = _Reader(data, "changelog")
    version = r.version(1, CHANGELOG_VERSION)
    profile_bytes = r.take(r.u32()).tobytes()
    history = r.take(r.u32()).tobytes() if version >= 2 else b""
    profile = decode_profile(profile_bytes, history or None)
    seen = {r.str16() for _ in range(r.u32())}
    r.end()
    return profile, seen
