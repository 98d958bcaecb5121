"""Pseudonymisation: the user id the store and the logs see.

With ``privacy.pseudonymise`` the worker replaces each event's user id by
``HMAC-SHA256(salt, user_id)``, truncated to 128 bits (32 hex characters), right after
parsing, so profiles, seen items, event ids and logs only ever hold the pseudonym. The
original id survives only in Kafka (the record key), which is where a recommendation's
consumer needs it: output messages are keyed by, and carry, the original id, taken from
the input record's key at flush time, so no table maps pseudonyms back to people.

A keyed hash (not a plain one) so that knowing the id space (e.g. sequential integers) does
not let anyone who reads the store recompute the pseudonyms without the salt.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from stream.config import PrivacySettings

__all__ = ["PAYLOAD_LOGGERS", "PSEUDONYM_HEX_CHARS", "Pseudonymiser", "guard_payload_logs"]

#: Third-party loggers that print Kafka keys and values at DEBUG level.
PAYLOAD_LOGGERS = ("aiokafka", "kafka", "faust")

#: 128 bits: collisions need ~2^64 users.
PSEUDONYM_HEX_CHARS = 32


class Pseudonymiser:
    """Maps a user id to the id the store uses: itself, or its salted HMAC when enabled."""

    def __init__(self, privacy: PrivacySettings) -> None:
        self.enabled = privacy.pseudonymise
        self._salt = privacy.salt.get_secret_value().encode("utf-8") if privacy.salt else b""

    def store_id(self, user_id: str) -> str:
        """The store's id for ``user_id``; deterministic for a given salt."""
        if not self.enabled:
            return user_id
        mac = hmac.new(self._salt, user_id.encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:PSEUDONYM_HEX_CHARS]

    def __repr__(self) -> str:  # never the salt
        return f"Pseudonymiser(enabled={self.enabled})"


def guard_payload_logs() -> None:
    """Cap the Kafka clients' loggers at INFO: at DEBUG they print record keys and values,
    i.e. the original user ids. Called by the worker when pseudonymising."""
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.INFO))
