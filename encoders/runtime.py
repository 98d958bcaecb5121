"""Serve an exported text encoder with onnxruntime and a Rust tokenizer; no torch.

Texts are tokenised in one call, sorted by token length and cut into batches, so each
batch pads only to its own longest text; results come back in the caller's order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from encoders.adapter import Adapter
from encoders.manifest import EncoderError, verify

if TYPE_CHECKING:
    from stream.config import EncoderSettings

__all__ = ["OnnxTextEncoder", "load_encoder"]

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: onnxruntime graph optimisers left off on CPU (see the session below)
UNWANTED_FUSIONS = ["SkipLayerNormFusion"]


class OnnxTextEncoder:
    """Text → L2-normalised float32 vectors from an export made by :func:`export_onnx`.

    :param export_dir: a directory holding ``model.onnx``, ``tokenizer.json`` and
        ``manifest.json``; it is verified (format version, model checksum) before loading.
    :param provider: ``"auto"`` uses CUDA when onnxruntime offers it and CPU otherwise;
        ``"cuda"`` raises :class:`EncoderError` when CUDA is unavailable; ``"cpu"`` forces CPU.
        An fp16 export is a GPU model: ``"auto"`` without CUDA refuses it (onnxruntime's CPU
        kernels run fp16 through casts, slower than fp32); only an explicit ``"cpu"`` runs it
        there (parity checks), with a warning.
    :param max_length: tokens per text, longer texts are truncated; capped at the model's
        own limit from the manifest.
    :param batch_size: texts per onnxruntime call.
    :param threads: onnxruntime intra-op threads (default: every CPU the OS reports).
    :param max_batch_tokens: cap on padded tokens (rows × longest) per onnxruntime call; a
        call holds at least one text. Default: 512 on CPU (one call of 256 short ml-100k
        texts padded to its longest cost twice the CPU time per text of calls of 32, and a
        call of 32 short texts cut in two ran 1.25× faster: less padding, and the activations
        stay in the core's cache; see BENCHMARKS.md); 262144 on CUDA, where big calls pay off.

    ``encode`` is safe to call from several threads (onnxruntime sessions and tokenizers
    are). ``model_id`` is the checksum of ``model.onnx``: equal ids give equal vectors for
    equal texts and ``max_length``, so it keys embedding caches.
    """

    def __init__(
        self, export_dir: Path, provider: str = "auto", max_length: int = 128, batch_size: int = 64,
        threads: int | None = None, max_batch_tokens: int | None = None, normalise: bool | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if provider not in ("auto", "cpu", "cuda"):
            raise EncoderError(f"unknown provider {provider!r} (choose auto, cpu or cuda)")
        if max_length < 2 or batch_size < 1:
            raise EncoderError(f"max_length must be >= 2 and batch_size >= 1, got {max_length} and {batch_size}")
        self.export_dir = Path(export_dir)
        self.manifest = verify(self.export_dir)
        self.dim: int = self.manifest.dim
        self.model_id: str = self.manifest.onnx_sha256
        self.max_length: int = min(int(max_length), self.manifest.max_length)
        self.batch_size = int(batch_size)
        #: Tuned models keep their vectors' norms (they carry how likely an item is overall).
        self.normalise = not self.manifest.adapter if normalise is None else normalise
        #: A tuned model's behavioural side (residuals, query MLP, learned horizons), else None.
        self.adapter: Adapter | None = Adapter.load(self.export_dir) if self.manifest.adapter else None

        available = ort.get_available_providers()
        if provider == "cuda" and CUDA not in available:
            raise EncoderError(f"provider 'cuda' requested but onnxruntime offers only {available} (install onnxruntime-gpu)")
        wanted = [CUDA, CPU] if provider in ("auto", "cuda") and CUDA in available else [CPU]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3  # errors only; CUDA's "some nodes on CPU" notes are noise
        # onnxruntime's CPU SkipLayerNormalization kernel took 5x the time of Add + LayerNormalization
        # (BENCHMARKS.md), so the exported graphs keep them apart and, on CPU, the fusion stays off
        # (on CUDA, unmeasured, onnxruntime's defaults stand)
        self.session = ort.InferenceSession(str(self.export_dir / "model.onnx"), options, providers=wanted,
                                            disabled_optimizers=UNWANTED_FUSIONS if wanted == [CPU] else [])
        on_cuda = CUDA in self.session.get_providers()
        if provider == "cuda" and not on_cuda:
            raise EncoderError("provider 'cuda' requested but the CUDA provider failed to load (check CUDA/cuDNN libraries)")
        if self.manifest.variant == "fp16" and not on_cuda:
            if provider != "cpu":
                raise EncoderError(f"{self.export_dir.name} is an fp16 (GPU) model but CUDA is not available here: "
                                   "use variant fp32 or int8 on CPU (or provider 'cpu' to force it, slowly)")
            log.warning("running the fp16 model %s on CPU: correct but slower than fp32", self.export_dir.name)
        #: on CUDA, calls go through IO binding: each input is copied to the device once and
        #: the output is allocated there by onnxruntime and copied back once
        self.io_binding: bool = on_cuda
        self._device = "cuda" if on_cuda else "cpu"
        self.max_batch_tokens = int(max_batch_tokens or (262_144 if on_cuda else 512))
        self._inputs = {i.name for i in self.session.get_inputs()}

        self.tokenizer = Tokenizer.from_file(str(self.export_dir / self.manifest.tokenizer))
        self.tokenizer.no_padding()  # batches are padded here, after sorting by length
        self.tokenizer.enable_truncation(max_length=self.max_length)
        log.info("encoder %s (%s, dim %d) on %s", self.export_dir.name, self.manifest.variant, self.dim, self.providers)

    @property
    def providers(self) -> list[str]:
        """The execution providers onnxruntime actually uses, best first."""
        return list(self.session.get_providers())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts``: float32 of shape ``(len(texts), dim)``.

        Row *i* belongs to ``texts[i]``; rows have norm 1 unless the model is tuned (see
        ``normalise``). Texts longer than ``max_length`` tokens are
        truncated; the empty string is a valid text; lone surrogates read as U+FFFD.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one str")
        texts = list(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        if not texts:
            return out
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode() takes str texts only")
        try:
            encodings = self.tokenizer.encode_batch(texts)
        except TypeError:  # lone surrogates (e.g. from broken JSON escapes) → U+FFFD
            texts = [t.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for t in texts]
            encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for rows in self._buckets([len(encodings[i].ids) for i in order]):
            chosen = [order[i] for i in rows]
            out[chosen] = self._run([encodings[i] for i in chosen])
        if not self.normalise:
            return out
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)  # int8/fp16 graphs drift slightly off norm 1

    def _buckets(self, lengths: list[int]) -> list[range]:
        """Cut ascending ``lengths`` into runs of at most ``batch_size`` rows whose padded size
        (rows × the run's longest) stays within ``max_batch_tokens``: a few long texts then
        never pad a whole batch of short ones, and huge calls do not thrash the caches."""
        runs, start = [], 0
        for end in range(1, len(lengths) + 1):
            too_many = end - start > self.batch_size
            too_wide = (end - start) * lengths[end - 1] > self.max_batch_tokens and end - 1 > start
            if too_many or too_wide:
                runs.append(range(start, end - 1))
                start = end - 1
        runs.append(range(start, len(lengths)))
        return runs

    def _run(self, encodings: list) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.manifest.pad_id, np.int64)
        mask = np.zeros((len(encodings), width), np.int64)
        types = np.zeros((len(encodings), width), np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        feed = {k: v for k, v in {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}.items() if k in self._inputs}
        if self.io_binding:
            return self._run_bound(feed)
        (vectors,) = self.session.run(["embeddings"], feed)
        return vectors.astype(np.float32, copy=False)

    def _run_bound(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """One call through IO binding: each input is copied to the GPU once, the output is
        allocated on the GPU by onnxruntime and copied back once."""
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_output("embeddings", self._device)
        self.session.run_with_iobinding(binding)
        (vectors,) = binding.copy_outputs_to_cpu()
        return np.asarray(vectors, np.float32)

    def __repr__(self) -> str:
        return f"OnnxTextEncoder({str(self.export_dir)!r}, variant={self.manifest.variant}, dim={self.dim}, providers={self.providers})"


def load_encoder(settings: EncoderSettings) -> OnnxTextEncoder:
    """The encoder ``settings`` describe, exporting the model on first use (needs torch then)."""
    from encoders.export import ensure_exported

    directory = ensure_exported(settings.model, settings.cache_dir, settings.variant)
    return OnnxTextEncoder(directory, provider=settings.provider, max_length=settings.max_length, batch_size=settings.batch_size,
                           threads=settings.threads, max_batch_tokens=settings.max_batch_tokens)
