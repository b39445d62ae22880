"""RSS and speed of one OpenVINO-compiled bundle under random input shapes (issue 21).

    python scripts/openvino_shape_memory.py BUNDLE_DIR [CACHE_CAPACITY|-]

Runs random batches (1-64 rows x 5-256 tokens, seeded) through the bundle's
``openvino_model.xml`` and prints RSS and the seconds taken every 200 runs (``N`` runs in all,
default 600), then runs the same sequence of shapes again (``REPEAT``, default 1 more pass): a
shape seen before is what the runtime cache can save, and the second pass shows what it saves.
CACHE_CAPACITY sets the CPU plugin's ``CPU_RUNTIME_CACHE_CAPACITY``; ``-`` leaves its default.
"""

from __future__ import annotations

import os
import random
import sys
import time

import numpy as np
import openvino as ov


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    bundle, capacity = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "-"
    config: dict[str, object] = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "f32",
    }
    if capacity != "-":
        config["CPU_RUNTIME_CACHE_CAPACITY"] = capacity
    core = ov.Core()
    compiled = core.compile_model(core.read_model(f"{bundle}/openvino_model.xml"), "CPU", config)
    names = [port.get_any_name() for port in compiled.inputs]
    request = compiled.create_infer_request()
    rng = random.Random(0)
    shapes = [
        (rng.choice([1, 1, 1, 2, 3, 4, 8, 16, 32, 64]), rng.randint(5, 256))
        for _ in range(int(os.environ.get("N", "600")))
    ]
    print("start", round(rss_mb()))
    for repeat in range(1 + int(os.environ.get("REPEAT", "1"))):
        started = time.perf_counter()
        for run, (rows, tokens) in enumerate(shapes, start=1):
            request.infer({name: np.ones((rows, tokens), dtype=np.int64) for name in names})
            if run % 200 == 0:
                print(
                    f"pass {repeat + 1} run {run} rss_mb {round(rss_mb())} s {time.perf_counter() - started:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
