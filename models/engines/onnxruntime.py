"""ONNX Runtime as an engine: the bundle's ``model.onnx`` through ``OnnxSession``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distilserve.models.engines.base import EngineName
from distilserve.models.engines.int8_weights import WeightFit
from distilserve.models.session import OnnxSession, SessionOptions


class OnnxRuntimeEngine:
    """``OnnxSession`` (thread settings, full graph optimization) behind the ``Engine`` interface."""

    name: EngineName = "onnxruntime"

    def __init__(
        self, model_path: Path, options: SessionOptions, precision: str, fit: WeightFit | None = None
    ) -> None:
        fit = fit or WeightFit()
        self.session = OnnxSession(model_path, options, fit.model)
        self.model_path = Path(model_path)
        self.precision = precision
        # How the int8 weights were fitted to this CPU at load, or None: as the bundle has them.
        self.weights = fit.note
        self.threads = options.intra_op_threads
        self.input_names = self.session.input_names
        self.output_names = self.session.output_names

    def run(
        self, feed: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        return self.session.run(feed, output_names)

    def release_memory(self) -> None:
        self.session.release_memory()

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "precision": self.precision,
            "threads": self.threads,
            "model": self.model_path.name,
            "weights": self.weights,
        }
