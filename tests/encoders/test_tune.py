"""Tuning the encoder on behaviour: no leakage, it learns, and serving equals training.

One small tuning run on a slice of ml-100k (150 users, small dimensions, fixed seed) is
shared by the module; it takes well under a minute on two cores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from encoders import CachedEncoder, EmbeddingCache, EncoderError, OnnxTextEncoder
from dataclasses import replace

from encoders.adapter import ADAPTER_FILE, Adapter, fact_key, gelu
from encoders.tune import _lr_schedule, build_training_data, fact_vocabulary, tune
from stream.catalog import Catalogue, item_text
from stream.config import load_settings
from stream.events import Event
from stream.processor import Processor
from stream.replay import run_replay
from stream.sources import dataset_source

USERS = 150


def _event(user: str, item: str, ts_s: int, kind: int = 0, n: int = 0) -> Event:
    return Event(user, item, ts_s * 1000, kind, "replay:0", n, None, None, None)


def test_training_data_never_sees_a_users_last_two_events_or_the_future():
    index = {f"i{n}": n for n in range(10)}
    events = [_event("a", f"i{n}", 100 + n, n % 3, n) for n in range(6)] + [_event("b", "i9", 50, 0, 6), _event("b", "i8", 60, 0, 7)]
    events.sort(key=lambda e: e.ts_ms)
    train, valid = build_training_data(events, index, context=4)
    # user a: 6 events → 4 training targets (i0..i3), validation i4, test i5 never used
    assert sorted(train.target.tolist()) == sorted([0, 1, 2, 3, 9, 8])
    assert valid.target.tolist() == [4]
    assert 5 not in train.ctx_rows and 5 not in valid.ctx_rows and 5 not in np.concatenate(train.seen + valid.seen)
    assert 4 not in train.ctx_rows  # the validation event is no training context either
    for r in range(len(train)):
        ctx = train.ctx_rows[r][train.ctx_rows[r] >= 0]
        assert train.target[r] not in ctx
        assert (train.ctx_age_s[r][train.ctx_rows[r] >= 0] >= 0).all()  # all context is in the past
    # the widest context of user a's validation example holds its 4 previous events, newest last
    assert valid.ctx_rows[0].tolist() == [0, 1, 2, 3]
    assert valid.ctx_age_s[0].tolist() == [3.0, 2.0, 1.0, 0.0]


def test_cosine_schedule_falls_from_lr_to_zero_by_steps_or_by_time():
    import time

    cfg = load_settings(None).tune
    now = time.monotonic()
    by_steps = _lr_schedule(cfg, now, now + 3600, total_steps=100)  # the budget is far: steps decide
    rates = [by_steps(step) for step in range(0, 101, 10)]
    assert rates[0] == pytest.approx(cfg.lr, rel=1e-3) and rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert rates[5] == pytest.approx(cfg.lr / 2, rel=1e-2)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    by_time = _lr_schedule(cfg, now - 10, now, total_steps=10**9)  # the budget is spent: time decides
    assert by_time(1) == pytest.approx(0.0, abs=1e-12)
    constant = _lr_schedule(cfg.model_copy(update={"lr_schedule": "constant"}), now, now, total_steps=1)
    assert constant(0) == constant(10**6) == cfg.lr


def test_held_out_items_are_absent_from_training():
    index = {f"i{n}": n for n in range(10)}
    events = [_event("a", f"i{n}", 100 + n, 0, n) for n in range(8)]
    train, valid = build_training_data(events, index, context=10, drop_items={"i2", "i3"})
    used = set(train.target.tolist()) | set(train.ctx_rows[train.ctx_rows >= 0].tolist()) | set(valid.ctx_rows[valid.ctx_rows >= 0].tolist())
    assert not used & {2, 3}


@pytest.fixture(scope="module")
def ml_slice(ml100k_dir, tmp_path_factory):
    settings = load_settings(
        tune={"dim": 32, "hidden": 64, "epochs": 4, "batch_size": 128, "context": 1000, "positions": 20, "seed": 7,
              "lr": 5e-3},
    )
    events, items = dataset_source("ml-100k", settings, ml100k_dir)
    users = sorted({e.user_id for e in events}, key=int)[:USERS]
    keep = set(users)
    events = [e for e in events if e.user_id in keep]
    return settings, events, items


@pytest.fixture(scope="module")
def tuned(ml_slice, fp32_dir, cache_dir, tmp_path_factory):
    settings, events, items = ml_slice
    base = OnnxTextEncoder(fp32_dir, provider="cpu")
    with EmbeddingCache(cache_dir / "embeddings.lmdb") as cache:
        vectors = CachedEncoder(base, cache).encode([item_text(i) for i in items])
    out = tmp_path_factory.mktemp("tuned") / "model"
    report = tune(events, [i.item_id for i in items], vectors, fp32_dir, out, settings.tune, k=10,
                  item_facts=[i.facts for i in items])
    return report, out


def _replay_validation_hr(settings, events, items, encoder) -> float:
    catalogue = Catalogue.from_items(items, encoder)
    result = run_replay(settings, events, catalogue, encoder=encoder, baselines=[])
    return result["validation"]["recstream"]["hr"]


def test_tuning_improves_the_validation_metric_over_the_untuned_model(ml_slice, tuned, fp32_dir):
    settings, events, items = ml_slice
    report, out = tuned
    base_hr = _replay_validation_hr(settings, events, items, OnnxTextEncoder(fp32_dir, provider="cpu"))
    tuned_hr = _replay_validation_hr(settings, events, items, OnnxTextEncoder(out, provider="cpu"))
    assert tuned_hr > base_hr + 0.03, (base_hr, tuned_hr)
    assert report.epochs[report.best_epoch]["valid_hr"] == max(e["valid_hr"] for e in report.epochs)


def test_the_worker_scoring_path_reproduces_the_tuners_own_validation(ml_slice, tuned):
    """Replay (numpy profiles, history, adapter query) must equal training's torch maths."""
    settings, events, items = ml_slice
    report, out = tuned
    replay_hr = _replay_validation_hr(settings, events, items, OnnxTextEncoder(out, provider="cpu"))
    assert replay_hr == pytest.approx(report.epochs[report.best_epoch]["valid_hr"], abs=2.5 / USERS)


