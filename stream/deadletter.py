"""Dead-letter records: the raw payload, where it came from, and why it was rejected."""

from __future__ import annotations

import base64

import orjson

__all__ = ["MAX_DLQ_PAYLOAD", "dead_letter", "reason_category"]

#: Payloads are cut to this many bytes so an oversized record still fits the DLQ topic.
MAX_DLQ_PAYLOAD = 64 * 1024


def reason_category(reason: str) -> str:
    """A short, bounded label for metrics: the reason up to its first ':' or digit."""
    head = reason.split(":", 1)[0]
    return "".join(c for c in head if not c.isdigit()).strip().replace(" ", "_")[:40] or "other"


def dead_letter(raw: bytes | None, *, topic: str, partition: int, offset: int, reason: str, now_ms: int) -> bytes:
    """JSON bytes for ``recstream.dlq``; non-UTF-8 payloads are base64-encoded."""
    body = raw or b""
    truncated = len(body) > MAX_DLQ_PAYLOAD
    body = body[:MAX_DLQ_PAYLOAD]
    try:
        payload, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(body).decode("ascii"), "base64"
    return orjson.dumps(
        {
            "reason": reason,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "payload": payload,
            "payload_encoding": encoding,
            "payload_truncated": truncated,
            "ts": now_ms,
        }
    )
