"""The batch cost model: an exact least-squares fit, and calibration through a forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from distilserve.models.batch_cost import (
    CALIBRATION_SHAPES,
    MAX_OVERHEAD_TOKENS,
    BatchCost,
    BatchTiming,
    calibrate_batch_cost,
    fit_batch_cost,
)
from distilserve.models.batching import EncodedRow


def test_fit_recovers_known_coefficients_from_exact_timings() -> None:
    truth = BatchCost(fixed_s=0.0008, per_token_s=2.5e-6)
    timings = [BatchTiming(rows, width, truth.seconds(rows, width)) for rows, width in CALIBRATION_SHAPES]
    fitted = fit_batch_cost(timings)
    assert fitted.fixed_s == pytest.approx(truth.fixed_s, rel=1e-9)
    assert fitted.per_token_s == pytest.approx(truth.per_token_s, rel=1e-9)
    assert fitted.overhead_tokens == 320  # 0.8 ms / 2.5 us


def test_fit_is_least_squares_on_symmetric_noise() -> None:
    # Noise of +e and -e on two runs of each shape cancels in the least-squares solution.
    fixed_s, per_token_s, noise = 0.002, 1e-5, 3e-4
    timings = [
        BatchTiming(rows, 16, fixed_s + per_token_s * rows * 16 + sign * noise)
        for rows in (1, 4, 16)
        for sign in (1, -1)
    ]
    fitted = fit_batch_cost(timings)
    assert fitted.fixed_s == pytest.approx(fixed_s, rel=1e-9)
    assert fitted.per_token_s == pytest.approx(per_token_s, rel=1e-9)


def test_fit_refuses_noise_a_degenerate_design_or_no_fixed_cost() -> None:
    with pytest.raises(ValueError, match="no fixed cost"):
        fit_batch_cost([BatchTiming(1, 10, 0.0009), BatchTiming(1, 110, 0.0109)])  # intercept -0.1 ms
    with pytest.raises(ValueError, match="two batch sizes"):
        fit_batch_cost([BatchTiming(2, 8, 0.001), BatchTiming(1, 16, 0.002)])
    with pytest.raises(ValueError, match="do not grow"):
        fit_batch_cost([BatchTiming(1, 8, 0.002), BatchTiming(4, 8, 0.001)])


def test_overhead_tokens_is_bounded() -> None:
    assert BatchCost(fixed_s=1.0, per_token_s=1e-9).overhead_tokens == MAX_OVERHEAD_TOKENS
    assert BatchCost(fixed_s=0.0, per_token_s=1e-6).overhead_tokens == 0
    with pytest.raises(ValueError):
        BatchCost(fixed_s=0.001, per_token_s=0.0)


def test_calibration_times_each_shape_with_the_clock_it_is_given() -> None:
    """A fake model whose run 'takes' fixed + per-token time on a fake clock, one timed run per
    shape slowed by interference: calibration must recover the figures exactly (the fastest run
    counts), after one untimed run per shape, widths capped at the limit."""
    fixed_s, per_token_s = 0.004, 2e-5
    clock_s = [0.0]
    shapes_run: list[tuple[int, int]] = []

    def clock() -> float:
        return clock_s[0]

    def forward(rows: Sequence[EncodedRow]) -> list[None]:
        width = len(rows[0])
        assert all(len(row) == width for row in rows)
        shapes_run.append((len(rows), width))
        clock_s[0] += fixed_s + per_token_s * len(rows) * width
        if len(shapes_run) % 4 == 3:
            clock_s[0] += 0.5  # another process took the cores during this run: not the model's cost
        return [None] * len(rows)

    cost, timings = calibrate_batch_cost(
        forward, max_width=24, shapes=[(1, 8), (4, 16), (8, 64)], repeats=3, clock=clock
    )
    assert [(timing.rows, timing.width) for timing in timings] == [(1, 8), (4, 16), (8, 24)]
    assert shapes_run == [(1, 8)] * 4 + [(4, 16)] * 4 + [(8, 24)] * 4
    assert cost.fixed_s == pytest.approx(fixed_s, rel=1e-9)
    assert cost.per_token_s == pytest.approx(per_token_s, rel=1e-9)
