"""LMDB state for recstream: binary records and the one-writer store that holds them.

Start at :class:`LmdbStore`; its module docstring states the commit order a flush follows.
"""

from store.lmdb_store import LmdbStore, ReadTxn, StoreError, WriteTxn
from store.records import (
    HistoryEntry,
    ItemRecord,
    ProfileRecord,
    RecordError,
    decode_changelog,
    decode_history,
    decode_item,
    decode_profile,
    encode_changelog,
    encode_history,
    encode_item,
    encode_profile,
    event_id_hash,
)

__all__ = [
    "HistoryEntry",
    "ItemRecord",
    "LmdbStore",
    "ProfileRecord",
    "ReadTxn",
    "RecordError",
    "StoreError",
    "WriteTxn",
    "decode_changelog",
    "decode_history",
    "decode_item",
    "decode_profile",
    "encode_changelog",
    "encode_history",
    "encode_item",
    "encode_profile",
    "event_id_hash",
]
