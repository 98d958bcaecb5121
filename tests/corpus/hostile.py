"""The hostile-input corpus: records no worker may choke on, each with the reason it must give.

Shared by the unit tests (``parse_event`` / ``parse_item`` directly) and the integration test
(published to the real broker between valid events). A case is
``(name, key, value, reason)``: ``reason`` is a substring of the dead-letter reason.
Cases whose reason is only known at flush time (unknown item, duplicate ``event_id``) are
marked ``flush=True``: ``parse_event`` accepts them and the processor rejects them.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

__all__ = ["Case", "TS", "event_cases", "item_cases"]

#: A plausible event time (2023-11-14) inside the accepted range.
TS = 1_700_000_000_000


@dataclass(frozen=True)
class Case:
    name: str
    key: bytes | None
    value: bytes | None
    reason: str
    flush: bool = False  # rejected by the processor (after parsing), not by parse_event


def _event(user: str, **fields) -> bytes:
    return orjson.dumps({"user_id": user, "item_id": "1", "ts": TS, **fields})


def event_cases(user: str = "victim", known_item: str = "1") -> list[Case]:
    """Every hostile input kind the issue names, against the user id ``user``."""
    k = user.encode()
    ok = f'"user_id":"{user}","item_id":"{known_item}"'.encode()
    deep = b'{' + ok + b',"x":' + b"[" * 5000 + b"]" * 5000 + b',"ts":1700000000000}'
    big_text = b'{' + ok + b',"ts":1700000000000,"text":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    padded = b'{' + ok + b',"ts":1700000000000}' + b" " * 1_000_000
    return [
        Case("invalid utf-8 bytes", k, b"\xff\xfe\x00\x80", "malformed JSON"),
        Case("invalid utf-8 inside a string", k, b'{"user_id":"\xc3\x28","item_id":"1","ts":1700000000000}', "malformed JSON"),
        Case("not json", k, b"{this is not json", "malformed JSON"),
        Case("truncated json", k, b'{"user_id":"' + k, "malformed JSON"),
        Case("null value", k, None, "empty value"),
        Case("empty bytes", k, b"", "malformed JSON"),
        Case("json array", k, b"[1, 2, 3]", "must be a JSON object"),
        Case("json string", k, b'"hello"', "must be a JSON object"),
        Case("json null", k, b"null", "must be a JSON object"),
        Case("wrong field names", k, orjson.dumps({"user": user, "item": "1", "time": TS}), "missing user_id"),
        Case("missing item_id", k, orjson.dumps({"user_id": user, "ts": TS}), "missing item_id"),
        Case("missing ts", k, orjson.dumps({"user_id": user, "item_id": known_item}), "missing ts"),
        Case("item_id is an object", k, _event(user, item_id={"a": 1}), "item_id must be a string"),
        Case("user_id is a list", k, orjson.dumps({"user_id": [user], "item_id": "1", "ts": TS}), "user_id must be a string"),
        Case("bool user_id", b"true", orjson.dumps({"user_id": True, "item_id": "1", "ts": TS}), "user_id must be a string"),
        Case("float user_id", b"1.5", orjson.dumps({"user_id": 1.5, "item_id": "1", "ts": TS}), "user_id must be a string"),
        Case("huge integer id", k, b'{"user_id":123456789012345678901234567890,"item_id":"1","ts":1700000000000}', "user_id must be a string"),
        Case("10 MB text", k, big_text, "payload larger than"),
        Case("padded past the payload limit", k, padded, "payload larger than"),
        Case("text over max_text_chars", k, _event(user, item_id=known_item, text="y" * 20_000), "text longer than"),
        Case("NaN ts", k, b'{' + ok + b',"ts":NaN}', "malformed JSON"),
        Case("Infinity ts", k, b'{' + ok + b',"ts":Infinity}', "malformed JSON"),
        Case("1e400 ts", k, b'{' + ok + b',"ts":1e400}', "malformed JSON"),
        Case("1e180 ts", k, b"{" + ok + b',"ts":1e180}', "ts out of range"),
        Case("NaN value", k, b'{' + ok + b',"ts":1700000000000,"value":NaN}', "malformed JSON"),
        Case("negative ts", k, _event(user, item_id=known_item, ts=-1), "absurd timestamp"),
        Case("far-future epoch ts", k, _event(user, item_id=known_item, ts=32_503_680_000_000), "absurd timestamp"),
        Case("far-future RFC 3339 ts", k, _event(user, item_id=known_item, ts="9999-12-31T23:59:59Z"), "absurd timestamp"),
        Case("year-1 RFC 3339 ts", k, _event(user, item_id=known_item, ts="0001-01-01T00:00:00+01:00"), "absurd timestamp"),
        Case("ts without timezone", k, _event(user, item_id=known_item, ts="2024-05-01T12:00:00"), "needs a timezone"),
        Case("ts garbage", k, _event(user, item_id=known_item, ts="yesterday"), "not RFC 3339"),
        Case("ts bool", k, _event(user, item_id=known_item, ts=True), "got bool"),
        Case("huge user id", b"u" * 300, _event("u" * 300), "longer than 256 characters"),
        Case("id over 511 UTF-8 bytes", ("€" * 200).encode(), _event("€" * 200), "longer than 511 UTF-8 bytes"),
        Case("empty user id", b"", _event(""), "user_id is empty"),
        Case("blank item id", k, _event(user, item_id="   "), "item_id is empty"),
        Case("deeply nested object", k, deep, "malformed JSON"),
        Case("escaped lone surrogate", k, b'{"user_id":"\\ud800","item_id":"1","ts":1700000000000}', "malformed JSON"),
        Case("raw lone surrogate bytes", k, b'{"user_id":"\xed\xa0\x80","item_id":"1","ts":1700000000000}', "malformed JSON"),
        Case("key differs from user_id", b"someone-else", _event(user, item_id=known_item), "key must equal user_id"),
        Case("no key", None, _event(user, item_id=known_item), "key must equal user_id"),
        Case("duplicate json keys", k, b'{"user_id":"' + k + b'","user_id":"other","item_id":"1","ts":1700000000000}', "key must equal user_id"),
        Case("value is a string", k, _event(user, item_id=known_item, value="5"), "value must be a finite number"),
        Case("event_id is a number", k, _event(user, item_id=known_item, event_id=7), "event_id must be"),
        Case("text is a number", k, _event(user, item_id=known_item, text=5), "text must be a string"),
        Case("unknown item without text", k, _event(user, item_id="no-such-item-9f2"), "unknown item", flush=True),
    ]


def item_cases() -> list[Case]:
    """Hostile catalogue messages (items topic)."""
    return [
        Case("item not json", b"i", b"{nope", "malformed JSON"),
        Case("item invalid utf-8", b"i", b"\xff\xff", "malformed JSON"),
        Case("item array", b"i", b"[]", "must be a JSON object"),
        Case("item without title", b"i", orjson.dumps({"item_id": "i"}), "title must be a non-empty string"),
        Case("item bool id", b"i", orjson.dumps({"item_id": True, "title": "t"}), "item_id must be a non-empty string"),
        Case("item id over 511 bytes", b"i", orjson.dumps({"item_id": "€" * 200, "title": "t"}), "longer than 511 UTF-8 bytes"),
        Case("item attribute of numbers", b"i", orjson.dumps({"item_id": "i", "title": "t", "attributes": {"a": [1]}}), "attribute 'a'"),
        Case("item 10 MB description", b"i", orjson.dumps({"item_id": "i", "title": "t", "description": "d" * (10 << 20)}), "payload larger than"),
        Case("item NaN", b"i", b'{"item_id":"i","title":"t","x":NaN}', "malformed JSON"),
        Case("item facts a list", b"i", orjson.dumps({"item_id": "i", "title": "t", "facts": ["m.1"]}), "facts must be an object"),
        Case("item fact of numbers", b"i", orjson.dumps({"item_id": "i", "title": "t", "facts": {"actor": [1]}}), "fact 'actor'"),
        Case("item fact empty id", b"i", orjson.dumps({"item_id": "i", "title": "t", "facts": {"actor": ""}}), "fact 'actor'"),
        Case("item fact id too long", b"i", orjson.dumps({"item_id": "i", "title": "t", "facts": {"a": ["x" * 300]}}), "entity id longer than"),
        Case("item facts too many", b"i", orjson.dumps({"item_id": "i", "title": "t", "facts": {"a": ["m.%d" % n for n in range(3000)]}}), "facts longer than"),
        Case("item reserved attribute", b"i", orjson.dumps({"item_id": "i", "title": "t", "attributes": {"@facts": "x"}}), "is reserved"),
    ]
