"""Text encoders: export a Hugging Face model to ONNX once, then serve it with onnxruntime.

Importing this package never imports torch; only :func:`export_onnx` (and
:func:`ensure_exported` on a cache miss) needs it.
"""

from encoders.cache import CachedEncoder, EmbeddingCache
from encoders.export import default_model_dir, ensure_exported, export_onnx
from encoders.manifest import EncoderError
from encoders.runtime import OnnxTextEncoder, load_encoder

__all__ = [
    "CachedEncoder",
    "EmbeddingCache",
    "EncoderError",
    "OnnxTextEncoder",
    "default_model_dir",
    "ensure_exported",
    "export_onnx",
    "load_encoder",
]
