"""Input schema validation: each bad record yields a one-line reason."""

import time

import pytest

from stream.config import LimitSettings, WindowSettings
from stream.events import InvalidEvent, parse_event

NOW = int(time.time() * 1000)


def parse(payload, key=b"u1", kind="click"):
    return parse_event(payload, key=key, kind=kind, source="recstream.clicks:2", offset=7, now_ms=NOW,
                       limits=LimitSettings(), windows=WindowSettings())


def test_valid_event_with_all_fields():
    e = parse(b'{"user_id":"u1","item_id":"42","ts":"2024-05-01T12:00:00Z","text":"great","value":4.5,"event_id":"e1"}')
    assert (e.user_id, e.item_id, e.kind, e.source, e.offset) == ("u1", "42", 1, "recstream.clicks:2", 7)
    assert e.ts_ms == 1714564800000 and e.text == "great" and e.value == 4.5 and e.event_id == "e1"


def test_epoch_ms_and_numeric_ids():
    e = parse(b'{"user_id":1,"item_id":2,"ts":1714564800000}', key=b"1")
    assert (e.user_id, e.item_id, e.ts_ms) == ("1", "2", 1714564800000)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe\x00", "malformed JSON"),
        (b"[1,2]", "must be a JSON object"),
        (b'{"item_id":"1","ts":1714564800000}', "missing user_id"),
        (b'{"user_id":"u1","ts":1714564800000}', "missing item_id"),
        (b'{"user_id":"u1","item_id":"1"}', "missing ts"),
        (b'{"user_id":"u1","item_id":{"a":1},"ts":1714564800000}', "item_id must be a string"),
        (b'{"user_id":"u1","item_id":"1","ts":"yesterday"}', "not RFC 3339"),
        (b'{"user_id":"u1","item_id":"1","ts":-5}', "absurd timestamp"),
        (b'{"user_id":"u1","item_id":"1","ts":99999999999999}', "absurd timestamp"),
        (b'{"user_id":"u1","item_id":"1","ts":1714564800000,"value":"x"}', "value must be a finite number"),
        (b'{"user_id":"u1","item_id":"1","ts":NaN}', "malformed JSON"),
        (b'{"user_id":"u1","item_id":"1","ts":1714564800000,"text":5}', "text must be a string"),
        (b'{"user_id":"","item_id":"1","ts":1714564800000}', "user_id is empty"),
        (b'{"user_id":"u2","item_id":"1","ts":1714564800000}', "key must equal user_id"),
    ],
)
def test_invalid_records_give_one_line_reasons(payload, reason):
    with pytest.raises(InvalidEvent) as info:
        parse(payload)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_size_limits():
    big = b'{"user_id":"u1","item_id":"1","ts":1714564800000,"text":"' + b"x" * 20_000 + b'"}'
    with pytest.raises(InvalidEvent, match="text longer than"):
        parse(big)
    with pytest.raises(InvalidEvent, match="payload larger than"):
        parse(b" " * 2_000_000)
    with pytest.raises(InvalidEvent, match="longer than 256"):
        parse(b'{"user_id":"' + b"u" * 300 + b'","item_id":"1","ts":1714564800000}', key=b"u" * 300)
