"""Binary records: exact round-trips, strict decoding, size budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from store import (
    HistoryEntry,
    ItemRecord,
    ProfileRecord,
    RecordError,
    decode_history,
    decode_item,
    decode_profile,
    encode_history,
    encode_item,
    encode_profile,
)
from store.records import HISTORY_VERSION, ITEM_VERSION, PROFILE_VERSION

from store_helpers import make_item, make_profile

ids = st.text(min_size=1, max_size=40)
long_ids = st.text(min_size=1, max_size=200)  # up to 800 UTF-8 bytes: exercises uint16 lengths
i64 = st.integers(-(2**63), 2**63 - 1)
finite32 = st.floats(width=32, allow_nan=False)


@st.composite
def profiles(draw) -> ProfileRecord:
    h = draw(st.integers(0, 4))
    dim = draw(st.integers(0, 64))
    return ProfileRecord(
        user_id=draw(ids),
        vectors=draw(hnp.arrays(np.float32, (h, dim), elements=finite32)),
        weights=draw(hnp.arrays(np.float64, (h,), elements=st.floats(allow_nan=False))),
        last_ts_ms=draw(i64),
        event_count=draw(st.integers(0, 2**63 - 1)),
        version=draw(st.integers(0, 2**40)),
        applied=draw(st.dictionaries(ids, st.integers(-1, 2**62), max_size=6)),
        history=draw(st.lists(
            st.builds(HistoryEntry, st.one_of(ids, long_ids),
                      st.one_of(st.integers(0, 2**45), i64), st.integers(0, 2)),
            max_size=60,
        )),
        kind_counts=draw(st.lists(st.integers(0, 2**40), min_size=3, max_size=3)),
        updated_ms=draw(i64),
        recent_ids=draw(st.lists(st.integers(0, 2**64 - 1), max_size=40)),
    )


@st.composite
def items(draw) -> ItemRecord:
    attr_value = st.one_of(st.text(max_size=20), st.lists(st.text(max_size=10), max_size=4))
    return ItemRecord(
        item_id=draw(ids),
        title=draw(st.text(max_size=100)),
        text=draw(st.text(max_size=400)),
        vector=draw(hnp.arrays(np.float32, st.integers(0, 96), elements=finite32)),
        attributes=draw(st.dictionaries(st.text(max_size=10), attr_value, max_size=5)),
        updated_ms=draw(i64),
    )


@settings(max_examples=300, deadline=None)
@given(profiles())
def test_profile_round_trip(rec):
    out = decode_profile(encode_profile(rec), encode_history(rec))
    assert out == rec
    assert out.vectors.dtype == np.float32 and out.vectors.shape == rec.vectors.shape
    assert out.weights.dtype == np.float64
    assert [type(h.ts_ms) for h in out.history] == [int] * len(rec.history)
    assert [type(i) for i in out.recent_ids] == [int] * len(rec.recent_ids)


#: A version-1 record (dim 4, 2 horizons) as the version-1 encoder wrote it: must stay readable.
PROFILE_V1_HEX = (
    "010300752d31b873e5cf8b01000003000000000000000200000000000000288be5cf8b0100000200040000000000003f0000a0bf0000"
    "4040000000006f12833a0000004000008040000000c1000000000000f83f000000000000024003010000000000000000000000000000"
    "00010000000000000001000800742e766965773a3129000000000000000200000000020231303230e86be5cf8b010000d00700000002"
)


def test_version_1_records_are_still_read():
    rec = decode_profile(bytes.fromhex(PROFILE_V1_HEX))
    assert rec == ProfileRecord(
        "u-1", np.array([[0.5, -1.25, 3.0, 0.0], [1e-3, 2, 4, -8]], np.float32), np.array([1.5, 2.25]),
        1700000003000, 3, 2, {"t.view:1": 41},
        [HistoryEntry("10", 1700000001000, 0), HistoryEntry("20", 1700000003000, 2)], [1, 0, 1], 1700000009000, [],
    )
    assert decode_profile(encode_profile(rec), encode_history(rec)) == rec  # re-encoded as the current version


#: A version-2 record (float16 vectors, history and two event-id hashes inside): must stay readable.
PROFILE_V2_HEX = (
    "020300752d32b873e5cf8b01000003000000000000000200000000000000288be5cf8b01000002000400000001003800bd004200001914"
    "0040004400c8000000000000f83f00000000000002400301000000000000000000000000000000010000000000000001000800742e7669"
    "65773a3129000000000000000200000000020231303230e86be5cf8b010000d00700000002020007000000000000000500000000000080"
)


def test_version_2_records_are_still_read():
    rec = decode_profile(bytes.fromhex(PROFILE_V2_HEX))
    want_vectors = np.array([[0.5, -1.25, 3.0, 0.0], [1e-3, 2, 4, -8]], np.float32).astype(np.float16).astype(np.float32)
    assert rec == ProfileRecord(
        "u-2", want_vectors, np.array([1.5, 2.25]), 1700000003000, 3, 2, {"t.view:1": 41},
        [HistoryEntry("10", 1700000001000, 0), HistoryEntry("20", 1700000003000, 2)], [1, 0, 1], 1700000009000,
        [7, 2**63 + 5],
    )
    assert decode_profile(encode_profile(rec), encode_history(rec)) == rec
    # a separate history record wins over the one inside an old profile record
    newer = make_profile(history=3)
    newer.recent_ids = [9]
    assert decode_profile(bytes.fromhex(PROFILE_V2_HEX), encode_history(newer)).history == newer.history


def test_history_lives_outside_the_profile_record():
    rec = make_profile(dim=4, history=5)
    rec.recent_ids = [1, 2]
    alone = decode_profile(encode_profile(rec))
    assert alone.history == [] and alone.recent_ids == []
    assert decode_history(encode_history(rec)) == (rec.history, [1, 2])


#: History version 1 as frozen: three ASCII entries (one out of time order), recent id 7.
HISTORY_V1_HEX = "010300000000020302693169323269310068e5cf8b01000060ea0000d08affff00010201000700000000000000"


def test_history_v1_bytes_are_frozen():
    """The encoder writes exactly the frozen layout (narrow and wide columns), and reads it back."""
    rec = make_profile(dim=4, history=0)
    rec.history = [HistoryEntry("i1", 1_700_000_000_000, 0), HistoryEntry("i22", 1_700_000_060_000, 1),
                   HistoryEntry("i1", 1_700_000_030_000, 2)]
    rec.recent_ids = [7]
    assert encode_history(rec).hex() == HISTORY_V1_HEX
    assert decode_history(bytes.fromhex(HISTORY_V1_HEX)) == (rec.history, [7])
    # uint16 id lengths, int64 time deltas, a non-ASCII id
    rec.history = [HistoryEntry("café", -5, 0), HistoryEntry("x" * 300, 2**40, 1)]
    rec.recent_ids = []
    wide = encode_history(rec)
    assert wide[:12].hex() == "01020000000305002c016361" and len(wide) == 335
    assert decode_history(wide) == (rec.history, [])
    rec.history = [HistoryEntry("a", 0, 0), HistoryEntry("b", 2**64, 0)]  # would wrap to a delta of 0
    with pytest.raises(ValueError, match="int64"):
        encode_history(rec)


@settings(max_examples=100, deadline=None)
@given(profiles())
def test_float16_vectors_round_trip_within_half_precision(rec):
    out = decode_profile(encode_profile(rec, vector_dtype="float16"), encode_history(rec))
    assert out.vectors.dtype == np.float32
    if rec.vectors.size and np.abs(rec.vectors).max() > 65504:  # beyond float16: kept as float32
        np.testing.assert_array_equal(out.vectors, rec.vectors)
    else:
        np.testing.assert_array_equal(out.vectors, rec.vectors.astype(np.float16).astype(np.float32))
    rec.vectors = out.vectors
    assert out == rec  # everything but the vectors is exact


def test_unknown_vector_dtype_raises():
    with pytest.raises(ValueError):
        encode_profile(make_profile(dim=4), vector_dtype="bfloat16")
    data = bytearray(encode_profile(make_profile(user_id="ab", dim=4)))
    data[1 + 2 + 2 + 38] = 9  # the dtype byte after version, user id and the fixed fields
    with pytest.raises(RecordError, match="dtype code 9"):
        decode_profile(bytes(data))


@settings(max_examples=200, deadline=None)
@given(items())
def test_item_round_trip(rec):
    out = decode_item(encode_item(rec))
    assert out == rec
    assert out.vector.dtype == np.float32


def test_equality_sees_array_differences():
    a, b = make_profile(), make_profile()
    assert a == b
    b.vectors[1, 5] += 1
    assert a != b
    assert make_item() != make_item(seed=1)


def test_decoded_arrays_are_writable():
    rec = decode_profile(encode_profile(make_profile()))
    rec.vectors *= 0.5  # the processor updates profiles in place
    rec.weights += 1
    decode_item(encode_item(make_item())).vector[0] = 0


def test_float64_input_is_stored_as_float32():
    rec = make_profile(dim=8)
    rec.vectors = rec.vectors.astype(np.float64)
    assert decode_profile(encode_profile(rec)).vectors.dtype == np.float32


@pytest.mark.parametrize(
    ("encode", "decode", "rec", "version"),
    [
        (encode_profile, decode_profile, make_profile(), PROFILE_VERSION),
        (encode_history, decode_history, make_profile(history=4), HISTORY_VERSION),
        (encode_item, decode_item, make_item(), ITEM_VERSION),
    ],
)
def test_unknown_version_truncation_and_padding_raise(encode, decode, rec, version):
    data = encode(rec)
    assert data[0] == version
    with pytest.raises(RecordError, match=r"unknown \w+ record version 99") as exc:
        decode(bytes([99]) + data[1:])
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, ValueError)
    for n in range(len(data)):
        with pytest.raises(RecordError) as exc:
            decode(data[:n])
        assert "\n" not in str(exc.value)
    with pytest.raises(RecordError, match="trailing"):
        decode(data + b"\0")


def test_invalid_utf8_raises_record_error():
    data = bytearray(encode_profile(make_profile(user_id="ab")))
    data[3] = 0xFF  # first byte of the user id (after version byte and u16 length)
    with pytest.raises(RecordError, match="UTF-8"):
        decode_profile(bytes(data))


def test_empty_history_and_unicode_ids():
    rec = make_profile(user_id="użytkownik-😀", history=0)
    rec.applied = {"tópico:0": 3}
    assert decode_profile(encode_profile(rec), encode_history(rec)) == rec


def test_bad_shapes_are_rejected_at_encode():
    rec = make_profile(dim=4)
    rec.weights = np.zeros(3)
    with pytest.raises(ValueError, match="vectors"):
        encode_profile(rec)


def test_profile_size_at_dim_384(capsys):
    """The size budget: dim 384, 2 horizons, 3 applied partitions; the history apart.

    The profile record does not grow with the history: float16 keeps it under 2 KB. MovieLens
    ids ("1".."1682") and ids like "item-000123" bracket the history record's size.
    """
    short = make_profile(dim=384, horizons=2, history=50)
    long = make_profile(dim=384, horizons=2, history=50)
    long.history = [HistoryEntry(f"item-{i:06d}", h.ts_ms, h.kind) for i, h in enumerate(long.history)]
    fixed = 1 + 2 + 2 + 4 * 8 + 2 + 4 + 1  # version, user id, 4 int64s, H, dim, dtype
    arrays = 2 * 384 * 4 + 2 * 8 + 1 + 3 * 8  # vectors, weights, kind counts
    applied = 2 + sum(2 + len(k) + 8 for k in short.applied)
    size_f32 = len(encode_profile(short))
    assert size_f32 == fixed + arrays + applied == len(encode_profile(long))
    size_f16 = len(encode_profile(short, vector_dtype="float16"))
    assert size_f16 == size_f32 - 2 * 384 * 2
    assert size_f16 <= 2048

    ids = sum(len(h.item_id) for h in short.history)
    history_fixed = 1 + 4 + 1 + 8 + 2  # version, count, flags, first ts, recent-id count
    history_short = history_fixed + 50 * (1 + 1) + 49 * 4 + ids
    assert len(encode_history(short)) == history_short
    assert len(encode_history(long)) == history_short - ids + 50 * len("item-000000")
    short.recent_ids = list(range(32))
    assert len(encode_history(short)) == history_short + 32 * 8
    with capsys.disabled():
        print(f"\nprofile record, dim 384 x 2 horizons: {size_f32} B (float32), {size_f16} B (float16); "
              f"history record, 50 entries + 32 event ids: {len(encode_history(short))} B (MovieLens ids)")
