"""distilserve's model side: bundles, tokenization, ONNX sessions and task processing.

Nothing here imports HTTP code, torch or transformers (the export subpackage imports torch
lazily, when an export runs), so a bundle can be scored offline with the runtime install alone.
"""

from distilserve.models.bundle import Manifest, load_manifest
from distilserve.models.errors import (
    BundleError,
    DistilserveError,
    ExportError,
    InputError,
    InputTooLongError,
)
from distilserve.models.runtime import ModelRuntime, load_model
from distilserve.models.session import SessionOptions

__all__ = [
    "BundleError",
    "DistilserveError",
    "ExportError",
    "InputError",
    "InputTooLongError",
    "Manifest",
    "ModelRuntime",
    "SessionOptions",
    "load_manifest",
    "load_model",
]
