"""The embedded Tansu broker: start, stop, errors, restart, freeze/thaw."""

import os
import socket
import time

import pytest

from stream.broker import BrokerError, EmbeddedBroker, free_port, wait_for_kafka

pytestmark = pytest.mark.integration


def test_start_answers_kafka_and_stop_is_idempotent(tmp_path):
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "b.log")
    assert broker.pid is None
    broker.start()
    try:
        pid = broker.pid
        assert pid is not None and os.path.exists(f"/proc/{pid}")
        assert broker.url == f"kafka://127.0.0.1:{broker.port}"
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        wait_for_kafka(broker.bootstrap, timeout_s=5)
    finally:
        broker.stop()
    assert broker.pid is None
    assert not os.path.exists(f"/proc/{pid}")  # reaped, not a zombie
    broker.stop()  # second stop is a no-op
    with pytest.raises(BrokerError, match="no Kafka broker answered"):
        wait_for_kafka(broker.bootstrap, timeout_s=0.5)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "b.log")
        with pytest.raises(BrokerError, match=f"port {port} .*already in use") as info:
            broker.start()
        assert "\n" not in str(info.value)
        assert broker.pid is None


def test_restart_on_the_same_port_is_a_fresh_broker(tmp_path):
    from kafka import KafkaAdminClient

    port = free_port()
    with EmbeddedBroker(port=port, log_path=tmp_path / "b.log") as broker:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics({"left-over": {"num_partitions": 1, "replication_factor": 1}})
        assert "left-over" in admin.list_topics()
        admin.close()
        first = broker.pid
    with EmbeddedBroker(port=port, log_path=tmp_path / "b.log") as broker:
        assert broker.pid != first
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        assert "left-over" not in admin.list_topics()  # memory storage
        admin.close()


def test_second_start_while_running_is_refused(tmp_path):
    with EmbeddedBroker(port=free_port(), log_path=tmp_path / "b.log") as broker:
        with pytest.raises(BrokerError, match="already running"):
            broker.start()


def test_missing_binary_and_early_exit(tmp_path, monkeypatch):
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "nope"))
    with pytest.raises(BrokerError, match="binary"):
        EmbeddedBroker(port=free_port()).start()

    fake = tmp_path / "fake-tansu"
    fake.write_text("#!/bin/sh\necho 'boom: storage exploded'\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    log_path = tmp_path / "fake.log"
    with pytest.raises(BrokerError, match=f"exited with code 3.*{log_path}"):
        EmbeddedBroker(port=free_port(), log_path=log_path).start()
    assert "storage exploded" in log_path.read_text()


def test_freeze_thaw_and_stop_while_frozen(tmp_path):
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "b.log").start()
    try:
        broker.freeze()
        with pytest.raises(BrokerError):
            wait_for_kafka(broker.bootstrap, timeout_s=1.0)
        broker.thaw()
        wait_for_kafka(broker.bootstrap, timeout_s=5)
        broker.freeze()
        pid = broker.pid
    finally:
        started = time.monotonic()
        broker.stop(timeout_s=2)
    assert time.monotonic() - started < 4
    assert not os.path.exists(f"/proc/{pid}")
    with pytest.raises(BrokerError, match="not running"):
        broker.freeze()


def test_stop_kills_a_broker_that_ignores_sigterm(tmp_path):
    with EmbeddedBroker(port=free_port(), log_path=tmp_path / "b.log") as broker:
        pid = broker.pid
        # an open client connection makes Tansu wait on SIGTERM; stop must still finish
        conn = socket.create_connection(("127.0.0.1", broker.port))
        started = time.monotonic()
        broker.stop(timeout_s=1)
        conn.close()
    assert time.monotonic() - started < 3
    assert not os.path.exists(f"/proc/{pid}")
