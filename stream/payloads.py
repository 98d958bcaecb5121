"""Decoding a Kafka value into a JSON object, with the size limit: shared by every topic."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["PayloadError", "decode_object"]


class PayloadError(ValueError):
    """The value is not a JSON object within the size limit; the message is the reason."""


def decode_object(payload: bytes | None, max_bytes: int) -> dict[str, Any]:
    if payload is None:
        raise PayloadError("empty value")
    if len(payload) > max_bytes:
        raise PayloadError(f"payload larger than {max_bytes} bytes")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"malformed JSON: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"value must be a JSON object, got {type(obj).__name__}")
    return obj