def test_cold_hybrid_weights_apply_to_the_items_tuning_never_saw(tuned, ml_slice, tmp_path):
    """``ranking.hybrid.cold_*`` add to the weights of the items without a residual only."""
    from store import LmdbStore
    from stream.processor import ScoreParts
    from stream.signals import zscore_rows

    settings, _, _ = ml_slice
    report, out = tuned
    encoder = OnnxTextEncoder(out, provider="cpu")
    seen = list(encoder.adapter.residual_rows())[:6]
    catalogue = Catalogue(encoder.dim)
    rng = np.random.default_rng(0)
    for item_id in seen + ["new-1", "new-2", "new-3"]:
        catalogue.upsert(item_id, rng.normal(size=encoder.dim).astype(np.float32))
    with LmdbStore(tmp_path / "s.lmdb", durable=False) as store:
        processor = Processor(settings, store, catalogue, encoder)
        assert processor._cold_items().tolist() == [0.0] * 6 + [1.0] * 3
        parts = ScoreParts(rng.normal(size=(2, 9)).astype(np.float32), rng.random((2, 9)).astype(np.float32),
                           rng.random(9).astype(np.float32))
        profiles = [processor.new_profile("a"), processor.new_profile("b")]
        got = processor.combine(parts, profiles, [np.zeros(0, np.int64)] * 2, (0.0, 0.0, 5.0, 0.0))
    z = zscore_rows(parts.profile)
    np.testing.assert_allclose(got[:, :6], z[:, :6], atol=1e-6)  # seen items: the profile alone
    np.testing.assert_allclose(got[:, 6:], (z + 5.0 * zscore_rows(parts.cooccurrence))[:, 6:], atol=1e-5)


def test_tuned_model_loads_through_the_normal_path(tuned, ml_slice):
    settings, _, items = ml_slice
    report, out = tuned
    encoder = OnnxTextEncoder(out, provider="cpu")
    assert encoder.adapter is not None and encoder.dim == 32
    assert list(encoder.adapter.horizons) == list(settings.tune.half_lives_s)
    # unseen items (none held out here, so a made-up id) get their text vector alone
    texts = [item_text(items[0]), "A film nobody rated (2031). Genres: Documentary"]
    text_vectors = encoder.encode(texts)
    adapted = encoder.adapter.adapt_items([items[0].item_id, "never-seen"], text_vectors)
    assert np.array_equal(adapted[1], text_vectors[1])
    assert not np.array_equal(adapted[0], text_vectors[0])  # item seen in tuning: residual added


def test_a_corrupt_adapter_is_refused_with_a_clear_error(tuned, tmp_path):
    _, out = tuned
    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    path = copy / ADAPTER_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EncoderError, match="adapter.npz: checksum does not match"):
        OnnxTextEncoder(copy, provider="cpu")


