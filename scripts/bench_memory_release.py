"""The throughput cost of giving memory back (issue 25): the same batches through the default
models, with ONNX Runtime's arena kept and released as the server releases it, in alternating
rounds, in one process.

Each round runs one fixed mix of batch shapes per model, the shapes the server's planner makes
of the soak's traffic (``scripts/memory_soak.py``): question answering as full batches of
384-token windows and as a single long context's windows, 64-text embedding requests as two
batches of 32, classification batches of a few short texts. The sides:

- ``kept``: no release (``--no-release-memory``, and the server below its release mark while busy);
- ``idle``: one release per model at the end of the round (the server's default: a burst, then
  ``--memory-release-idle-s`` without a batch);
- ``every_batch``: a release after each batch (the server above its release mark, half its
  memory budget; before issue 25's fix was measured, the server did this after every large batch).

It prints each side's median round time, wall and CPU, its ratio to ``kept``, and the memory one idle release
gives back (RSS before and after it, median over rounds).

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_memory_release.py --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distilserve.models import ModelRuntime, SessionOptions, load_model
from distilserve.models.batching import EncodedRow
from distilserve.models.export.default_model import default_bundle_dir
from distilserve.models.memory import resident_bytes

ZOO = Path(__file__).resolve().parents[1] / "model-zoo"
# (rows, width) per batch, per model: what the soak's traffic becomes.
SHAPES: dict[str, list[tuple[int, int]]] = {
    "qa": [(21, 384), (9, 384), (16, 384), (1, 200)],
    "embed": [(32, 32), (32, 40), (32, 24), (8, 64)],
    "classify": [(8, 40), (4, 24), (1, 16), (16, 32)],
}
SIDES = ("kept", "idle", "every_batch")


def rows_of(rows: int, width: int, rng: np.random.Generator) -> list[EncodedRow]:
    return [
        EncodedRow(
            input_ids=[101, *rng.integers(1000, 5000, size=width - 2).tolist(), 102],
            token_type_ids=[0] * width,
        )
        for _ in range(rows)
    ]


def mib() -> float:
    return (resident_bytes() or 0) / 2**20


def run_round(
    side: str, models: dict[str, ModelRuntime], batches: dict[str, list[list[EncodedRow]]]
) -> tuple[float, float]:
    """The round's wall time and the CPU time of the whole process (every ONNX Runtime thread):
    CPU time is what a busy server pays, and it moves less than wall time with a shared host's
    steal; page faults count in it, as system time."""
    started, started_cpu = time.perf_counter(), time.process_time()
    for name, model in models.items():
        for batch in batches[name]:
            model.forward(batch)
            if side == "every_batch":
                model.release_memory()
    return time.perf_counter() - started, time.process_time() - started_cpu


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: one per core)")
    parser.add_argument("--embed-bundle", type=Path, default=None, help="default: the cached default bundle")
    args = parser.parse_args(argv)
    bundles = {
        "qa": ZOO / "squad-minilm-l3-int8",
        "embed": args.embed_bundle or default_bundle_dir(),
        "classify": ZOO / "sst2-minilm-l3-int8",
    }
    rng = np.random.default_rng(0)
    batches = {name: [rows_of(rows, width, rng) for rows, width in shapes] for name, shapes in SHAPES.items()}
    options = SessionOptions(intra_op_threads=args.threads, allow_spinning=False, release_memory=True)
    # One set of sessions for every side, so no side runs on sessions of its own (their memory
    # placed differently): each cycle runs ``idle`` (the arena released first, untimed), then
    # ``kept`` (the arena as the idle round left it), then ``every_batch``.
    models = {name: load_model(path, options) for name, path in bundles.items()}
    run_round("kept", models, batches)  # warm-up: first runs pay ONNX Runtime's lazy set-up
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu_times: dict[str, list[float]] = {side: [] for side in SIDES}
    given_back: list[float] = []
    for _ in range(args.rounds):
        for side in ("idle", "kept", "every_batch"):
            if side == "idle":  # the idle time after the last burst: not timed, as in the server
                before = mib()
                for model in models.values():
                    model.release_memory()
                given_back.append(before - mib())
            wall_s, cpu_s = run_round(side, models, batches)
            times[side].append(wall_s)
            cpu_times[side].append(cpu_s)
    summary: dict[str, object] = {"rounds": args.rounds}
    for measure, samples in (("wall", times), ("cpu", cpu_times)):
        kept = statistics.median(samples["kept"])
        for side in SIDES:
            median = statistics.median(samples[side])
            summary[f"{measure}_s_{side}"] = round(median, 4)
            if side != "kept":
                summary[f"{measure}_{side}_over_kept"] = round(median / kept, 4)
    summary["idle_release_gives_back_mib"] = round(statistics.median(given_back), 1)
    summary["process_rss_mib_at_end"] = round(mib(), 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
