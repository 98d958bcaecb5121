"""Hostile input at the unit level: every record parses to a valid Event or raises the one
exception the worker dead-letters (InvalidEvent / InvalidItem) with a one-line reason."""

from __future__ import annotations

import json
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from stream.catalog import InvalidItem, parse_item
from stream.config import EVENT_KINDS, LimitSettings, WindowSettings

from stream.events import MAX_ID_BYTES, Event, InvalidEvent, parse_event, parse_ts_ms
from corpus.hostile import event_cases, item_cases

NOW = int(time.time() * 1000)
LIMITS = LimitSettings()
WINDOWS = WindowSettings()
MIN_MS = parse_ts_ms(WINDOWS.min_ts)


def parse(value, key, kind="click"):
    return parse_event(value, key=key, kind=kind, source="t.clicks:0", offset=3, now_ms=NOW, limits=LIMITS, windows=WINDOWS)


def check_event(value, key, kind="click") -> Event | None:
    """The contract: a valid Event, or InvalidEvent with a short one-line reason; nothing else."""
    try:
        event = parse(value, key, kind)
    except InvalidEvent as exc:
        reason = str(exc)
        assert reason and "\n" not in reason and "\r" not in reason and len(reason) <= 200, repr(reason)
        return None
    assert key == event.user_id.encode("utf-8"), "a record is applied only on its user's partition"
    for ident in (event.user_id, event.item_id):
        assert ident.strip() and 0 < len(ident.encode("utf-8")) <= MAX_ID_BYTES  # a valid LMDB key
        assert len(ident) <= LIMITS.max_id_chars
    assert MIN_MS <= event.ts_ms <= NOW + WINDOWS.max_future_s * 1000
    assert event.kind == EVENT_KINDS.index(kind)
    assert event.text is None or (len(event.text) <= LIMITS.max_text_chars and event.text.encode("utf-8"))
    assert event.value is None or event.value == event.value  # finite (not NaN)
    return event


@pytest.mark.parametrize("case", event_cases(), ids=lambda c: c.name)
def test_corpus_event_is_rejected_with_its_reason(case):
    if case.flush:
        assert check_event(case.value, case.key) is not None  # valid shape; the flush rejects it
        return
    with pytest.raises(InvalidEvent) as info:
        parse(case.value, case.key)
    assert case.reason in str(info.value)
    assert check_event(case.value, case.key) is None


@pytest.mark.parametrize("case", item_cases(), ids=lambda c: c.name)
def test_corpus_item_is_rejected_with_its_reason(case):
    with pytest.raises(InvalidItem) as info:
        parse_item(case.value, LIMITS)
    assert case.reason in str(info.value) and "\n" not in str(info.value)


def test_item_facts_are_parsed_apart_from_the_encoder_text():
    from stream.catalog import item_text

    raw = {"item_id": "i", "title": "Alien", "attributes": {"year": "1979"},
           "facts": {"director": "m.scott", "actor": ["m.weaver", "m.hurt", "m.weaver"], "crew": []}}
    item = parse_item(orjson.dumps(raw), LIMITS)
    assert item.facts == {"director": ["m.scott"], "actor": ["m.weaver", "m.hurt"]}  # one id → a list; repeats, empties dropped
    assert item_text(item) == item_text(parse_item(orjson.dumps({**raw, "facts": None}), LIMITS)) == "Alien (1979)"
    assert parse_item(orjson.dumps({"item_id": "j", "title": "t"}), LIMITS).facts == {}


def test_payload_limit_is_checked_before_parsing():
    """A 10 MB value is refused by its size, not by JSON parsing (so it is never parsed)."""
    huge_invalid = b"{" * (10 << 20)  # would be 'malformed JSON' if it were parsed
    with pytest.raises(InvalidEvent, match="payload larger than 1000000 bytes"):
        parse(huge_invalid, b"u")
    with pytest.raises(InvalidItem, match="payload larger than 1000000 bytes"):
        parse_item(huge_invalid, LIMITS)
    small = LimitSettings(max_payload_bytes=64)
    with pytest.raises(InvalidItem, match="payload larger than 64 bytes"):
        parse_item(orjson.dumps({"item_id": "1", "title": "t" * 100}), small)


