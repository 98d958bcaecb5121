"""Graph passes: each keeps the exported encoder's outputs (in fp32), on the real model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from transformers import AutoTokenizer

from encoders import default_model_dir
from encoders.calibration import calibration_feeds
from encoders.graph import fold_constant_concats, smooth_activations, unfuse_attention, unfuse_skip_layer_norm

from encoder_texts import SENTENCES


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the graph as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def fused(cache_dir):
    """The fp32 export with onnxruntime's fused kernels, SkipLayerNormalization put back."""
    from encoders.export import ensure_exported

    return onnx.load(str(ensure_exported(None, cache_dir, "fp32") / "model.onnx"))


@pytest.fixture(scope="module")
def feeds():
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()), local_files_only=True)
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="np")
    return {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}, tokenizer


def _run(model, feed) -> np.ndarray:
    (out,) = _session(model).run(["embeddings"], feed)
    return out


def _copy(model):
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    return twin


def test_the_export_keeps_no_skip_layer_norm(fused):
    assert not any(n.op_type == "SkipLayerNormalization" for n in fused.graph.node)
    ops = [n.op_type for n in unfuse_skip_layer_norm(_copy(fused)).graph.node]
    assert ops == [n.op_type for n in fused.graph.node]  # nothing left to split: the pass is idempotent


def test_attention_split_into_projection_and_multi_head_attention_is_exact(fused, feeds):
    feed, _ = feeds
    rewritten = unfuse_attention(fold_constant_concats(_copy(fused)))
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("MultiHeadAttention") == 6 and "Attention" not in ops
    np.testing.assert_allclose(_run(rewritten, feed), _run(fused, feed), atol=2e-6)


def test_smoothing_moves_scale_into_the_weights_without_changing_the_output(fused, feeds):
    feed, tokenizer = feeds
    model = unfuse_attention(fold_constant_concats(_copy(fused)))
    smoothed = smooth_activations(_copy(model), calibration_feeds(tokenizer, list(feed)), alpha=0.7)
    muls = [n for n in smoothed.graph.node if n.name.endswith("/smooth")]
    assert len(muls) == 24  # per layer: QKV, attention output, FFN up, FFN down
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    assert any(np.ptp(constants[n.input[1]]) > 1.0 for n in muls)  # real per-channel scales, not ones
    np.testing.assert_allclose(_run(smoothed, feed), _run(model, feed), atol=2e-5)


def test_skip_layer_norm_split_matches_the_fused_kernel():
    """On a one-node graph: the fused op against Add + Add + LayerNormalization."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    width = 16
    inits = [numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), name) for name in ("gamma", "beta", "bias")]
    node = helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y", "", "", "sum"],
                            domain="com.microsoft", epsilon=1e-12)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, width]) for n in ("x", "skip")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "sum")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    feed = {n: rng.standard_normal((2, 3, width)).astype(np.float32) for n in ("x", "skip")}
    want = _session(model).run(None, feed)
    split = unfuse_skip_layer_norm(_copy(model))
    assert [n.op_type for n in split.graph.node] == ["Add", "Add", "LayerNormalization"]
    for got, expected in zip(_session(split).run(None, feed), want):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_runtime_keeps_onnxruntime_from_fusing_skip_layer_norm_again(fp32_dir, tmp_path):
    """Without ``UNWANTED_FUSIONS`` onnxruntime would rebuild the slow kernel at load."""
    from encoders.runtime import UNWANTED_FUSIONS

    def optimised_ops(disabled: list[str]) -> set[str]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"optimised-{len(disabled)}.onnx")
        ort.InferenceSession(str(fp32_dir / "model.onnx"), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=disabled)
        return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}

    assert "SkipLayerNormalization" in optimised_ops([])
    assert "SkipLayerNormalization" not in optimised_ops(UNWANTED_FUSIONS)
