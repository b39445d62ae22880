"""The throughput cost of ``--release-memory`` (issue 25): the same batches through the default
models with the memory release on and off, in alternating rounds, in one process.

Each round runs one fixed mix of batch shapes per model, the shapes the server's planner makes
of the soak's traffic (``scripts/memory_soak.py``): question answering as full batches of
384-token windows and as a single long context's windows, 64-text embedding requests as two
batches of 32, classification batches of a few short texts. Both sessions of a model load the
same bundle; only ``SessionOptions.release_memory`` differs. It prints the median time of a round
for each, their ratio, and the RSS after each side's rounds.

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

from distilserve.models import SessionOptions, load_model
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


def rows_of(rows: int, width: int, rng: np.random.Generator) -> list[EncodedRow]:
    return [
        EncodedRow(
            input_ids=[101, *rng.integers(1000, 5000, size=width - 2).tolist(), 102],
            token_type_ids=[0] * width,
        )
        for _ in range(rows)
    ]


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
    sides = {}
    for release in (False, True):
        options = SessionOptions(intra_op_threads=args.threads, allow_spinning=False, release_memory=release)
        sides[release] = {name: load_model(path, options) for name, path in bundles.items()}
    times: dict[bool, list[float]] = {False: [], True: []}
    rss: dict[bool, float] = {}
    for side in (False, True):  # warm-up: first runs pay ONNX Runtime's lazy set-up
        for name, model in sides[side].items():
            for batch in batches[name]:
                model.forward(batch)
    for round_index in range(args.rounds):
        order = (False, True) if round_index % 2 == 0 else (True, False)
        for side in order:
            started = time.perf_counter()
            for name, model in sides[side].items():
                for batch in batches[name]:
                    model.forward(batch)
            times[side].append(time.perf_counter() - started)
            rss[side] = (resident_bytes() or 0) / 2**20
    kept, released = statistics.median(times[False]), statistics.median(times[True])
    summary = {
        "rounds": args.rounds,
        "median_round_s_arena_kept": round(kept, 4),
        "median_round_s_memory_released": round(released, 4),
        "released_over_kept": round(released / kept, 4),
        "throughput_cost_pct": round((released / kept - 1) * 100, 2),
        "process_rss_mb_at_end": round(max(rss.values()), 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
