"""Export: parity with sentence-transformers, graph shape, manifest, caching, atomicity."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from encoders import EncoderError, OnnxTextEncoder, default_model_dir, ensure_exported, export_onnx
from encoders.export import int8_recipe, source_checksum
from encoders.manifest import FORMAT_VERSION, file_sha256

from encoder_texts import SENTENCES


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """sentence-transformers' own vectors (max_seq_length 256, as the model ships)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_model_dir()), device="cpu")
    assert model.max_seq_length == 256
    return model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(("variant", "min_cosine"), [("fp32", 0.9999), ("int8", 0.99), ("fp16", 0.999)])
def test_parity_with_sentence_transformers(cache_dir, reference, variant, min_cosine):
    directory = ensure_exported(None, cache_dir, variant)
    got = OnnxTextEncoder(directory, provider="cpu", max_length=256).encode(SENTENCES)
    cosines = dict(zip(SENTENCES, _cosines(got, reference).round(5)))
    empty = cosines.pop("")  # two tokens, [CLS][SEP]: int8's worst case, held to 0.975
    assert min(cosines.values()) >= min_cosine, cosines
    assert empty >= min(min_cosine, 0.975)


def test_graph_has_dynamic_axes_and_one_float_output(fp32_dir):
    session = ort.InferenceSession(str(fp32_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}  # BERT takes type ids
    for spec in inputs.values():
        assert all(isinstance(d, str) for d in spec.shape), spec.shape  # symbolic batch, sequence
    ops = {n.op_type for n in __import__("onnx").load(str(fp32_dir / "model.onnx")).graph.node}
    assert {"Attention", "BiasGelu", "LayerNormalization"} <= ops  # onnxruntime's fused kernels where they pay
    assert "SkipLayerNormalization" not in ops  # its CPU kernel is 5x slower than Add + LayerNormalization
    (out,) = session.get_outputs()
    assert out.name == "embeddings" and out.type == "tensor(float)"
    assert isinstance(out.shape[0], str) and out.shape[1] == 384


def test_manifest_records_the_export(fp32_dir):
    manifest = json.loads((fp32_dir / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["variant"] == "fp32" and manifest["dim"] == 384 and manifest["max_length"] == 512
    assert manifest["onnx_sha256"] == file_sha256(fp32_dir / "model.onnx")
    assert manifest["source_sha256"] == source_checksum(default_model_dir())
    assert manifest["tokenizer"] == "tokenizer.json" and (fp32_dir / "tokenizer.json").is_file()
    assert {"torch", "transformers", "onnxruntime"} <= set(manifest["exporter"])
    assert fp32_dir.name.startswith("all-MiniLM-L6-v2-") and fp32_dir.name.endswith("-fp32-fused-ln")
    assert json.loads(manifest["exporter"]["fusions"])["attention"] == 6  # one fused Attention per layer


def test_cached_export_loads_without_torch(fp32_dir, cache_dir):
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from encoders import ensure_exported, OnnxTextEncoder\n"
        f"d = ensure_exported(None, {str(cache_dir)!r}, 'fp32')\n"
        "OnnxTextEncoder(d).encode(['hello'])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n"
        "print(d, time.perf_counter() - t)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    path, seconds = done.stdout.split()
    assert path == str(fp32_dir)
    assert float(seconds) < 5


def test_exported_model_directory_is_accepted_as_is(fp32_dir, cache_dir):
    assert ensure_exported(fp32_dir, cache_dir, "fp32") == fp32_dir
    with pytest.raises(EncoderError, match="fp32 model, not int8"):
        ensure_exported(fp32_dir, cache_dir, "int8")


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    import torch

    def half_export(module, args, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x08\x07half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", half_export)
    out = tmp_path / "models" / "m-fp32"
    with pytest.raises(KeyboardInterrupt):
        export_onnx(default_model_dir(), out, "fp32")
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []  # no temporary directory left behind


def test_bad_inputs_are_one_line_errors(tmp_path, cache_dir):
    with pytest.raises(EncoderError, match="not found"):
        ensure_exported(tmp_path / "nope", cache_dir)
    with pytest.raises(EncoderError, match="not a Hugging Face model directory"):
        ensure_exported(tmp_path, cache_dir)
    with pytest.raises(EncoderError, match="unknown variant"):
        export_onnx(default_model_dir(), tmp_path / "out", "bf16")


def test_parity_over_the_ml100k_catalogue(cache_dir, fp32_dir, int8_dir):
    """fp32 and int8 against the torch original on 160 real item texts and 16 long ones."""
    from encoders.bench import _torch_encoder, bench_texts

    texts = bench_texts(cache_dir, n=160)
    sample = texts["short"] + texts["long"][:16]
    torch_encode, _ = _torch_encoder(default_model_dir(), 128, 2)
    want = np.vstack([torch_encode(sample[i : i + 64]) for i in range(0, len(sample), 64)])
    fp32 = _cosines(OnnxTextEncoder(fp32_dir, provider="cpu").encode(sample), want)
    int8 = _cosines(OnnxTextEncoder(int8_dir, provider="cpu").encode(sample), want)
    assert fp32.min() >= 0.9999
    assert int8.min() >= 0.99 and int8.mean() >= 0.995, (int8.mean(), int8.min())


def test_int8_recipe_follows_the_cpus_integer_dot_product(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert int8_recipe(cpuinfo) == "smooth"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")  # AMD Zen 1-3, Intel before Cascade Lake
    assert int8_recipe(cpuinfo) == "rr"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")  # Arm with the dot product
    assert int8_recipe(cpuinfo) == "smooth"
    assert int8_recipe(tmp_path / "missing") == "rr"


@pytest.mark.slow
def test_the_other_int8_recipe_also_exports_and_agrees(tmp_path, reference, monkeypatch):
    """Both recipes run here whatever this CPU is: the one it picks in the fixtures, the other one now."""
    import onnx

    import encoders.export as export

    other = "rr" if int8_recipe() == "smooth" else "smooth"
    monkeypatch.setattr(export, "int8_recipe", lambda: other)
    directory = export_onnx(default_model_dir(), tmp_path / "int8", "int8")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["exporter"]["quantization"] == export.INT8_RECIPES[other]
    graph = onnx.load(str(directory / "model.onnx")).graph
    constants = {i.name for i in graph.initializer}
    fp32_matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]
    ops = {n.op_type for n in graph.node}
    if other == "smooth":  # every weight MatMul int8, the QKV projection split out of Attention
        assert not fp32_matmuls and "MultiHeadAttention" in ops and "Attention" not in ops
    else:  # the six FFN down-projections stay fp32, QKV stays inside the fused Attention
        assert len(fp32_matmuls) == 6 and "Attention" in ops
    got = OnnxTextEncoder(directory, provider="cpu", max_length=256).encode(SENTENCES)
    cosines = dict(zip(SENTENCES, _cosines(got, reference).round(5)))
    assert cosines.pop("") >= 0.975 and min(cosines.values()) >= 0.99, cosines


def test_a_changed_calibration_gets_its_own_cache_directory(monkeypatch):
    import encoders.export as export

    monkeypatch.setattr(export, "int8_recipe", lambda: "smooth")
    before = export._cache_suffix("int8")
    assert before.startswith("int8-smooth-")
    monkeypatch.setattr(export, "SMOOTHING_ALPHA", 0.6)
    assert export._cache_suffix("int8") not in (before, "int8-smooth")
    monkeypatch.setattr(export, "int8_recipe", lambda: "rr")
    assert export._cache_suffix("int8") == "int8-fused-rr-ln" and export._cache_suffix("fp32") == "fp32-fused-ln"
