"""Exports shared by the encoder tests, cached across runs.

The exports live in ``$RECSTREAM_TEST_CACHE`` (default: recstream's own cache directory),
so only the first run pays for torch → ONNX; later runs reuse them after verification.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from encoders import OnnxTextEncoder, ensure_exported
from stream.config import default_cache_dir


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ.get("RECSTREAM_TEST_CACHE") or default_cache_dir())


@pytest.fixture(scope="session")
def fp32_dir(cache_dir) -> Path:
    return ensure_exported(None, cache_dir, "fp32")


@pytest.fixture(scope="session")
def int8_dir(cache_dir) -> Path:
    return ensure_exported(None, cache_dir, "int8")


@pytest.fixture(scope="session")
def encoder(fp32_dir) -> OnnxTextEncoder:
    return OnnxTextEncoder(fp32_dir, provider="cpu", max_length=128)
