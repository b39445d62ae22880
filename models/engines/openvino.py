"""OpenVINO as an engine (the ``[openvino]`` extra), imported only when one is built.

A bundle's OpenVINO form is an IR (``openvino_model.xml`` and ``.bin``, written by the export):
int8 from NNCF's static post-training quantization, or the fp32 graph, which runs in bf16 where
the CPU has bf16 arithmetic (``avx512_bf16`` or ``amx_bf16``) and in fp32 elsewhere. An fp32
bundle without an IR runs its ``model.onnx`` directly (OpenVINO reads ONNX).
OpenVINO on ONNX Runtime's own int8 graph is not offered: it was 4x slower than either engine's
int8 (issue 21), since OpenVINO needs its own quantization.

Thread settings map as ONNX Runtime's do: ``intra_op_threads`` is ``INFERENCE_NUM_THREADS``
(0: OpenVINO's default, the cores it may use), one stream, the latency hint: one batch at a
time on all the threads, as the batcher runs it. OpenVINO has no spinning switch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from distilserve.models.engines.base import EngineName
from distilserve.models.session import SessionOptions

INSTALL_HINT = 'pip install "distilserve[openvino]"'
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def openvino_missing() -> str | None:
    """Why OpenVINO cannot be used here (not installed), or None when it can."""
    try:
        found = importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"openvino is not installed ({INSTALL_HINT})"


def openvino_version() -> str:
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_precision(stored: str, cpu_flags: frozenset[str]) -> str:
    """The precision an IR runs in: int8 stays int8 (its other ops in fp32), fp32 runs in bf16
    where the CPU has bf16 arithmetic."""
    if stored == "fp32" and cpu_flags & BF16_FLAGS:
        return "bf16"
    return stored


# Prepared shapes the CPU plugin keeps (its CPU_RUNTIME_CACHE_CAPACITY; see OpenVinoEngine).
OPENVINO_SHAPE_CACHE_ENTRIES = 256


class OpenVinoEngine:
    """One compiled OpenVINO model on the CPU; one infer request per calling thread."""

    name: EngineName = "openvino"

    def __init__(self, model_path: Path, options: SessionOptions, precision: str) -> None:
        import openvino as ov

        self.model_path = Path(model_path)
        self.precision = precision
        self.threads = options.intra_op_threads
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # int8 IRs keep their other ops in fp32 (what the export checked); only a bf16 run
            # asks for bf16. OpenVINO's own default differs by CPU (bf16 on AMX machines).
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            # The CPU plugin keeps the kernels it prepared per input shape, up to 5,000 shapes by
            # default, and requests come in every (rows, tokens) shape: on mixed traffic a server
            # grew from 400 MB to 2.1 GB in 1,563 requests (the slow soak), and a probe of 1,200
            # random shapes from 176 MB to 2.9 GB (AMD, AVX2). No cache at all (0) prepares them
            # again on every call whose shape differs from the last: one sentence at a time ran at
            # 0.25x ONNX Runtime (eval --speed-orders single), and the probe's 400 shapes took
            # 49.8 s and held 1,851 MB, against 41.5 s and 1,045 MB with 256 entries (Intel with
            # AMX, scripts/openvino_shape_memory.py; BENCHMARKS.md). So the cache is kept, bounded.
            "CPU_RUNTIME_CACHE_CAPACITY": str(OPENVINO_SHAPE_CACHE_ENTRIES),
        }
        if options.intra_op_threads > 0:
            config["INFERENCE_NUM_THREADS"] = options.intra_op_threads
        core = ov.Core()
        self._compiled = core.compile_model(core.read_model(str(self.model_path)), "CPU", config)
        self.input_names: list[str] = [port.get_any_name() for port in self._compiled.inputs]
        self.output_names: list[str] = [port.get_any_name() for port in self._compiled.outputs]
        self._ports = {name: self._compiled.output(name) for name in self.output_names}
        self._local = threading.local()

    def _request(self) -> Any:
        # An infer request is not thread safe; the batcher uses one thread, offline callers may use more.
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def run(
        self, feed: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = output_names or self.output_names
        result = self._request().infer({name: feed[name] for name in self.input_names})
        return {name: np.asarray(result[self._ports[name]]) for name in names}

    def release_memory(self) -> None:
        """Nothing to give back: the CPU plugin's shape cache is bounded (above), and its memory
        stayed flat from 200 to 400 random shapes (``scripts/openvino_shape_memory.py``)."""

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "precision": self.precision,
            "threads": self.threads,
            "model": self.model_path.name,
            "version": openvino_version(),
        }
