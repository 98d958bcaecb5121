"""The manifest written beside every exported model, and the check that refuses a mismatch.

A model directory is trusted only if its manifest is of a known format and ``model.onnx``
still has the checksum recorded at export: a corrupt, truncated or swapped file is refused
with one clear line instead of producing wrong vectors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["FORMAT_VERSION", "EncoderError", "Manifest", "file_sha256", "read_manifest", "verify", "write_manifest"]

FORMAT_VERSION = 2
MANIFEST = "manifest.json"


class EncoderError(RuntimeError):
    """An encoder problem an operator can act on; the message is one line."""


@dataclass(frozen=True)
class Manifest:
    """What an export is: its source, variant, shape and the checksum of ``model.onnx``."""

    source: str  # the Hugging Face model directory it was exported from
    source_sha256: str  # over the source's weights, config and tokenizer files
    variant: str  # fp32 | int8 | fp16
    dim: int
    max_length: int  # the model's own limit (position embeddings)
    inputs: list[str]  # graph input names, e.g. input_ids, attention_mask[, token_type_ids]
    onnx_sha256: str
    tokenizer: str = "tokenizer.json"
    pad_id: int = 0
    source_stat: str = ""  # names, sizes and mtimes of the source files: a fast cache lookup
    exporter: dict[str, str] = field(default_factory=dict)  # package versions used
    #: Tuned models only (``recstream encoders tune``): the adapter file, its checksum, and
    #: the base export whose graph the item head was appended to.
    adapter: str = ""
    adapter_sha256: str = ""
    base_onnx_sha256: str = ""
    format_version: int = FORMAT_VERSION


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    if not path.is_file():
        raise EncoderError(f"no {MANIFEST} in {directory}: not an exported recstream model (run `recstream encoders export`)")
    try:
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise EncoderError(f"{path}: manifest format {data.get('format_version')!r}, expected {FORMAT_VERSION}; re-export the model")
        return Manifest(**data)
    except (ValueError, TypeError) as exc:
        raise EncoderError(f"{path}: unreadable manifest ({exc})") from None


def verify(directory: Path, variant: str | None = None) -> Manifest:
    """Read the manifest and check the model file against it; raise EncoderError if not."""
    manifest = read_manifest(directory)
    if variant is not None and manifest.variant != variant:
        raise EncoderError(f"{directory}: manifest says variant {manifest.variant!r}, expected {variant!r}")
    model = directory / "model.onnx"
    if not model.is_file():
        raise EncoderError(f"{directory}: model.onnx is missing")
    if file_sha256(model) != manifest.onnx_sha256:
        raise EncoderError(f"{model}: checksum does not match its manifest (corrupt or replaced file); re-export the model")
    if manifest.adapter:
        adapter = directory / manifest.adapter
        if not adapter.is_file():
            raise EncoderError(f"{directory}: adapter file {manifest.adapter} is missing")
        if file_sha256(adapter) != manifest.adapter_sha256:
            raise EncoderError(f"{adapter}: checksum does not match its manifest (corrupt or replaced file); re-tune the model")
    if not (directory / manifest.tokenizer).is_file():
        raise EncoderError(f"{directory}: tokenizer file {manifest.tokenizer} is missing")
    return manifest
