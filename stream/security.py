"""Kafka security settings → the keyword arguments of each Kafka client recstream uses.

One place turns :class:`~stream.config.BrokerSettings` (SASL/PLAIN, SCRAM, TLS with a CA and
a client certificate) into what Faust (``broker_credentials``), aiokafka and kafka-python
expect, so no client can be started without them. Secrets stay :class:`~pydantic.SecretStr`
until the moment a client is built; nothing here logs them, and the returned dicts must not
be logged either (they hold the plain password).
"""

from __future__ import annotations

import ssl
from typing import Any

from stream.config import BrokerSettings

__all__ = ["aiokafka_config", "faust_credentials", "kafka_python_config", "ssl_context"]


def _uses_ssl(broker: BrokerSettings) -> bool:
    return broker.security_protocol in ("SSL", "SASL_SSL")


def _uses_sasl(broker: BrokerSettings) -> bool:
    return broker.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def _check(broker: BrokerSettings) -> None:
    if _uses_sasl(broker) and not (broker.sasl_mechanism and broker.sasl_username and broker.sasl_password):
        raise ValueError(f"security_protocol {broker.security_protocol} needs sasl_mechanism, sasl_username and sasl_password")


def ssl_context(broker: BrokerSettings) -> ssl.SSLContext | None:
    """A client TLS context (CA bundle, optional client certificate), or None without TLS.

    Without ``ssl_cafile`` the system's default CAs are trusted. Raises ``OSError`` /
    ``ssl.SSLError`` if a configured file is missing or unreadable: better at start-up
    than at the first reconnect.
    """
    if not _uses_ssl(broker):
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(broker.ssl_cafile) if broker.ssl_cafile else None
    )
    context.check_hostname = broker.ssl_check_hostname
    if broker.ssl_certfile is not None:
        password = broker.ssl_key_password.get_secret_value() if broker.ssl_key_password else None
        context.load_cert_chain(
            str(broker.ssl_certfile), str(broker.ssl_keyfile) if broker.ssl_keyfile else None, password
        )
    return context


def faust_credentials(broker: BrokerSettings) -> Any:
    """``broker_credentials`` for :class:`faust.App`: SASL (with TLS if asked), TLS, or None."""
    import faust

    _check(broker)
    context = ssl_context(broker)
    if _uses_sasl(broker):
        assert broker.sasl_password is not None
        return faust.SASLCredentials(
            username=broker.sasl_username,
            password=broker.sasl_password.get_secret_value(),
            mechanism=broker.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _sasl(broker: BrokerSettings) -> dict[str, Any]:
    """SASL kwargs, named alike by aiokafka and kafka-python; empty without SASL."""
    if not _uses_sasl(broker):
        return {}
    assert broker.sasl_password is not None
    return {"sasl_mechanism": broker.sasl_mechanism, "sasl_plain_username": broker.sasl_username,
            "sasl_plain_password": broker.sasl_password.get_secret_value()}


def aiokafka_config(broker: BrokerSettings) -> dict[str, Any]:
    """Connection kwargs for :class:`aiokafka.AIOKafkaConsumer` / ``AIOKafkaProducer``."""
    _check(broker)
    config: dict[str, Any] = {"bootstrap_servers": broker.bootstrap, "security_protocol": broker.security_protocol}
    config.update(_sasl(broker))
    context = ssl_context(broker)
    if context is not None:
        config["ssl_context"] = context
    return config


def kafka_python_config(broker: BrokerSettings) -> dict[str, Any]:
    """Connection kwargs for kafka-python clients (producer, consumer, admin).

    kafka-python builds its own TLS context from file names, so the files are passed as such.
    """
    _check(broker)
    config: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap.split(","),
        "security_protocol": broker.security_protocol,
    }
    config.update(_sasl(broker))
    if _uses_ssl(broker):
        config["ssl_check_hostname"] = broker.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(broker, name)
            if path is not None:
                config[name] = str(path)
        if broker.ssl_key_password is not None:
            config["ssl_password"] = broker.ssl_key_password.get_secret_value()
    return config