def test_adapter_round_trips_without_pickle(tuned, tmp_path):
    _, out = tuned
    adapter = Adapter.load(out)
    adapter.save(tmp_path)
    again = Adapter.load(tmp_path)
    for name in ("residuals", "half_lives_s", "q_w1", "positions"):
        assert np.array_equal(getattr(adapter, name), getattr(again, name))
    with np.load(Path(tmp_path) / ADAPTER_FILE, allow_pickle=False) as data:
        assert data["item_ids"].dtype.kind == "U"


def test_fact_vocabulary_keeps_facts_shared_by_tuned_items_only():
    facts = [{"director": ["d1"], "actor": ["a1", "a2"]}, {"director": ["d1"], "actor": ["a2"]},
             {"director": ["d2"], "actor": ["a1"]}, {"director": ["d2"]}]
    trainable = np.array([True, True, True, False])  # item 3 held out: d2 is shared with it only
    assert fact_vocabulary(facts, trainable, 2) == [fact_key("actor", "a1"), fact_key("actor", "a2"), fact_key("director", "d1")]


def test_facts_place_an_item_never_seen_in_tuning(tuned, ml_slice):
    """An item no tuning user touched gets the learned vectors of the facts it shares with
    tuned items (mean, as the tuner's EmbeddingBag); without facts it has its text alone."""
    _, _, items = ml_slice
    report, out = tuned
    adapter = OnnxTextEncoder(out, provider="cpu").adapter
    assert report.fact_vocabulary == len(adapter.fact_keys) > 100
    assert np.abs(adapter.fact_vectors).max() > 1e-3  # trained away from their zero start
    tuned_ids = set(adapter.residual_rows())
    cold = next(i for i in items if i.item_id not in tuned_ids and adapter.fact_part(i.facts) is not None)
    text = np.random.default_rng(0).normal(size=(1, adapter.dim)).astype(np.float32)
    with_facts = adapter.adapt_items([cold.item_id], text, [cold.facts])
    assert np.array_equal(adapter.adapt_items([cold.item_id], text), text)
    assert np.array_equal(adapter.adapt_items([cold.item_id], text, [{}]), text)
    known = [adapter.fact_rows[fact_key(r, e)] for r, es in cold.facts.items() for e in es if fact_key(r, e) in adapter.fact_rows]
    np.testing.assert_allclose(with_facts[0], text[0] + adapter.fact_vectors[known].mean(axis=0), rtol=1e-6, atol=1e-6)
    assert not np.allclose(with_facts, text)
    # the catalogue path (what replay and the worker use) adds the same part
    catalogue = Catalogue.from_items([cold], OnnxTextEncoder(out, provider="cpu"))
    without = Catalogue.from_items([replace(cold, facts={})], OnnxTextEncoder(out, provider="cpu"))
    np.testing.assert_allclose(catalogue.matrix[0] - without.matrix[0], adapter.fact_vectors[known].mean(axis=0), atol=1e-5)


def test_an_adapter_without_facts_still_loads_and_adapts(tuned, tmp_path):
    _, out = tuned
    old = replace(Adapter.load(out), fact_keys=None, fact_vectors=None)
    old.save(tmp_path)
    with np.load(Path(tmp_path) / ADAPTER_FILE, allow_pickle=False) as data:
        assert "fact_keys" not in data.files  # as adapters written before facts existed
    loaded = Adapter.load(tmp_path)
    assert loaded.fact_keys is None and loaded.fact_rows == {}
    item_id = str(loaded.item_ids[0])
    text = np.zeros((1, loaded.dim), np.float32)
    adapted = loaded.adapt_items([item_id], text, [{"director": ["m.anyone"]}])
    np.testing.assert_array_equal(adapted[0], loaded.residuals[0])


def test_the_worker_stores_facts_and_re_encodes_an_item_when_only_its_facts_change(tuned, ml_slice, tmp_path):
    """Facts are part of a tuned item vector: the worker keeps them in the item record, re-encodes
    on a facts-only change, and on restart recognises its stored vectors as this model's."""
    from collections import Counter

    from stream.catalog import FACTS_KEY
    from stream.owner import StoreState
    from stream.telemetry import WorkerMetrics

    _, _, items = ml_slice
    _, out = tuned
    settings = load_settings(encoder={"model": out, "cache_dir": tmp_path / "cache", "provider": "cpu"},
                             store={"path": tmp_path / "store.lmdb"})
    adapter = Adapter.load(out)
    with_facts = [i for i in items if adapter.fact_part(i.facts) is not None][:3]
    ctx = StoreState(settings, WorkerMetrics(Counter()))
    ctx.open()
    assert ctx.upsert_items(with_facts)[0] == 3 and ctx.upsert_items(with_facts)[0] == 0
    item = with_facts[0]
    with ctx.store.read() as txn:
        record = txn.get_item(item.item_id)
    assert record.attributes[FACTS_KEY] == item.facts and item_text(item) == record.text
    assert FACTS_KEY not in ctx.catalogue.attributes[ctx.catalogue.index[item.item_id]]
    before = ctx.catalogue.matrix[ctx.catalogue.index[item.item_id]].copy()
    assert ctx.upsert_items([replace(item, facts={})])[0] == 1  # same text, other facts
    after = ctx.catalogue.matrix[ctx.catalogue.index[item.item_id]]
    np.testing.assert_allclose(before - after, adapter.fact_part(item.facts), atol=1e-5)
    ctx.upsert_items([item])
    ctx.close()
    again = StoreState(settings, WorkerMetrics(Counter()))
    again.open()
    assert not again.stale_items  # the stored vectors (facts included) are this model's
    np.testing.assert_allclose(again.catalogue.matrix[again.catalogue.index[item.item_id]], before, atol=1e-6)
    again.close()


