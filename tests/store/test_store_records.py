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
    decode_item,
    decode_profile,
    encode_item,
    encode_profile,
)
from store.records import ITEM_VERSION, PROFILE_VERSION

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
    out = decode_profile(encode_profile(rec))
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
    assert decode_profile(encode_profile(rec)) == rec  # re-encoded as the current version


@settings(max_examples=100, deadline=None)
@given(profiles())
def test_float16_vectors_round_trip_within_half_precision(rec):
    out = decode_profile(encode_profile(rec, vector_dtype="float16"))
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
    assert decode_profile(encode_profile(rec)) == rec


def test_bad_shapes_are_rejected_at_encode():
    rec = make_profile(dim=4)
    rec.weights = np.zeros(3)
    with pytest.raises(ValueError, match="vectors"):
        encode_profile(rec)


def test_profile_size_at_dim_384(capsys):
    """The size budget: dim 384, 2 horizons, 50 history entries, 3 applied partitions.

    MovieLens ids ("1".."1682") and ids like "item-000123" bracket the history's share.
    """
    short = make_profile(dim=384, horizons=2, history=50)
    long = make_profile(dim=384, horizons=2, history=50)
    long.history = [HistoryEntry(f"item-{i:06d}", h.ts_ms, h.kind) for i, h in enumerate(long.history)]
    fixed = 1 + 2 + 2 + 4 * 8 + 2 + 4 + 1 + 2  # version, user id, 4 int64s, H, dim, dtype, recent ids
    arrays = 2 * 384 * 4 + 2 * 8 + 1 + 3 * 8  # vectors, weights, kind counts
    applied = 2 + sum(2 + len(k) + 8 for k in short.applied)
    history_hdr = 4 + 1 + 8  # count, flags, first ts
    ids = sum(len(h.item_id) for h in short.history)
    expected_short = fixed + arrays + applied + history_hdr + 50 * (1 + 1) + 49 * 4 + ids
    size_short, size_long = len(encode_profile(short)), len(encode_profile(long))
    assert size_short == expected_short
    assert size_long == expected_short - ids + 50 * len("item-000000")
    size_f16 = len(encode_profile(short, vector_dtype="float16"))
    assert size_f16 == size_short - 2 * 384 * 2
    short.recent_ids = list(range(32))
    size_f16_ids = len(encode_profile(short, vector_dtype="float16"))
    assert size_f16_ids == size_f16 + 32 * 8
    with capsys.disabled():
        print(f"\nprofile record, dim 384 x 2 horizons, 50 history: {size_short} B (MovieLens ids), "
              f"{size_long} B (11-byte ids); float16 vectors: {size_f16} B, + 32 event ids: {size_f16_ids} B")
    assert size_long <= 4096 and size_f16 <= 2560
