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
    # Let ``OnnxSession.release_memory`` hand ONNX Runtime's CPU arena back to the system: it
    # shrinks the arena to its first chunk, with large blocks mapped on their own so that the
    # freed pages leave the process (``distilserve.models.memory.map_large_blocks``). Without a
    # release the arena keeps the largest batch shape it has seen, per session, and glibc keeps
    # what the arena frees: the three default models grew past 1 GB under mixed traffic (issue 25).
    # When to release is the caller's choice (the server's batcher: when idle, or near its budget),
    # because a release after every large run cost 22% of large-batch throughput: the next run
    # faults its pages in afresh.
    release_memory: bool = True


# The input types an encoder graph takes; ids and masks are int64 in every export we make.
_NUMPY_TYPES: dict[str, type] = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(bool)": np.bool_,
}

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
        self._shrink_options: ort.RunOptions | None = None
        if options.release_memory:
            map_large_blocks()
            self._shrink_options = ort.RunOptions()
            self._shrink_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._smallest_feed: dict[str, np.ndarray] | None = None
        self.input_names: list[str] = [node.name for node in self._session.get_inputs()]
        self.output_names: list[str] = [node.name for node in self._session.get_outputs()]
        logger.debug(
            "onnx session loaded",
            extra={"model_path": str(self.model_path), "intra_op_threads": options.intra_op_threads},
        )

    def run(
        self, feed: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the graph. Only the inputs the graph declares are passed on."""
        names = output_names or self.output_names
        inputs = {name: feed[name] for name in self.input_names}
        values = self._session.run(names, inputs)
        return dict(zip(names, values, strict=True))

    @property
    def releases_memory(self) -> bool:
        """Whether ``release_memory`` gives anything back (``SessionOptions.release_memory``)."""
        return self._shrink_options is not None

    def release_memory(self) -> None:
        """Shrink the arena to its first chunk, so the memory earlier runs grew it by leaves the
        process. ONNX Runtime shrinks only at the end of a run, so this is a run of one token: a
        few milliseconds, and the next large run faults its memory in again."""
        if self._shrink_options is None:
            return
        if self._smallest_feed is None:
            self._smallest_feed = {
                node.name: np.ones(
                    [dim if isinstance(dim, int) else 1 for dim in node.shape],
                    dtype=_NUMPY_TYPES.get(node.type, np.int64),
                )
                for node in self._session.get_inputs()
            }
        self._session.run(self.output_names[:1], self._smallest_feed, self._shrink_options)
