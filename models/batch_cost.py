"""What one batch costs on this machine: a fixed cost per run plus a cost per padded token.

The batch planner (``distilserve.models.batching.plan_groups``) weighs padding against the number of runs
with ``batch_overhead_tokens``, the fixed cost of one more run expressed in padded tokens. A
constant is right for one model on one machine at best: a 3-layer student on a 2-core AVX2
host and a 6-layer DistilBERT on a 32-core AVX-512 host differ in both terms by an order of
magnitude. ``calibrate_batch_cost`` times a few batch shapes through the real forward pass
(batch assembly, ONNX Runtime, output splitting: all of what the batcher pays per run) and
``fit_batch_cost`` fits ``seconds = fixed_s + per_token_s * rows * width`` by least squares.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distilserve.models.batching import EncodedRow

# (rows, width) timed at calibration: from a lone short sentence to a few hundred padded tokens,
# the range dynamic batches live in, while keeping warm-up short for a DistilBERT-size model.
CALIBRATION_SHAPES: tuple[tuple[int, int], ...] = (
    (1, 8),
    (1, 32),
    (2, 16),
    (4, 32),
    (8, 16),
    (8, 48),
    (16, 32),
)
CALIBRATION_REPEATS = 3
# The overhead is a planner weight; bounded so a noisy fit cannot make it absurd.
MAX_OVERHEAD_TOKENS = 4096


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """One timed run: ``rows`` rows padded to ``width`` tokens took ``seconds``."""

    rows: int
    width: int
    seconds: float

    @property
    def padded_tokens(self) -> int:
        return self.rows * self.width


@dataclass(frozen=True, slots=True)
class BatchCost:
    """``seconds = fixed_s + per_token_s * padded_tokens`` for one model on this machine."""

    fixed_s: float
    per_token_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fixed_s) and self.fixed_s >= 0):
            raise ValueError(f"fixed cost must be finite and non-negative, got {self.fixed_s}")
        if not (math.isfinite(self.per_token_s) and self.per_token_s > 0):
            raise ValueError(f"cost per token must be finite and positive, got {self.per_token_s}")

    def seconds(self, rows: int, width: int) -> float:
        return self.fixed_s + self.per_token_s * rows * width

    @property
    def overhead_tokens(self) -> int:
        """The fixed cost in padded tokens: the planner's ``batch_overhead_tokens``."""
        return min(round(self.fixed_s / self.per_token_s), MAX_OVERHEAD_TOKENS)


def fit_batch_cost(timings: Sequence[BatchTiming]) -> BatchCost:
    """Least-squares fit of ``seconds`` against padded tokens, with an intercept.

    Needs at least two distinct padded-token counts. Every run has a fixed cost (Python, batch
    assembly, the ONNX Runtime call), so an intercept that is not positive, like a slope that
    is not positive, means the timings are noise (another process had the cores) and raises
    ``ValueError``: the caller keeps its constants or times again.
    """
    tokens = np.array([timing.padded_tokens for timing in timings], dtype=np.float64)
    seconds = np.array([timing.seconds for timing in timings], dtype=np.float64)
    if len(np.unique(tokens)) < 2:
        raise ValueError("fitting a batch cost needs timings of at least two batch sizes in tokens")
    design = np.stack([np.ones_like(tokens), tokens], axis=1)
    (fixed_s, per_token_s), *_ = np.linalg.lstsq(design, seconds, rcond=None)
    if not per_token_s > 0:
        raise ValueError(f"timings do not grow with padded tokens (slope {per_token_s:.3g} s/token)")
    if not fixed_s > 0:
        raise ValueError(f"timings show no fixed cost per run (intercept {fixed_s:.3g} s)")
    return BatchCost(fixed_s=float(fixed_s), per_token_s=float(per_token_s))


def calibration_rows(rows: int, width: int, token_id: int) -> list[EncodedRow]:
    """``rows`` identical rows of ``width`` tokens (content does not change the compute)."""
    return [EncodedRow(input_ids=[token_id] * width, token_type_ids=[0] * width) for _ in range(rows)]


def calibrate_batch_cost(
    forward: Callable[[Sequence[EncodedRow]], Any],
    *,
    max_width: int,
    token_id: int = 1,
    shapes: Sequence[tuple[int, int]] = CALIBRATION_SHAPES,
    repeats: int = CALIBRATION_REPEATS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[BatchCost, list[BatchTiming]]:
    """Time ``forward`` on each shape (the fastest of ``repeats`` runs, after one untimed run:
    interference from other processes only ever adds time) and fit the cost. Widths are
    capped at ``max_width`` (the model's length limit)."""
    timings: list[BatchTiming] = []
    for rows, width in shapes:
        width = max(1, min(width, max_width))
        batch = calibration_rows(rows, width, token_id)
        forward(batch)  # the first run of a shape pays ONNX Runtime's allocations, not the model
        runs = []
        for _ in range(repeats):
            started = clock()
            forward(batch)
            runs.append(clock() - started)
        timings.append(BatchTiming(rows, width, min(runs)))
    return fit_batch_cost(timings), timings
