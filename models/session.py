"""A thin ONNX Runtime session wrapper: thread settings, full graph optimization, named outputs."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distilserve.models.memory import map_large_blocks

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """How an ONNX Runtime session uses the CPU.

    ``intra_op_threads`` 0 lets ONNX Runtime pick (one per physical core). ``allow_spinning``
    keeps worker threads busy-waiting between ops, which lowers latency when the session has
    the cores to itself but steals them from the HTTP and tokenizer threads when it does not.
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 1
    allow_spinning: bool = True
    graph_optimization: bool = True
    # After each run, shrink ONNX Runtime's CPU arena back to its first chunk, its large blocks
    # mapped on their own so that the freed pages go back to the system
    # (``distilserve.models.memory.map_large_blocks``). Without it the arena keeps
    # the largest batch shape it has seen, per session, and glibc keeps what the arena frees:
    # the three default models grew past 1 GB under mixed traffic (issue 25).
    release_memory: bool = True
    # ... but only after a batch that can have grown the arena much: rows x width^2 (the size of
    # one head's attention scores) at least this. Below it (a few short texts) the arena holds
    # tens of MiB at most, and a shrink and trim per run would cost more than the run saves.
    release_above_cells: int = 1 << 18


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The container's CPU limit in cores (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``
    over ``cpu.cfs_period_us``); None when there is none. A Kubernetes ``limits.cpu`` lands here,
    not in the affinity mask: the node's cores stay visible, but only this many can be used."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def cpu_count(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use: the affinity mask (a container's cpuset), and no more than
    the cgroup's CPU quota, rounded down (at least 1), so that threads are not throttled."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return cores


class OnnxSession:
    """One ONNX Runtime inference session on the CPU execution provider."""

    def __init__(
        self, model_path: Path | str, options: SessionOptions = SessionOptions(), model: bytes | None = None
    ) -> None:
        """``model``, when given, is the graph to run in place of the file's (the file's weights
        refitted for this CPU, ``models.engines.int8_weights``); ``model_path`` still names it."""
        self.model_path = Path(model_path)
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if options.graph_optimization
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if options.allow_spinning else "0"
        )
        self._session = ort.InferenceSession(
            str(self.model_path) if model is None else model,
            sess_options=session_options,
            providers=["CPUExecutionProvider"],
        )
        self.release_memory = options.release_memory
        self.release_above_cells = options.release_above_cells
        self._run_options: ort.RunOptions | None = None
        if options.release_memory:
            map_large_blocks()
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.input_names: list[str] = [node.name for node in self._session.get_inputs()]
        self.output_names: list[str] = [node.name for node in self._session.get_outputs()]
        logger.debug(
            "onnx session loaded",
            extra={"model_path": str(self.model_path), "intra_op_threads": options.intra_op_threads},
        )

    @staticmethod
    def _attention_cells(inputs: dict[str, np.ndarray]) -> int:
        """rows x width^2 of the batch (its first 2-D input: token ids or mask)."""
        for array in inputs.values():
            if array.ndim == 2:
                rows, width = array.shape
                return int(rows) * int(width) * int(width)
        return 0

    def run(
        self, feed: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the graph. Only the inputs the graph declares are passed on."""
        names = output_names or self.output_names
        inputs = {name: feed[name] for name in self.input_names}
        release = self.release_memory and self._attention_cells(inputs) >= self.release_above_cells
        values = self._session.run(names, inputs, self._run_options if release else None)
        return dict(zip(names, values, strict=True))
