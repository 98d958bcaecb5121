"""The hybrid ranking's online signals: exact counts, incremental == rebuilt, the store's
history-change hook, and the blend through the Processor and the replay."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

from store import HistoryEntry, LmdbStore, ProfileRecord
from stream.catalog import Catalogue
from stream.config import load_settings
from stream.hybrid import HybridFit
from stream.processor import Processor, with_history
from stream.replay import run_replay
from stream.signals import ItemSignals, blend_signals, zscore_rows
from tests.test_replay import clustered_world

DAY_MS = 86_400_000

T0 = 1_700_000_000_000


def catalogue_of(n: int, dim: int = 4) -> Catalogue:
    rng = np.random.default_rng(0)
    catalogue = Catalogue(dim)
    for i in range(n):
        v = rng.normal(size=dim).astype(np.float32)
        catalogue.upsert(f"i{i}", v / np.linalg.norm(v))
    return catalogue


def entries(*items: str, start: int = T0, step: int = 1000) -> list[HistoryEntry]:
    return [HistoryEntry(item, start + n * step, 0) for n, item in enumerate(items)]


def brute_force(catalogue: Catalogue, histories: list[list[HistoryEntry]], window: int, half_life_ms: float):
    """Co-occurrence, counts and popularity straight from their definitions."""
    n = len(catalogue)
    cooc, counts, pop = np.zeros((n, n)), np.zeros(n), np.zeros(n)
    ref = max((e.ts_ms for h in histories for e in h), default=0)
    for hist in histories:
        rows = [catalogue.index[e.item_id] for e in hist[-window:] if e.item_id in catalogue.index]
        for a, b in permutations(range(len(rows)), 2):
            if rows[a] != rows[b]:
                cooc[rows[a], rows[b]] += 1
        for r in rows:
            counts[r] += 1
        for e in hist:
            if e.item_id in catalogue.index:
                pop[catalogue.index[e.item_id]] += 2.0 ** (-(ref - e.ts_ms) / half_life_ms)
    return cooc, counts, pop / (pop.max() or 1.0)


def random_stream(seed: int, n_items: int, users: int, events: int, history_len: int):
    """Per-user histories as the flush keeps them, with every (before, after) change."""
    rng = np.random.default_rng(seed)
    histories: dict[str, list[HistoryEntry]] = {f"u{u}": [] for u in range(users)}
    changes = []
    for n in range(events):
        user = f"u{int(rng.integers(users))}"
        # some late events (older than the user's newest) and some unknown items (queries)
        item = "q:search" if rng.random() < 0.05 else f"i{int(rng.integers(n_items))}"
        ts = T0 + n * 60_000 - int(rng.integers(0, 2)) * int(rng.integers(0, 3 * DAY_MS))
        before = histories[user]
        histories[user] = with_history(before, [HistoryEntry(item, ts, int(rng.integers(3)))], history_len)
        changes.append((before, histories[user]))
    return histories, changes


#: ``max_items`` that keeps co-occurrence dense, and one that makes any catalogue sparse
STORAGES = pytest.mark.parametrize("max_items", [4096, 1], ids=["dense", "sparse"])


@STORAGES
def test_counts_pairs_in_the_window_and_forgets_what_leaves_it(max_items):
    catalogue = catalogue_of(5)
    signals = ItemSignals(catalogue, window=2, half_life_s=86_400, max_items=max_items)
    h1 = entries("i0", "i1")
    signals.replace([], h1)
    assert signals.cooc[0, 1] == signals.cooc[1, 0] == 1 and signals.cooc.sum() == 2
    h2 = entries("i0", "i1", "i2")  # window 2: (i1, i2) now, i0 left it
    signals.replace(h1, h2)
    assert signals.cooc[1, 2] == signals.cooc[2, 1] == 1 and signals.cooc.sum() == 2
    assert signals.counts.tolist() == [0, 1, 1, 0, 0]
    signals.replace(h2, [])  # forgotten
    assert not signals.cooc.any() and not signals.counts.any() and not signals.popularity.any()


@STORAGES
def test_same_item_twice_is_no_pair_with_itself(max_items):
    catalogue = catalogue_of(3)
    signals = ItemSignals(catalogue, window=10, half_life_s=86_400, max_items=max_items)
    signals.replace([], entries("i0", "i1", "i0"))
    assert np.diag(signals.cooc).sum() == 0
    assert signals.cooc[0, 1] == signals.cooc[1, 0] == 2  # both i0 positions pair with i1
    assert signals.counts[0] == 2


@STORAGES
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_equals_rebuilt_and_the_definition(seed, max_items):
    catalogue = catalogue_of(30)
    histories, changes = random_stream(seed, 30, users=12, events=600, history_len=20)
    incremental = ItemSignals(catalogue, window=8, half_life_s=2 * 86_400, max_items=max_items)
    incremental.apply(changes)
    assert incremental.sparse == (max_items < 30)
    rebuilt = ItemSignals(catalogue, window=8, half_life_s=2 * 86_400, max_items=max_items)
    rebuilt.apply(((), h) for h in histories.values())
    cooc, counts, pop = brute_force(catalogue, list(histories.values()), 8, 2 * DAY_MS)
    np.testing.assert_array_equal(incremental.cooc, cooc)
    np.testing.assert_array_equal(rebuilt.cooc, cooc)
    np.testing.assert_array_equal(incremental.counts, counts)
    np.testing.assert_allclose(incremental.popularity_scores(), pop, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rebuilt.popularity_scores(), pop, rtol=1e-5, atol=1e-7)


@STORAGES
def test_cooccurrence_scores_are_cosine_item_knn(max_items):
    catalogue = catalogue_of(12)
    histories, changes = random_stream(5, 12, users=6, events=200, history_len=10)
    signals = ItemSignals(catalogue, window=6, half_life_s=86_400, max_items=max_items)
    signals.apply(changes)
    cooc, counts, _ = brute_force(catalogue, list(histories.values()), 6, DAY_MS)
    norm = np.sqrt(np.maximum(counts, 1))
    got = signals.cooccurrence_scores(list(histories.values()))
    for u, hist in enumerate(histories.values()):
        rows = [catalogue.index[e.item_id] for e in hist[-6:] if e.item_id in catalogue.index]
        want = sum(cooc[h] / norm[h] for h in rows) / norm if rows else np.zeros(12)
        np.testing.assert_allclose(got[u], want, rtol=1e-5, atol=1e-6)


def test_catalogue_growth_keeps_counts_and_large_catalogues_go_sparse(caplog):
    caplog.set_level("INFO", logger="stream.signals")
    catalogue = catalogue_of(3)
    signals = ItemSignals(catalogue, window=5, half_life_s=86_400, max_items=4)
    signals.replace([], entries("i0", "i1"))
    catalogue.upsert("i3", np.ones(4, np.float32) / 2)
    signals.replace([], entries("i3", "i0"))
    assert signals.cooc.shape == (4, 4) and signals.cooc[0, 1] == 1 and signals.cooc[3, 0] == 1
    dense_scores = signals.cooccurrence_scores([entries("i0")])
    catalogue.upsert("i4", np.ones(4, np.float32) / 2)  # past max_items: the counts move to sparse rows
    sparse_scores = signals.cooccurrence_scores([entries("i0")])
    assert signals.sparse and "kept sparse" in caplog.text
    np.testing.assert_array_equal(sparse_scores[:, :4], dense_scores)
    assert signals.cooc.shape == (5, 5) and signals.cooc[0, 1] == 1 and signals.cooc[3, 0] == 1
    signals.replace([], entries("i4", "i0"))  # and go on counting
    assert signals.cooc[4, 0] == signals.cooc[0, 4] == 1 and signals.counts.tolist() == [3, 1, 0, 1, 1]
    assert signals.popularity_scores().shape == (5,)


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_rows_match_the_dense_matrix_through_merges_and_decrements(seed):
    """Many rows past SparseCounts.MERGE_AT pending columns, windows sliding out (decrements
    to 0): sparse and dense hold the same counts, scores and pair strengths."""
    catalogue = catalogue_of(120)
    histories, changes = random_stream(seed, 120, users=40, events=3000, history_len=30)
    dense, sparse = (ItemSignals(catalogue, window=12, half_life_s=86_400, max_items=m) for m in (4096, 1))
    for before, after in changes:
        dense.replace(before, after)
        sparse.replace(before, after)
    assert sparse.sparse and not dense.sparse
    np.testing.assert_array_equal(sparse.cooc, dense.cooc)
    users = list(histories.values())
    np.testing.assert_allclose(sparse.cooccurrence_scores(users), dense.cooccurrence_scores(users), rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(seed)
    recs = rng.integers(0, 120, (len(users), 10))
    hist = np.where(rng.random((len(users), 15)) < 0.8, rng.integers(0, 120, (len(users), 15)), -1)
    weight = np.where(hist >= 0, rng.integers(0, 3, hist.shape), 0).astype(np.float32)  # padding weighs 0, as in _because
    np.testing.assert_array_equal(sparse.pair_strength(recs, hist, weight), dense.pair_strength(recs, hist, weight))


def test_store_reports_committed_history_changes_only(tmp_path):
    store = LmdbStore(tmp_path / "s.lmdb", durable=False)
    seen: list = []
    store.on_history_change = seen.append

    def profile(user: str, history: list[HistoryEntry]) -> ProfileRecord:
        return ProfileRecord(user, np.zeros((1, 2), np.float32), np.zeros(1), 0, len(history), 1, {}, history, [0, 0, 0], 0)

    h1, h2 = entries("a"), entries("a", "b")
    with store.write() as txn:
        txn.put_profile(profile("u", h1))
        txn.put_profile(profile("u", h2))  # twice in one block: two changes, in order
    assert seen == [[([], h1), (h1, h2)]]
    with pytest.raises(RuntimeError), store.write() as txn:
        txn.put_profile(profile("v", h1))
        raise RuntimeError("aborted")
    assert len(seen) == 1  # nothing committed, nothing reported
    with store.read() as r:  # what a rebuild reads: the histories, without the vectors
        assert list(r.iter_histories()) == [(p.user_id, p.history) for p in r.iter_profiles()] == [("u", h2)]
    store.forget_user("u")
    assert seen[-1] == [(h2, [])]
    store.close()


def test_zscore_and_blend():
    rng = np.random.default_rng(0)
    scores = rng.normal(3.0, 2.0, size=(3, 50)).astype(np.float32)
    z = zscore_rows(scores)
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=1), 1, atol=1e-4)
    assert not zscore_rows(np.ones((2, 5))).any()  # constant rows: no information, no NaN
    cooc, pop = rng.random((3, 50)), rng.random(50)
    np.testing.assert_allclose(blend_signals(scores, cooc, pop, (2.0, 0.5)),
                               z + 2.0 * zscore_rows(cooc) + 0.5 * zscore_rows(pop[None, :]), rtol=1e-5, atol=1e-5)


def test_processor_without_weights_ranks_as_before_and_with_weights_blends(tmp_path):
    catalogue, events = clustered_world(1)
    base = load_settings(None, store={"path": tmp_path / "a.lmdb"})
    hybrid = load_settings(None, store={"path": tmp_path / "b.lmdb"}, ranking={"hybrid": {"cooccurrence": 1.0, "popularity": 0.5}})
    plain, blended = (Processor(s, LmdbStore(s.store.path, durable=False), catalogue) for s in (base, hybrid))
    assert plain.signals is None and blended.signals is not None
    blended.follow_store()
    from stream.windows import UserWindow

    windows: dict[str, UserWindow] = {}
    for e in events:
        windows.setdefault(e.user_id, UserWindow(e.user_id)).events.append(e)
    for p in (plain, blended):
        p.flush(list(windows.values()), now_ms=0, recommend=False)
    with plain.store.read() as r:
        profiles = [r.get_profile(u) for u in sorted(windows)]
    exclude = [catalogue.indices({h.item_id for h in p.history}) for p in profiles]
    rebuilt = ItemSignals(catalogue, hybrid.ranking.hybrid.window, hybrid.ranking.hybrid.popularity_half_life_s)
    rebuilt.rebuild(blended.store)  # the hook kept the same state a rebuild computes
    np.testing.assert_array_equal(rebuilt.cooc, blended.signals.cooc)
    parts = blended.score_parts(profiles)
    np.testing.assert_array_equal(parts.profile, plain.score_parts(profiles).profile)
    want = blend_signals(parts.profile, rebuilt.cooccurrence_scores([p.history for p in profiles]),
                         rebuilt.popularity_scores(), (1.0, 0.5))
    for u, rows in enumerate(exclude):
        want[u, rows] = -np.inf
    np.testing.assert_allclose(blended.score_rows(profiles, exclude), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(blended.combine(parts, profiles, exclude, (0.0, 0.0)), plain.score_rows(profiles, exclude))


def test_fit_chooses_weights_on_validation_and_replay_serves_them(tmp_path):
    """In a world where co-occurrence is the only signal (random item vectors, users who
    share baskets), the fit must choose a co-occurrence weight and it must help on test."""
    rng = np.random.default_rng(7)
    catalogue = catalogue_of(40, dim=8)
    baskets = [rng.choice(40, size=6, replace=False) for _ in range(6)]
    from stream.events import Event

    events, ts = [], T0
    for u in range(120):
        basket = baskets[u % len(baskets)]
        for j in rng.permutation(basket):
            ts += int(rng.integers(1, 100_000))
            events.append(Event(f"u{u}", f"i{j}", ts, 0, "replay:0", len(events)))
    settings = load_settings(None, store={"path": tmp_path / "s.lmdb"})
    fit = HybridFit(settings.ranking.k)
    result = run_replay(settings, events, catalogue, observe_parts=fit.observe)
    chosen = fit.fit()
    assert chosen["weights"]["cooccurrence"] > 0
    assert chosen["valid"]["ndcg"] > chosen["profile_alone"]["valid"]["ndcg"]
    assert chosen["test"]["hr"] > chosen["profile_alone"]["test"]["hr"]
    # the replay's own recstream row is the configured ranking: the profile alone here
    assert result["metrics"]["recstream"]["hr"] == pytest.approx(chosen["profile_alone"]["test"]["hr"])
    served = load_settings(None, store={"path": tmp_path / "t.lmdb"}, ranking={"hybrid": {
        "cooccurrence": chosen["weights"]["cooccurrence"], "popularity": chosen["weights"]["popularity"]}})
    again = run_replay(served, events, catalogue)
    assert again["metrics"]["recstream"]["hr"] == pytest.approx(chosen["test"]["hr"])


def test_cold_weights_alone_leave_an_untuned_model_as_it_was(tmp_path):
    catalogue, events = clustered_world(2)
    cold_only = load_settings(None, ranking={"hybrid": {"cold_cooccurrence": 3.0, "cold_popularity": 1.0}})
    with LmdbStore(tmp_path / "s.lmdb", durable=False) as store:
        processor = Processor(cold_only, store, catalogue)
        assert processor.signals is None and not any(processor.hybrid_weights)


def test_window_longer_than_the_stored_history_is_refused():
    with pytest.raises(ValueError, match="history_len"):
        load_settings(None, store={"history_len": 10}, ranking={"hybrid": {"cooccurrence": 1.0, "window": 20}})
    load_settings(None, store={"history_len": 10})  # hybrid off: the window is not read


def test_because_names_the_items_that_co_occur_when_the_hybrid_ranks(tmp_path):
    """``t`` looks like ``y`` but is consumed with ``x``: the profile alone explains ``t`` by
    ``y``; the hybrid, where co-occurrence drives it, by ``x``."""
    catalogue = Catalogue(4)
    basis = np.eye(4, dtype=np.float32)
    catalogue.upsert("x", basis[0])
    catalogue.upsert("t", basis[1])
    y = basis[1] + 0.1 * basis[2]
    catalogue.upsert("y", y / np.linalg.norm(y))
    for i in range(9):
        v = np.random.default_rng(i).normal(size=4).astype(np.float32)
        catalogue.upsert(f"f{i}", v / np.linalg.norm(v))
    from stream.events import Event
    from stream.windows import UserWindow

    windows = []
    for u in range(30):
        w = UserWindow(f"c{u}")
        w.events = [Event(f"c{u}", item, T0 + 1000 * u + n, 0, "s:0", 2 * u + n) for n, item in enumerate(("x", "t"))]
        windows.append(w)
    me = UserWindow("me")
    me.events = [Event("me", item, T0 + 100_000 + n, 0, "s:0", 100 + n) for n, item in enumerate(("x", "y"))]
    explained = {}
    for name, weights in (("profile", (0.0, 0.0)), ("hybrid", (5.0, 0.0))):
        settings = load_settings(None, ranking={"because": 1, "hybrid": {"cooccurrence": weights[0], "popularity": weights[1]}})
        with LmdbStore(tmp_path / f"{name}.lmdb", durable=False) as store:
            processor = Processor(settings, store, catalogue)
            processor.follow_store()
            processor.flush(windows, now_ms=0, recommend=False)
            (rec,) = processor.flush([me], now_ms=0).recommendations
        explained[name] = {i["item_id"]: i["because"] for i in rec["items"]}
    assert explained["profile"]["t"] == ["y"]
    assert explained["hybrid"]["t"] == ["x"]
