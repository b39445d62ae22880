"""The engine interface: what ``ModelRuntime`` needs from whatever runs the graph."""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

EngineName = Literal["onnxruntime", "openvino"]
EngineChoice = Literal["auto", "onnxruntime", "openvino"]
ENGINE_CHOICES: tuple[EngineChoice, ...] = ("auto", "onnxruntime", "openvino")


class Engine(Protocol):
    """One loaded graph on one engine.

    ``run`` takes a padded batch (``input_ids``, ``attention_mask`` and, when the graph has it,
    ``token_type_ids``; extra names in ``feed`` are ignored) and returns the named outputs.
    ``precision`` is what the arithmetic is done in ("int8", "fp32", "bf16"), ``threads`` the
    threads one batch may use (0: the engine's default, one per core).
    """

    name: EngineName
    precision: str
    threads: int
    input_names: list[str]

    def run(
        self, feed: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]: ...

    def release_memory(self) -> None:
        """Give back to the system the memory earlier runs left the engine holding (called by the
        server when a model is idle, or near its memory budget); the outputs do not change."""

    def describe(self) -> dict[str, object]: ...
