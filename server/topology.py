"""How many server processes, and how many ONNX Runtime threads each: chosen at start-up.

On a few cores, one process that runs the event loop, the tokenizer threads and a multi-threaded
ONNX Runtime session loses the model's time to contention: the inference threads spin and wait
on each other while the loop and the tokenizers want the same cores. One worker per core, each
with a single inference thread, keeps every core on the model (measured: BENCHMARKS.md,
"2026-12-02": 1.34x one process at 32 clients). ``--workers 0`` means one worker per usable core,
as long as the memory allows, because every worker loads every model. It is not the default yet:
two workers' memory with the default models is still to be measured on a prebuilt default bundle
(the one soak run held 685 MB, with the bundle built at start-up and the export's torch inherited
by both workers; issue 20's goal is 450 MB).

The choice is a pure function of what it is told (``plan_topology``); ``resolve_topology``
gathers those facts from the machine, and the start-up log and ``/info`` report the result with
its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distilserve.models.memory import cgroup_memory_limit
from distilserve.models.session import cpu_count
from distilserve.server.settings import ModelSpec, ServerSettings

# One process's memory beside its models: CPython, numpy, ONNX Runtime, FastAPI, uvicorn, the
# tokenizers (measured: about 110 MB resident with no model loaded).
PROCESS_BASE_BYTES = 120 * 2**20
# A loaded model costs about this many times its ONNX file (weights, the optimized graph,
# ONNX Runtime's arena for a full batch, the tokenizer), plus a fixed part.
MODEL_FILE_FACTOR = 2.5
MODEL_FIXED_BYTES = 16 * 2**20
# Workers may use this share of the memory limit; the rest is for request bodies and peaks.
MEMORY_HEADROOM = 0.75


@dataclass(frozen=True, slots=True)
class Topology:
    workers: int
    intra_op_threads: int  # per worker; 0 lets ONNX Runtime pick
    reason: str
    cores: int
    memory_limit_bytes: int | None = None
    worker_bytes_estimate: int | None = None

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def single_process(settings: ServerSettings) -> Topology:
    """The topology of an app built directly (tests, embedding): one process, as configured."""
    return Topology(
        workers=1,
        intra_op_threads=settings.intra_op_threads,
        reason="one process (built without the worker supervisor)",
        cores=cpu_count(),
    )


def plan_topology(
    *,
    requested_workers: int,
    requested_threads: int,
    cores: int,
    memory_limit_bytes: int | None,
    worker_bytes: int,
) -> Topology:
    """Workers and threads per worker from the settings and the machine's limits."""

    def chosen(workers: int, threads: int, reason: str) -> Topology:
        return Topology(workers, threads, reason, cores, memory_limit_bytes, worker_bytes)

    if requested_workers > 0:
        # One process keeps ONNX Runtime's own choice (0) unless told; N share out the cores.
        threads = requested_threads or (0 if requested_workers == 1 else max(cores // requested_workers, 1))
        return chosen(requested_workers, threads, f"--workers {requested_workers}")
    if requested_threads > 0:
        workers = max(cores // requested_threads, 1)
        return chosen(
            workers,
            requested_threads,
            f"--intra-op-threads {requested_threads}: one worker per {requested_threads} cores",
        )
    workers = cores
    reason = f"one worker per core ({cores}), one ONNX Runtime thread each"
    if memory_limit_bytes is not None:
        fit = int(memory_limit_bytes * MEMORY_HEADROOM) // max(worker_bytes, 1)
        if fit < workers:
            workers = max(fit, 1)
            reason = (
                f"{workers} of {cores} cores: each worker needs about {worker_bytes / 2**20:.0f} MB and "
                f"the memory limit is {memory_limit_bytes / 2**20:.0f} MB"
            )
    return chosen(workers, max(cores // workers, 1), reason)


def worker_bytes_estimate(specs: Sequence[ModelSpec]) -> int:
    """About what one worker holds resident with ``specs`` loaded."""
    total = PROCESS_BASE_BYTES
    for spec in specs:
        model_files = sorted(Path(spec.bundle_dir).glob("*.onnx"))
        total += MODEL_FIXED_BYTES + int(MODEL_FILE_FACTOR * sum(path.stat().st_size for path in model_files))
    return total


def resolve_topology(settings: ServerSettings, specs: Sequence[ModelSpec]) -> Topology:
    return plan_topology(
        requested_workers=settings.workers,
        requested_threads=settings.intra_op_threads,
        cores=cpu_count(),
        memory_limit_bytes=cgroup_memory_limit(),
        worker_bytes=worker_bytes_estimate(specs),
    )
