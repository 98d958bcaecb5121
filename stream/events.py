"""The input event schema: raw Kafka bytes in, a validated :class:`Event` or a reason out.

Validation never raises past :func:`parse_event`'s contract: every malformed record becomes
an :class:`InvalidEvent` whose message is the dead-letter reason, so the worker keeps going.
"""

from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass
from datetime import datetime


from stream.payloads import PayloadError, decode_object
from stream.config import EVENT_KINDS, LimitSettings, WindowSettings

__all__ = ["Event", "InvalidEvent", "MAX_ID_BYTES", "parse_event", "parse_id", "parse_ts_ms"]

#: Ids become LMDB keys, which hold at most 511 bytes: the limit applies to the UTF-8 form.
MAX_ID_BYTES = 511
#: Beyond any plausible epoch-ms value (year ~33,700); keeps reasons short and ints small.
_MAX_ABS_TS_MS = 10**15


class InvalidEvent(ValueError):
    """A record that cannot be applied; ``str(exc)`` is the dead-letter reason."""


@dataclass(slots=True, frozen=True)
class Event:
    """One validated interaction. ``ts_ms`` is event time (epoch ms, UTC)."""

    user_id: str
    item_id: str
    ts_ms: int
    kind: int  # index into EVENT_KINDS
    source: str  # "topic:partition" the record came from
    offset: int
    text: str | None = None
    value: float | None = None
    event_id: str | None = None

    def __reduce__(self) -> tuple:
        # As a plain tuple of fields: windows cross to the store's owner process (stream.owner)
        # in batches of thousands, and dataclasses' slots pickling calls fields() per event.
        return (Event, (self.user_id, self.item_id, self.ts_ms, self.kind, self.source, self.offset,
                        self.text, self.value, self.event_id))


def parse_ts_ms(ts: object) -> int:
    """Epoch milliseconds (int/float) or an RFC 3339 string → epoch ms."""
    if isinstance(ts, bool):
        raise InvalidEvent("ts must be epoch milliseconds or an RFC 3339 string, got bool")
    if isinstance(ts, (int, float)):
        if not math.isfinite(ts):
            raise InvalidEvent("ts is not finite")
        if abs(ts) > _MAX_ABS_TS_MS:
            raise InvalidEvent("ts out of range (epoch milliseconds expected)")
        return int(ts)
    if isinstance(ts, str):
        try:
            parsed = datetime.fromisoformat(ts.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidEvent(f"ts is not RFC 3339: {ts[:40]!r}") from None
        if parsed.tzinfo is None:
            raise InvalidEvent("ts needs a timezone offset (RFC 3339)")
        try:
            return int(parsed.timestamp() * 1000)
        except (OverflowError, ValueError, OSError):
            raise InvalidEvent(f"ts out of range: {ts[:40]!r}") from None
    raise InvalidEvent(f"ts must be epoch milliseconds or an RFC 3339 string, got {type(ts).__name__}")


@lru_cache(maxsize=8)
def _min_ts_ms(min_ts: str) -> int:
    return parse_ts_ms(min_ts)


def parse_id(obj: dict, field: str, limits: LimitSettings) -> str:
    """``obj[field]`` as a non-empty id within the limits (ints are accepted as text)."""
    value = obj.get(field)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # tolerate numeric ids; they are compared as strings
    if not isinstance(value, str):
        raise InvalidEvent(f"{field} must be a string" if value is not None else f"missing {field}")
    if not value or not value.strip():
        raise InvalidEvent(f"{field} is empty")
    if len(value) > limits.max_id_chars:
        raise InvalidEvent(f"{field} longer than {limits.max_id_chars} characters")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates (orjson refuses them; other callers may not)
        raise InvalidEvent(f"{field} is not valid Unicode") from None
    if size > MAX_ID_BYTES:
        raise InvalidEvent(f"{field} longer than {MAX_ID_BYTES} UTF-8 bytes")
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_event(
    payload: bytes | None,
    *,
    key: bytes | None,
    kind: str,
    source: str,
    offset: int,
    now_ms: int,
    limits: LimitSettings,
    windows: WindowSettings,
) -> Event:
    """Validate one input record; raise :class:`InvalidEvent` with the reason otherwise.

    The record key must equal ``user_id``: inputs are co-partitioned by user, and a
    mis-keyed record would land on a worker that does not own the user.
    """
    try:
        obj = decode_object(payload, limits.max_payload_bytes)
    except PayloadError as exc:
        raise InvalidEvent(str(exc)) from None

    user_id = parse_id(obj, "user_id", limits)
    item_id = parse_id(obj, "item_id", limits)
    if key != user_id.encode("utf-8"):
        raise InvalidEvent("record key must equal user_id")
    if "ts" not in obj:
        raise InvalidEvent("missing ts")
    ts_ms = parse_ts_ms(obj["ts"])
    min_ms = _min_ts_ms(windows.min_ts)
    if ts_ms < min_ms or ts_ms > now_ms + windows.max_future_s * 1000:
        raise InvalidEvent(f"absurd timestamp {ts_ms} ms")

    text = obj.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise InvalidEvent("text must be a string")
        if len(text) > limits.max_text_chars:
            raise InvalidEvent(f"text longer than {limits.max_text_chars} characters")
        if not _encodable(text):
            raise InvalidEvent("text is not valid Unicode")
    value = obj.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidEvent("value must be a finite number")
        value = float(value)
    event_id = obj.get("event_id")
    if event_id is not None:
        if not isinstance(event_id, str) or not event_id or len(event_id) > limits.max_id_chars or not _encodable(event_id):
            raise InvalidEvent(f"event_id must be a non-empty string of at most {limits.max_id_chars} characters")

    return Event(
        user_id=user_id,
        item_id=item_id,
        ts_ms=ts_ms,
        kind=EVENT_KINDS.index(kind),
        source=source,
        offset=offset,
        text=text or None,
        value=value,
        event_id=event_id,
    )
