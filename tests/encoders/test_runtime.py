"""OnnxTextEncoder: dynamic shapes, length bucketing, awkward texts, providers, settings."""

from __future__ import annotations

import random

import numpy as np
import onnxruntime as ort
import pytest

from encoders import EncoderError, OnnxTextEncoder, load_encoder
from stream.config import EncoderSettings

from encoder_texts import SENTENCES

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def varied() -> list[str]:
    """37 texts of very different token lengths, in no particular order."""
    rng = random.Random(7)
    words = " ".join(SENTENCES).split()
    return [" ".join(rng.choices(words, k=rng.choice([0, 1, 3, 8, 20, 60, 200]))) for _ in range(37)]


def test_batches_match_one_by_one(encoder, varied):
    singles = np.vstack([encoder.encode([t]) for t in varied])  # batch 1, each its own length
    np.testing.assert_allclose(encoder.encode(varied), singles, atol=1e-5)  # one padded batch of 37
    small = OnnxTextEncoder(encoder.export_dir, provider="cpu", batch_size=5)  # 8 length buckets
    np.testing.assert_allclose(small.encode(varied), singles, atol=1e-5)


def test_padding_inside_the_graph_is_masked(encoder, varied):
    """The raw graph on an unsorted, heavily padded batch agrees with unpadded single runs."""
    tokenizer = encoder.tokenizer
    encodings = tokenizer.encode_batch(varied)
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(varied), width), np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
    (batched,) = encoder.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    singles = np.vstack([encoder.encode([t]) for t in varied])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_order_is_restored_after_bucketing(encoder, varied):
    vectors = OnnxTextEncoder(encoder.export_dir, provider="cpu", batch_size=4).encode(varied)
    shuffled = list(range(len(varied)))
    random.Random(1).shuffle(shuffled)
    again = OnnxTextEncoder(encoder.export_dir, provider="cpu", batch_size=4).encode([varied[i] for i in shuffled])
    np.testing.assert_allclose(again, vectors[shuffled], atol=1e-5)
    distinct = [i for i, t in enumerate(varied) if varied.index(t) == i]
    nearest = (vectors[distinct] @ vectors[distinct].T).argmax(1)
    assert list(nearest) == list(range(len(distinct)))  # each row is its own text's vector


def test_shapes_dtype_and_norms(encoder):
    assert encoder.encode([]).shape == (0, 384) and encoder.encode([]).dtype == np.float32
    vectors = encoder.encode(SENTENCES)
    assert vectors.shape == (len(SENTENCES), encoder.dim) == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert len(encoder.model_id) == 64 and encoder.max_length == 128


def test_awkward_texts(encoder):
    huge = " ".join(["cinema"] * 10_000)
    texts = ["", huge, "我喜欢看科幻电影和动画片", "أحب مشاهدة أفلام الخيال العلمي", "🎬🍿🤖👽", "\u200b\t\n", "a\ud800b"]
    vectors = encoder.encode(texts)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # truncated to max_length tokens: twice as long changes nothing
    np.testing.assert_allclose(encoder.encode([huge + " " + huge])[0], vectors[1], atol=1e-6)
    chinese, arabic = vectors[2], vectors[3]
    assert float(chinese @ arabic) < 0.99  # different scripts are tokenised, not all [UNK]


def test_max_length_is_capped_by_the_model(encoder):
    assert OnnxTextEncoder(encoder.export_dir, provider="cpu", max_length=100_000).max_length == 512


def test_rejects_a_single_string(encoder):
    with pytest.raises(TypeError):
        encoder.encode("one text")


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_cuda_requested_without_cuda(fp32_dir):
    with pytest.raises(EncoderError, match="provider 'cuda' requested"):
        OnnxTextEncoder(fp32_dir, provider="cuda")


def test_auto_falls_back_to_cpu(fp32_dir):
    providers = OnnxTextEncoder(fp32_dir, provider="auto").providers
    assert providers[0] == ("CUDAExecutionProvider" if HAS_CUDA else "CPUExecutionProvider")
    if not HAS_CUDA:
        assert providers == ["CPUExecutionProvider"]
    assert OnnxTextEncoder(fp32_dir, provider="cpu").providers == ["CPUExecutionProvider"]


def test_unknown_provider(fp32_dir):
    with pytest.raises(EncoderError, match="unknown provider"):
        OnnxTextEncoder(fp32_dir, provider="tpu")


def test_load_encoder_from_settings(cache_dir, fp32_dir, encoder):
    loaded = load_encoder(EncoderSettings(cache_dir=cache_dir, provider="cpu", max_length=64, batch_size=8))
    assert loaded.export_dir == fp32_dir and loaded.model_id == encoder.model_id
    assert loaded.max_length == 64 and loaded.batch_size == 8 and loaded.dim == 384
    assert loaded.max_batch_tokens == 512  # the CPU default
    tuned = load_encoder(EncoderSettings(cache_dir=cache_dir, provider="cpu", threads=1, max_batch_tokens=256))
    assert tuned.max_batch_tokens == 256
    assert tuned.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(tuned.encode(SENTENCES[:20]), encoder.encode(SENTENCES[:20]), atol=1e-5)


def test_io_binding_path_gives_the_same_vectors(fp32_dir, encoder, varied):
    """The GPU path's binding code, run on CPU (same calls; only the device name differs)."""
    bound = OnnxTextEncoder(fp32_dir, provider="cpu", max_length=128, batch_size=8)
    assert bound.io_binding is HAS_CUDA
    bound.io_binding = True
    np.testing.assert_allclose(bound.encode(varied), encoder.encode(varied), atol=1e-6)


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_fp16_needs_cuda_unless_cpu_is_forced(cache_dir, caplog):
    from encoders import ensure_exported

    fp16_dir = ensure_exported(None, cache_dir, "fp16")
    with pytest.raises(EncoderError, match="fp16 \\(GPU\\) model but CUDA is not available"):
        OnnxTextEncoder(fp16_dir, provider="auto")
    with caplog.at_level("WARNING", logger="encoders.runtime"):
        forced = OnnxTextEncoder(fp16_dir, provider="cpu")
    assert "slower than fp32" in caplog.text
    assert forced.encode(["ok"]).shape == (1, 384)


def test_thread_count_reaches_the_session(fp32_dir):
    session = OnnxTextEncoder(fp32_dir, provider="cpu", threads=1).session
    assert session.get_session_options().intra_op_num_threads == 1


def test_buckets_cap_rows_and_padded_tokens(fp32_dir, varied):
    enc = OnnxTextEncoder(fp32_dir, provider="cpu", batch_size=4, max_batch_tokens=40)
    lengths = [2, 3, 3, 5, 9, 10, 10, 10, 40, 100]
    runs = enc._buckets(lengths)
    assert [list(r) for r in runs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8], [9]]  # one text over the cap still runs
    assert [i for r in runs for i in r] == list(range(len(lengths)))
    assert enc._buckets([7]) == [range(0, 1)]
    singles = np.vstack([enc.encode([t]) for t in varied])
    np.testing.assert_allclose(enc.encode(varied), singles, atol=1e-5)
