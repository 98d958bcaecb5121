"""Kafka security settings reach every client (no SSL broker here: the built kwargs are
checked), and no secret shows in reprs, dumps, logs or validation errors."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from stream.config import load_settings
from stream.kafka_io import client_config
from stream.security import aiokafka_config, faust_credentials, kafka_python_config, ssl_context

PASSWORD = "sasl-pw-Zq81"
KEY_PASSWORD = "key-pw-Xy72"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA and a client certificate whose key is encrypted with KEY_PASSWORD (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=recstream-test-ca")
    run("req", "-newkey", "rsa:2048", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=worker",
        "-passout", f"pass:{KEY_PASSWORD}")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.pem", "-days", "2")
    return {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}


def sasl_ssl(pki, mechanism="SCRAM-SHA-512", **more):
    return load_settings(None, broker={
        "url": "kafka://k1:9093,k2:9093", "security_protocol": "SASL_SSL", "sasl_mechanism": mechanism,
        "sasl_username": "worker", "sasl_password": PASSWORD, "ssl_cafile": pki["ca"],
        "ssl_certfile": pki["cert"], "ssl_keyfile": pki["key"], "ssl_key_password": KEY_PASSWORD, **more})


def test_sasl_ssl_scram_reaches_faust_aiokafka_and_kafka_python(pki):
    s = sasl_ssl(pki)
    kp = client_config(s)
    assert kp == kafka_python_config(s.broker)
    assert kp["bootstrap_servers"] == ["k1:9093", "k2:9093"] and kp["security_protocol"] == "SASL_SSL"
    assert (kp["sasl_mechanism"], kp["sasl_plain_username"], kp["sasl_plain_password"]) == ("SCRAM-SHA-512", "worker", PASSWORD)
    assert (kp["ssl_cafile"], kp["ssl_certfile"], kp["ssl_keyfile"]) == (str(pki["ca"]), str(pki["cert"]), str(pki["key"]))
    assert kp["ssl_password"] == KEY_PASSWORD and kp["ssl_check_hostname"] is True

    ak = aiokafka_config(s.broker)
    assert (ak["security_protocol"], ak["sasl_mechanism"], ak["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-512", PASSWORD)
    context = ak["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(dict(x[0] for x in c["subject"]).get("commonName") == "recstream-test-ca" for c in context.get_ca_certs())

    credentials = faust_credentials(s.broker)
    assert isinstance(credentials, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)  # exactly what Faust hands aiokafka
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("worker", PASSWORD)
    assert isinstance(auth["ssl_context"], ssl.SSLContext)


def test_the_worker_app_is_built_with_the_credentials(pki, tmp_path):
    from stream.app import create_app

    s = sasl_ssl(pki, mechanism="SCRAM-SHA-256", ssl_check_hostname=False).model_copy(
        update={"store": load_settings(None, store={"path": tmp_path / "s.lmdb"}).store, "web_port": 0})
    app, _ = create_app(s)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-256", PASSWORD)
    assert auth["ssl_context"].check_hostname is False


def test_sasl_plain_without_tls_and_tls_without_sasl(pki):
    plain = load_settings(None, broker={"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                        "sasl_username": "u", "sasl_password": PASSWORD})
    assert ssl_context(plain.broker) is None
    auth = credentials_to_aiokafka_auth(faust_credentials(plain.broker))
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["ssl_context"]) == ("SASL_PLAINTEXT", "PLAIN", None)
    assert "ssl_cafile" not in kafka_python_config(plain.broker)

    tls = load_settings(None, broker={"security_protocol": "SSL", "ssl_cafile": pki["ca"]})
    credentials = faust_credentials(tls.broker)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in aiokafka_config(tls.broker) and kafka_python_config(tls.broker)["ssl_cafile"] == str(pki["ca"])

    assert faust_credentials(load_settings(None).broker) is None
    assert aiokafka_config(load_settings(None).broker)["security_protocol"] == "PLAINTEXT"


def test_misconfiguration_fails_at_start_up_with_one_line(pki):
    half = load_settings(None, broker={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"})
    with pytest.raises(ValueError, match="needs sasl_mechanism, sasl_username and sasl_password"):
        kafka_python_config(half.broker)
    wrong_key_pw = sasl_ssl(pki, ssl_key_password="nope")
    with pytest.raises(ssl.SSLError):
        aiokafka_config(wrong_key_pw.broker)


def test_no_secret_in_repr_dump_logs_or_errors(pki, caplog, capsys):
    s = sasl_ssl(pki)
    secrets = (PASSWORD, KEY_PASSWORD)
    with caplog.at_level(logging.DEBUG):
        log = logging.getLogger("recstream.test")
        log.info("settings: %s", s)
        log.info("broker: %r", s.broker)
        log.info("credentials: %r", faust_credentials(s.broker))
    texts = [repr(s), str(s), s.model_dump_json(), str(s.model_dump()), caplog.text]
    for text in texts:
        assert not any(secret in text for secret in secrets), text[:300]
    with pytest.raises(ValueError) as info:  # a validation error must not quote the input
        load_settings(None, broker={"sasl_password": PASSWORD, "security_protocol": "nope"})
    assert PASSWORD not in str(info.value)


def test_cli_reports_a_bad_secret_setting_without_quoting_it(monkeypatch, capsys):
    from stream.cli import main

    monkeypatch.setattr(sys, "argv", ["recstream", "topics", "create"])
    monkeypatch.setenv("RECSTREAM_PRIVACY__PSEUDONYMISE", "true")
    monkeypatch.setenv("RECSTREAM_PRIVACY__SALT", "tiny-Zq81")  # too short: rejected
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and "invalid setting privacy" in err and "Zq81" not in err