# --- property-based ----------------------------------------------------------------------

# Every code point, lone surrogates included (stdlib json escapes them as \udXXX).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4), max_leaves=12)
ids = st.one_of(
    st.text(max_size=8), any_text, st.integers(-5, 2**64), st.booleans(), st.floats(), st.just(""), st.just(" "),
    st.sampled_from(["u1", "€" * 200, "x" * 257, "x" * 256, "\x00", "a\nb"]), json_values,
    st.text("€😀x", min_size=100, max_size=300),
)
timestamps = st.one_of(
    st.integers(-(2**63), 2**63), st.floats(), st.just(NOW), st.integers(MIN_MS, NOW), any_text,
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()), st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2024-05-01T12:00:00Z"]), json_values,
)
event_dicts = st.fixed_dictionaries(
    {},
    optional={
        "user_id": ids, "item_id": ids, "ts": timestamps, "text": st.one_of(any_text, json_values),
        "value": json_values, "event_id": st.one_of(ids, any_text), "extra": json_values,
    },
)


def _dumps(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def records(draw):
    """(key, value): JSON event-shaped objects, arbitrary JSON, or arbitrary bytes; keys that
    usually match the user id and sometimes do not."""
    obj = draw(st.one_of(event_dicts, json_values))
    value = draw(st.one_of(st.just(_dumps(obj)), st.binary(max_size=200), st.none()))
    user = obj.get("user_id") if isinstance(obj, dict) else None
    natural = str(user).encode("utf-8", "surrogatepass") if user is not None else None
    key = natural if draw(st.integers(0, 3)) else draw(st.one_of(st.binary(max_size=20), st.none()))
    return key, value


FIELDS = {"user_id": ids, "item_id": ids, "ts": timestamps, "text": st.one_of(any_text, json_values),
          "value": json_values, "event_id": st.one_of(ids, any_text), "extra": json_values}


@st.composite
def mutated(draw):
    """A valid event with one or two fields replaced by a hostile value (or removed), keyed by
    its user id: hostile values then meet an otherwise valid record, where checks matter."""
    obj = {"user_id": "u1", "item_id": "i1", "ts": NOW - 1000, "text": "t", "value": 1.0, "event_id": "e1"}
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=2, unique=True)):
        if draw(st.integers(0, 5)):
            obj[name] = draw(FIELDS[name])
        else:
            obj.pop(name, None)
    user = obj.get("user_id")
    key = str(user).encode("utf-8", "surrogatepass") if user is not None else None
    return key, _dumps(obj)


@hsettings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(records(), mutated()), st.sampled_from(EVENT_KINDS))
def test_parse_event_never_raises_anything_else(record, kind):
    key, value = record
    check_event(value, key, kind)


@hsettings(max_examples=200, deadline=None)
@given(st.integers(MIN_MS, NOW), st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).filter(str.strip),
       st.sampled_from(EVENT_KINDS))
def test_well_formed_events_are_accepted(ts, user, kind):
    """The property has teeth: valid events (any Unicode id, keyed right) are never rejected."""
    value = orjson.dumps({"user_id": user, "item_id": "i-1", "ts": ts, "event_id": "e"})
    event = check_event(value, user.encode(), kind)
    assert event is not None and (event.user_id, event.ts_ms) == (user, ts)


item_dicts = st.fixed_dictionaries(
    {}, optional={"item_id": ids, "title": st.one_of(any_text, json_values), "description": st.one_of(any_text, json_values),
                  "attributes": st.one_of(json_values, st.dictionaries(any_text, st.one_of(any_text, st.lists(any_text, max_size=3))))},
)


@hsettings(max_examples=400, deadline=None)
@given(st.one_of(item_dicts.map(_dumps), json_values.map(_dumps), st.binary(max_size=200), st.none()))
def test_parse_item_never_raises_anything_else(value):
    try:
        item = parse_item(value, LIMITS)
    except InvalidItem as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert item.item_id.strip() and 0 < len(item.item_id.encode("utf-8")) <= MAX_ID_BYTES
    from stream.catalog import item_text

    item_text(item).encode("utf-8")  # the encoder's input is valid Unicode
