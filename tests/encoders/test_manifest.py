"""A tampered, corrupt or foreign export is refused with one clear line."""

from __future__ import annotations

import json
import shutil

import pytest

from encoders import EncoderError, OnnxTextEncoder, ensure_exported
from encoders.manifest import verify


@pytest.fixture
def export_copy(fp32_dir, tmp_path):
    return shutil.copytree(fp32_dir, tmp_path / "export")


def _edit(directory, **changes):
    path = directory / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_the_copy_itself_is_sound(export_copy):
    assert verify(export_copy).variant == "fp32"
    assert OnnxTextEncoder(export_copy).encode(["ok"]).shape == (1, 384)


def test_wrong_checksum_in_manifest(export_copy):
    _edit(export_copy, onnx_sha256="0" * 64)
    with pytest.raises(EncoderError) as exc_info:
        OnnxTextEncoder(export_copy)
    assert "checksum does not match" in _one_line(exc_info)


def test_edited_variant(export_copy, cache_dir):
    _edit(export_copy, variant="int8")
    with pytest.raises(EncoderError) as exc_info:
        verify(export_copy, "fp32")
    assert "variant 'int8', expected 'fp32'" in _one_line(exc_info)
    with pytest.raises(EncoderError, match="int8 model, not fp32"):
        ensure_exported(export_copy, cache_dir, "fp32")


def test_other_format_version(export_copy):
    _edit(export_copy, format_version=99)
    with pytest.raises(EncoderError) as exc_info:
        OnnxTextEncoder(export_copy)
    assert "manifest format 99" in _one_line(exc_info)


def test_missing_and_garbled_manifest(export_copy):
    (export_copy / "manifest.json").write_text("{not json")
    with pytest.raises(EncoderError, match="unreadable manifest"):
        OnnxTextEncoder(export_copy)
    (export_copy / "manifest.json").unlink()
    with pytest.raises(EncoderError) as exc_info:
        OnnxTextEncoder(export_copy)
    assert "no manifest.json" in _one_line(exc_info)


def test_truncated_model_file(export_copy):
    model = export_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(EncoderError) as exc_info:
        OnnxTextEncoder(export_copy)
    assert "corrupt" in _one_line(exc_info)


def test_corrupt_cached_export_is_reexported(fp32_dir, tmp_path, monkeypatch):
    """ensure_exported refuses a corrupt cache entry and exports again instead of serving it."""
    cache = tmp_path / "cache"
    entry = cache / "models" / fp32_dir.name
    shutil.copytree(fp32_dir, entry)
    (entry / "model.onnx").write_bytes(b"garbage")
    calls = []
    monkeypatch.setattr("encoders.export.export_onnx", lambda src, out, variant: calls.append(out) or out)
    assert ensure_exported(None, cache, "fp32") == entry
    assert calls == [entry]
