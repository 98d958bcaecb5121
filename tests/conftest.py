"""Shared fixtures: one Kafka broker per session, uuid-named topics per test, MovieLens-100K.

Set ``RECSTREAM_TEST_BROKER=kafka://host:port`` to run against an existing broker (for
example the compose Kafka); tests that need it are skipped when it is unreachable.
Otherwise an embedded Tansu broker is started on a free port for the session.
"""

from __future__ import annotations

import os
from uuid import uuid4

import pytest

from stream.broker import BrokerError, EmbeddedBroker, free_port, wait_for_kafka
from stream.config import default_cache_dir, load_settings


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory):
    external = os.environ.get("RECSTREAM_TEST_BROKER")
    if external:
        try:
            wait_for_kafka(external.removeprefix("kafka://"), timeout_s=10)
        except BrokerError as exc:
            pytest.skip(f"RECSTREAM_TEST_BROKER unreachable: {exc}")
        yield external
        return
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(port=free_port(), log_path=log_path) as broker:
        yield broker.url


@pytest.fixture
def settings(broker_url, tmp_path):
    """Settings on the session broker with topics no other test uses."""
    return load_settings(
        broker={"url": broker_url},
        topics={"prefix": f"t{uuid4().hex[:8]}."},
        store={"path": tmp_path / "store.lmdb"},
        web_port=0,
    )


@pytest.fixture(scope="session")
def ml100k_dir():
    # No skip: make test must fetch it (PyPI is reachable wherever the suite runs).
    from stream.movielens import fetch_ml100k

    return fetch_ml100k(default_cache_dir())