def _random_adapter(rng, heads: int, positions: int = 5, dim: int = 4, hidden: int = 6) -> Adapter:
    features = (2 + heads) * dim  # two horizons
    shape = (heads, positions) if heads > 1 else (positions,)
    return Adapter(
        item_ids=np.array(["i0"]), residuals=np.zeros((1, dim), np.float32), horizons=np.array(["short", "long"]),
        half_lives_s=np.array([60.0, 3600.0]), kind_weights=np.ones(3), positions=rng.random(shape).astype(np.float32),
        q_w1=rng.normal(size=(features, hidden)), q_b1=rng.normal(size=hidden), q_w2=rng.normal(size=(hidden, dim)),
        q_b2=rng.normal(size=dim), q_skip=rng.normal(size=(features, dim)),
    )


def test_position_heads_each_summarise_the_recent_items_with_their_own_weights(tmp_path):
    """Adapter.query with M heads feeds the MLP M unit position-weighted sums (most recent
    first); an adapter saved before heads existed (1-D positions) is one head."""
    rng = np.random.default_rng(3)
    adapter = _random_adapter(rng, heads=3)
    profiles = rng.normal(size=(2, 2, 4))
    recent = rng.normal(size=(2, 5, 4)).astype(np.float32)
    mask = np.array([[True] * 5, [True, True, False, False, False]])
    unit = lambda x: x / np.linalg.norm(x)  # noqa: E731
    for u in range(2):
        sums = [unit(((adapter.positions[m] * mask[u])[:, None] * recent[u]).sum(axis=0)) for m in range(3)]
        h = np.concatenate([unit(profiles[u, 0]), unit(profiles[u, 1]), *sums])
        want = gelu(h @ adapter.q_w1 + adapter.q_b1) @ adapter.q_w2 + adapter.q_b2 + h @ adapter.q_skip
        np.testing.assert_allclose(adapter.query(profiles, recent, mask)[u], want, rtol=1e-5, atol=1e-5)
    legacy = _random_adapter(rng, heads=1)
    assert legacy.positions.shape == (1, 5) and legacy.recent_items == 5
    legacy.save(tmp_path)
    with np.load(tmp_path / ADAPTER_FILE, allow_pickle=False) as data:
        np.savez(tmp_path / ADAPTER_FILE, **{k: (data[k][0] if k == "positions" else data[k]) for k in data.files})
    with np.load(tmp_path / ADAPTER_FILE, allow_pickle=False) as data:
        assert data["positions"].shape == (5,)  # as written before heads
    again = Adapter.load(tmp_path)
    np.testing.assert_array_equal(again.query(profiles, recent, mask), legacy.query(profiles, recent, mask))


def test_weighted_sums_equal_the_explicit_sum_and_their_gradients():
    import torch

    from encoders.tune import _weighted_sums

    gen = torch.Generator().manual_seed(0)
    items = torch.randn(7, 3, generator=gen, requires_grad=True)
    rows = torch.tensor([[0, 3, 3, 6], [2, 2, 0, 1]])  # repeats: both occurrences count
    weights = torch.rand(2, 5, 4, generator=gen, requires_grad=True)
    got = _weighted_sums(torch, items, rows, weights)
    want = torch.stack([torch.stack([sum(weights[b, k, c] * items[rows[b, c]] for c in range(4)) for k in range(5)])
                        for b in range(2)])
    torch.testing.assert_close(got, want)
    probe = torch.randn(2, 5, 3, generator=gen)
    g_items, g_weights = torch.autograd.grad((got * probe).sum(), (items, weights))
    w_items, w_weights = torch.autograd.grad((want * probe).sum(), (items, weights))
    torch.testing.assert_close(g_items, w_items)
    torch.testing.assert_close(g_weights, w_weights)
