"""Privacy without a broker: forget leaves no trace in any database, duplicate event ids,
control-record validation and pseudonyms."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from store import LmdbStore
from stream.catalog import Catalogue
from stream.config import PrivacySettings, load_settings
from stream.control import forget_request, parse_control
from stream.events import Event, InvalidEvent
from stream.privacy import Pseudonymiser
from stream.processor import Processor
from stream.profile import normalised
from stream.windows import UserWindow
from corpus.store_scan import traces

DIM = 8
TS = 1_700_000_000_000


@pytest.fixture
def processor(tmp_path):
    rng = np.random.default_rng(0)
    catalogue = Catalogue(DIM)
    for i in range(20):
        catalogue.upsert(str(i), normalised(rng.normal(size=DIM).astype(np.float32)))
    store = LmdbStore(tmp_path / "s.lmdb")
    yield Processor(load_settings(None, ranking={"k": 3}), store, catalogue)
    store.close()


def window(user, items, offset0=0, event_ids=None):
    events = [
        Event(user, item, TS + n * 1000, n % 3, "t.clicks:0", offset0 + n, event_id=(event_ids or {}).get(n))
        for n, item in enumerate(items)
    ]
    return UserWindow(user, events=events, handles=list(range(len(events))))


def test_forget_user_leaves_nothing_in_any_database(processor):
    user = "forget-me-3b9e"
    processor.flush([window(user, ["1", "2", "3"], event_ids={0: "ev-a", 1: "ev-b"}),
                     window("keeper", ["4", "5"], offset0=10, event_ids={0: "ev-a"})], now_ms=1)
    path = processor.store.path
    processor.store.close()
    assert {db for db, _ in traces(path, user)} >= {"profiles", "seen"}  # the scan sees them (event ids live in the profile)
    store = LmdbStore(path)
    assert store.forget_user(user) is True
    assert store.forget_user(user) is False
    with store.read() as r:
        keeper = r.get_profile("keeper")
        assert keeper.event_count == 2 and r.get_seen("keeper") == {"4", "5"}
        assert r.counters()["events.click"] >= 1  # aggregates stay: they name nobody
    store.close()
    assert traces(path, user) == []
    assert traces(path, "keeper") != []


def test_duplicate_event_ids_are_rejected_once_applied(processor):
    first = processor.flush([window("u", ["1", "2"], event_ids={0: "e1", 1: "e2"})], now_ms=1)
    assert first.applied == 2 and not first.rejected
    # a producer retry: same event ids at new offsets, plus one new event and one repeat in-window
    again = processor.flush([window("u", ["1", "3", "4"], offset0=2, event_ids={0: "e1", 1: "e3", 2: "e3"})], now_ms=2)
    assert again.applied == 1
    assert sorted(r for _, r in again.rejected) == ["duplicate event_id 'e1'", "duplicate event_id 'e3'"]
    with processor.store.read() as r:
        assert r.get_profile("u").event_count == 3
    # other users may reuse an event id; a forgotten user's ids are forgotten with them
    assert processor.flush([window("v", ["1"], event_ids={0: "e1"})], now_ms=3).applied == 1
    processor.store.forget_user("u")
    assert processor.flush([window("u", ["1"], offset0=9, event_ids={0: "e1"})], now_ms=4).applied == 1


@pytest.mark.parametrize(
    "key, value, reason",
    [
        (b"u1", b'{"op":"forget","user_id":"u1"', "malformed JSON"),
        (b"u1", b'{"op":"drop","user_id":"u1"}', "unknown control op"),
        (b"u1", b'{"op":"forget"}', "missing user_id"),
        (b"u2", b'{"op":"forget","user_id":"u1"}', "key must equal user_id"),
        (b"u1", None, "empty value"),
    ],
)
def test_bad_control_records_have_reasons(key, value, reason):
    with pytest.raises(InvalidEvent, match=reason):
        parse_control(value, key=key, limits=load_settings(None).limits)


def test_forget_request_round_trips():
    key, value = forget_request("ünïcode-7")
    command = parse_control(value, key=key, limits=load_settings(None).limits)
    assert (command.op, command.user_id) == ("forget", "ünïcode-7")


def test_pseudonyms_are_keyed_stable_and_hide_the_salt(caplog):
    salt = "s3cret-salt-0123456789"
    on = Pseudonymiser(PrivacySettings(pseudonymise=True, salt=salt))
    other = Pseudonymiser(PrivacySettings(pseudonymise=True, salt=salt + "x"))
    p = on.store_id("alice")
    assert p == on.store_id("alice") and len(p) == 32 and int(p, 16) >= 0
    assert p != on.store_id("alice ") and p != other.store_id("alice")
    assert p != hashlib.sha256(b"alice").hexdigest()[:32]  # keyed, not a plain hash
    assert Pseudonymiser(PrivacySettings()).store_id("alice") == "alice"
    settings = load_settings(None, privacy={"pseudonymise": True, "salt": salt})
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings %s %r %s", settings, settings, on)
    assert salt not in caplog.text and salt not in repr(on) and salt not in settings.model_dump_json()
    with pytest.raises(ValueError, match="needs privacy.salt"):
        load_settings(None, privacy={"pseudonymise": True})
    with pytest.raises(ValueError, match="at least 16"):
        load_settings(None, privacy={"pseudonymise": True, "salt": "short"})


def test_cli_forget_offline_without_a_store_is_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from stream.cli import main

    monkeypatch.setattr(sys, "argv", ["recstream", "--store", str(tmp_path / "none"), "forget", "u1", "--offline"])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.strip() == f"recstream: error: no store at {tmp_path / 'none'}"
