"""Rewrites of an exported ONNX graph that make onnxruntime's CPU kernels faster or let more of
it be quantised. Each pass keeps the graph's maths (smoothing moves scale from activations to
weights exactly); the int8 quantiser runs after them. Measured in BENCHMARKS.md."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

MS_DOMAIN = "com.microsoft"


def _replace_nodes(model, nodes: list) -> None:
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def unfuse_skip_layer_norm(model):
    """SkipLayerNormalization → Add (+ bias Add) + LayerNormalization.

    onnxruntime 1.32's CPU SkipLayerNormalization took 1.44 ms where Add + LayerNormalization took
    0.29 ms (32 × 23 × 384 floats, one thread): the 12 of MiniLM were a fifth of an int8 call.
    The runtime turns onnxruntime's re-fusion off (``encoders.runtime.UNWANTED_FUSIONS``)."""
    from onnx import helper

    nodes = []
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization" or node.domain != MS_DOMAIN:
            nodes.append(node)
            continue
        x, skip, gamma, beta, bias = (list(node.input) + [""] * 5)[:5]
        out, _, _, total = (list(node.output) + [""] * 4)[:4]  # mean and inv-std outputs: unused by inference
        name = node.name or out
        total = total or f"{name}/sum"
        if bias:
            nodes.append(helper.make_node("Add", [x, bias], [f"{name}/biased"], name=f"{name}/bias"))
            x = f"{name}/biased"
        nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{name}/skip"))
        nodes.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []), [out],
                                      name=f"{name}/norm", axis=-1, epsilon=_attributes(node).get("epsilon", 1e-12)))
    _replace_nodes(model, nodes)
    return model


def fold_constant_concats(model):
    """Concats of initializers become one initializer (the fused Attention's QKV weight is a
    Concat of three, which the quantiser cannot see as a constant)."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Concat" and node.domain in ("", "ai.onnx") and node.input and all(i in initializers for i in node.input):
            axis = _attributes(node)["axis"]
            value = np.concatenate([numpy_helper.to_array(initializers[i]) for i in node.input], axis=axis)
            model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        else:
            nodes.append(node)
    _replace_nodes(model, nodes)
    return model


def unfuse_attention(model):
    """Attention(x, W_qkv, b) → MatMul(x, W_qkv) + Split + MultiHeadAttention(q, k, v, b).

    Same speed in fp32, but onnxruntime's quantiser leaves a fused Attention whose mask is an
    additive bias (as the dynamo graph's is) in fp32, a quarter of each layer's multiply-adds;
    a plain MatMul it quantises. Only the encoder form is rewritten: constant weights, equal
    q/k/v sizes, no mask index, no past state, not unidirectional."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = _attributes(node)
        x, weight, bias, mask_index, past, attention_bias = (list(node.input) + [""] * 6)[:6]
        if (node.op_type != "Attention" or node.domain != MS_DOMAIN or weight not in initializers or mask_index or past
                or len(node.input) > 6 or attrs.get("unidirectional") or len(set(attrs.get("qkv_hidden_sizes", [0]))) != 1
                or len(node.output) != 1):
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        width = initializers[weight].dims[1] // 3
        sizes = f"{name}/qkv_sizes"
        model.graph.initializer.append(numpy_helper.from_array(np.array([width] * 3, np.int64), sizes))
        q, k, v = (f"{name}/{part}" for part in "qkv")
        nodes.append(helper.make_node("MatMul", [x, weight], [f"{name}/qkv"], name=f"{name}/qkv_projection"))
        nodes.append(helper.make_node("Split", [f"{name}/qkv", sizes], [q, k, v], name=f"{name}/split", axis=-1))
        kept = {key: value for key, value in attrs.items() if key in ("num_heads", "scale", "mask_filter_value")}
        nodes.append(helper.make_node("MultiHeadAttention", [q, k, v, bias, "", attention_bias], list(node.output),
                                      name=f"{name}/attention", domain=MS_DOMAIN, **kept))
    _replace_nodes(model, nodes)
    return model


def activation_maxima(model, feeds: Iterable[Mapping[str, np.ndarray]], names: list[str]) -> dict[str, np.ndarray]:
    """Per last-axis channel, the largest |value| each named tensor takes over ``feeds``."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor by its name
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    maxima: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, {k: v for k, v in feed.items() if k in wanted})):
            channel_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            maxima[name] = np.maximum(maxima[name], channel_max) if name in maxima else channel_max
    return maxima


def smooth_activations(model, feeds: Iterable[Mapping[str, np.ndarray]], alpha: float):
    """SmoothQuant (Xiao et al., 2023) for dynamic int8: for each MatMul with a constant weight,
    divide input channel k by s_k = max|X_k|^alpha / max|W_k|^(1 - alpha) and multiply weight
    row k by s_k. Dynamic quantisation has one scale per activation tensor, so a few outlier
    channels (after LayerNorm, after GELU) waste its range; moving their scale into the
    per-channel-quantised weights lifted MiniLM's worst real-text cosine from 0.972 to 0.994
    with every MatMul int8. One Mul per smoothed input, inserted before its first consumer."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") else None
        if weight is not None and len(weight.dims) == 2:
            consumers.setdefault(node.input[0], []).append(node)
    maxima = activation_maxima(model, feeds, list(consumers))
    muls = {}
    for tensor, matmuls in consumers.items():
        weights = [numpy_helper.to_array(initializers[n.input[1]]) for n in matmuls]
        weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        seen = maxima[tensor]
        scale = np.maximum(seen, 1e-5) ** alpha / np.maximum(weight_max, 1e-5) ** (1 - alpha)
        scale = np.where(seen > 0, scale, 1.0).astype(np.float32)
        smoothed = f"{tensor}/smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1 / scale).astype(np.float32), f"{tensor}/smoothing"))
        muls[smoothed] = helper.make_node("Mul", [tensor, f"{tensor}/smoothing"], [smoothed], name=f"{tensor}/smooth")
        for node, weight in zip(matmuls, weights):
            model.graph.initializer.append(numpy_helper.from_array(weight * scale[:, None], f"{node.input[1]}/smoothed"))
            node.input[0], node.input[1] = smoothed, f"{node.input[1]}/smoothed"
    nodes = []
    for node in model.graph.node:
        nodes.extend(muls.pop(name) for name in node.input if name in muls)
        nodes.append(node)
    _replace_nodes(model, nodes)
    drop_unused_initializers(model)
    return model


def drop_unused_initializers(model):
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model
