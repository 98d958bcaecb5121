"""Decay maths: order independence, incremental = full recomputation, closed-form cases."""

import numpy as np
from hypothesis import given, settings, strategies as st

from stream.profile import apply_events, apply_one_each, decay, normalised

HALF_LIVES = np.array([86_400_000.0, 30 * 86_400_000.0])
DIM = 8

events_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=90 * 86_400_000),  # ts within 90 days
        st.sampled_from([1.0, 2.0, 4.0]),
        st.integers(min_value=0, max_value=19),  # item index
    ),
    min_size=1,
    max_size=40,
)
ITEMS = normalised(np.random.default_rng(0).normal(size=(20, DIM)).astype(np.float32))


def fold(events, chunks=1):
    vectors, weights, last = np.zeros((2, DIM), np.float32), np.zeros(2), 0
    for part in np.array_split(np.arange(len(events)), chunks):
        if len(part) == 0:
            continue
        chosen = [events[i] for i in part]
        vectors, weights, last = apply_events(
            vectors, weights, last,
            ITEMS[[e[2] for e in chosen]], np.array([e[1] for e in chosen]),
            np.array([e[0] for e in chosen], np.int64), HALF_LIVES,
        )
    return vectors, weights, last


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.randoms(use_true_random=False))
def test_any_order_gives_the_same_profile(events, rnd):
    shuffled = list(events)
    rnd.shuffle(shuffled)
    a = fold(events)
    b = fold(shuffled)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-9)
    assert a[2] == b[2]


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.integers(min_value=2, max_value=8), st.randoms(use_true_random=False))
def test_incremental_windows_equal_full_recomputation(events, chunks, rnd):
    shuffled = list(events)
    rnd.shuffle(shuffled)  # windows may arrive out of event-time order (late events)
    full = fold(events, 1)
    incremental = fold(shuffled, chunks)
    np.testing.assert_allclose(incremental[0], full[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(incremental[1], full[1], rtol=1e-9)


def test_one_half_life_halves_an_old_event():
    e = ITEMS[:1]
    v, w, last = apply_events(np.zeros((2, DIM), np.float32), np.zeros(2), 0, e, np.array([2.0]), np.array([1_000]), HALF_LIVES)
    v2, w2, last2 = apply_events(v, w, last, ITEMS[1:2], np.array([1.0]), np.array([1_000 + 86_400_000]), HALF_LIVES)
    assert last2 == 1_000 + 86_400_000
    np.testing.assert_allclose(w2[0], 2.0 * 0.5 + 1.0)  # short horizon: one half-life
    np.testing.assert_allclose(w2[1], 2.0 * 2 ** (-1 / 30) + 1.0)
    np.testing.assert_allclose(v2[0], 2.0 * 0.5 * e[0] + ITEMS[1], rtol=1e-6)


def test_late_event_does_not_move_the_reference_time():
    v, w, last = apply_events(np.zeros((2, DIM), np.float32), np.zeros(2), 10_000, ITEMS[:1], np.array([1.0]), np.array([4_000]), HALF_LIVES)
    assert last == 10_000
    np.testing.assert_allclose(w, decay(6_000, HALF_LIVES))


def test_normalised_keeps_zero_rows():
    out = normalised(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 90 * 86_400_000), st.integers(0, 90 * 86_400_000),
                          st.sampled_from([1.0, 2.0, 4.0]), st.integers(0, 19)), min_size=1, max_size=30))
def test_apply_one_each_is_bit_identical_to_apply_events_per_user(users):
    """The batched single-event path of a flush must store exactly what the per-user one would."""
    rng = np.random.default_rng(len(users))
    vectors = rng.normal(size=(len(users), 2, DIM)).astype(np.float32)
    weights = rng.uniform(0, 5, size=(len(users), 2))
    last = np.array([u[0] for u in users], np.int64)
    got = apply_one_each(vectors, weights, last, ITEMS[[u[3] for u in users]], np.array([u[2] for u in users]),
                         np.array([u[1] for u in users], np.int64), HALF_LIVES)
    for i, (last_ts, ts, w, item) in enumerate(users):
        want = apply_events(vectors[i], weights[i], last_ts, ITEMS[[item]], np.array([w]), np.array([ts], np.int64), HALF_LIVES)
        assert got[0][i].tobytes() == want[0].tobytes() and got[0].dtype == want[0].dtype
        assert got[1][i].tobytes() == want[1].tobytes()
        assert int(got[2][i]) == want[2]
