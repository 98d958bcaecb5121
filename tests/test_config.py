"""Configuration precedence: defaults < file < environment < flags; validation errors."""

import pytest
from pydantic import ValidationError

from stream.config import load_settings


def test_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "recstream.toml"
    cfg.write_text('[windows]\nsize_s = 5.0\nmax_events = 7\n[ranking]\nk = 3\n')
    monkeypatch.setenv("RECSTREAM_WINDOWS__MAX_EVENTS", "9")
    monkeypatch.setenv("RECSTREAM_RANKING__K", "4")
    s = load_settings(cfg, ranking={"k": 6})
    assert s.windows.size_s == 5.0  # file beats default
    assert s.windows.max_events == 9  # environment beats file
    assert s.ranking.k == 6  # flag beats environment
    assert s.windows.idle_flush_s == 1.0  # untouched default


def test_unset_flags_do_not_mask_the_environment(monkeypatch):
    monkeypatch.setenv("RECSTREAM_BROKER__URL", "kafka://example:9999")
    assert load_settings(None, broker={"url": None}).broker.bootstrap == "example:9999"


def test_invalid_values_are_rejected():
    with pytest.raises(ValidationError):
        load_settings(None, broker={"url": "localhost:9092"})
    with pytest.raises(ValidationError):
        load_settings(None, ranking={"blend": {"weekly": 1.0}})
    with pytest.raises(ValueError, match="config file not found"):
        load_settings("/nonexistent.toml")


def test_topic_names_follow_the_prefix():
    t = load_settings(None, topics={"prefix": "shop."}).topics
    assert t.inputs == {"view": "shop.views", "click": "shop.clicks", "purchase": "shop.purchases"}
    assert (t.items, t.recommendations, t.dlq) == ("shop.items", "shop.recommendations", "shop.dlq")


def test_the_producer_linger_reaches_faust(tmp_path, monkeypatch):
    from stream.app import create_app

    store = {"path": tmp_path / "s.lmdb"}
    app, _ = create_app(load_settings(None, store=store))
    assert app.conf.producer_linger_ms == 5
    monkeypatch.setenv("RECSTREAM_BROKER__PRODUCER_LINGER_MS", "0")
    app, _ = create_app(load_settings(None, store=store))
    assert app.conf.producer_linger_ms == 0
    with pytest.raises(ValidationError):
        load_settings(None, broker={"producer_linger_ms": -1})
