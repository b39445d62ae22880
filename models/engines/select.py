"""``--engine auto``: time the engines a bundle can use on this CPU and keep the fastest that
agrees with ONNX Runtime.

The probe is the export's own sample batches (``models.export.samples``: batches of 1, 4, 8
and 3 rows, one-token to near-limit lengths), so it is the same on every machine and covers
the single rows and the padded batches the server runs. Each engine runs it once untimed (its
outputs are the agreement check, against ONNX Runtime's, with the export's int8 thresholds of
the task), then the engines are timed in interleaved rounds, so that a change of machine load
hits all of them alike; the median round decides. A bundle made on one CPU may be served on
another, so the choice is made where it is served, at load.

Each timed round runs the batches at widths no earlier pass ran (``widen_to``: a few more padding
tokens per round), because served traffic keeps bringing (rows, tokens) shapes an engine has not
run, and OpenVINO's CPU plugin prepares its kernels per shape: on length-sorted batches (runs of
equal shapes) its int8 ran all-MiniLM-L6-v2 at 1.46x ONNX Runtime's here (Intel Xeon with AMX),
and one sentence at a time (a new length nearly every call) at 0.25x (BENCHMARKS.md, 2026-12-07,
OpenVINO on AMX).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from distilserve.models.bundle import ParityCheck
from distilserve.models.engines.base import Engine, EngineChoice
from distilserve.models.export.parity import Outputs, SampleBatch, describe
from distilserve.models.packing import run_padded_feed

# Timed rounds per engine: each round is one pass over the probe (24 samples, ~40 ms for MiniLM-L6).
PROBE_ROUNDS = 5

Agreement = Callable[[Sequence[Outputs], Sequence[Outputs]], ParityCheck]


@dataclass(frozen=True)
class EngineTiming:
    """One engine on the probe: its median pass and how it agreed with ONNX Runtime."""

    engine: str
    precision: str
    median_pass_ms: float
    agreement: str | None = None
    passed: bool = True


@dataclass(frozen=True)
class EngineSelection:
    """Which engine runs the model, and why (``/info``, the start-up log)."""

    engine: str
    precision: str
    requested: EngineChoice
    reason: str
    timings: list[EngineTiming] = field(default_factory=list)
    # ONNX Runtime's int8 weights when they were refitted for this CPU at load
    # (``models.engines.int8_weights``); None when they run as the bundle has them.
    weights: str | None = None

    def as_info(self) -> dict[str, object]:
        return asdict(self)


def widened(batch: SampleBatch, extra: int, limit: int) -> SampleBatch:
    """``batch`` with ``extra`` more padding tokens per row (masked out, so the same answers),
    at most ``limit`` tokens wide: the same rows at a shape the engine has not run."""
    width = batch.attention_mask.shape[1]
    pad = max(0, min(width + extra, limit) - width)
    if pad == 0:
        return batch

    def wider(array: np.ndarray) -> np.ndarray:
        return np.pad(array, [(0, 0), (0, pad), *([(0, 0)] * (array.ndim - 2))])

    feed = {name: wider(array) for name, array in batch.feed.items()}
    context = None if batch.context_mask is None else wider(batch.context_mask)
    return SampleBatch(feed, context)


def time_engines(
    engines: Sequence[Engine],
    probe: Sequence[SampleBatch],
    output_names: list[str],
    *,
    rounds: int = PROBE_ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
    widen_to: int | None = None,
) -> tuple[list[list[Outputs]], list[float]]:
    """Each engine's outputs on the probe (its warm-up pass) and its median timed pass, in seconds.

    With ``widen_to`` (the model's token limit), round ``r`` runs every batch ``r + 1`` tokens
    wider than the warm-up did, so that each timed pass meets shapes new to the engine, as traffic
    does (the module's docstring). An engine whose graph is packed (a packed bundle's model.onnx)
    runs each batch packed, as it will in the server, and answers in the padded layout the
    agreement check compares."""

    def run(engine: Engine, batch: SampleBatch) -> Outputs:
        return run_padded_feed(engine.run, engine.input_names, batch.feed, output_names)

    outputs = [[run(engine, batch) for batch in probe] for engine in engines]
    passes: list[list[float]] = [[] for _ in engines]
    for round_index in range(rounds):
        batches = (
            probe if widen_to is None else [widened(batch, round_index + 1, widen_to) for batch in probe]
        )
        for index, engine in enumerate(engines):
            started = clock()
            for batch in batches:
                run(engine, batch)
            passes[index].append(clock() - started)
    return outputs, [statistics.median(times) for times in passes]


def choose_engine(
    engines: Sequence[Engine],
    probe: Sequence[SampleBatch],
    output_names: list[str],
    agreement: Agreement,
    *,
    rounds: int = PROBE_ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
    widen_to: int | None = None,
) -> tuple[Engine, EngineSelection]:
    """The fastest of ``engines`` whose outputs pass ``agreement`` against the first one's (ONNX
    Runtime, the reference, which always qualifies), and the figures that chose it; ``widen_to``
    as for ``time_engines``."""
    if not engines:
        raise ValueError("no engine to choose from")
    outputs, medians = time_engines(
        engines, probe, output_names, rounds=rounds, clock=clock, widen_to=widen_to
    )
    timings = [EngineTiming(engines[0].name, engines[0].precision, medians[0] * 1000.0)]
    qualified = [0]
    for index in range(1, len(engines)):
        check = agreement(outputs[0], outputs[index])
        timings.append(
            EngineTiming(
                engines[index].name,
                engines[index].precision,
                medians[index] * 1000.0,
                agreement=describe(check),
                passed=check.passed,
            )
        )
        if check.passed:
            qualified.append(index)
    best = min(qualified, key=lambda index: medians[index])
    reference = engines[0]
    chosen = engines[best]
    rows = sum(batch.attention_mask.shape[0] for batch in probe)
    figures = ", ".join(
        f"{timing.engine} {timing.precision} {timing.median_pass_ms:.1f} ms" for timing in timings
    )
    if best == 0:
        failed = [timing.engine for timing in timings[1:] if not timing.passed]
        why = f"{', '.join(failed)} disagreed with it; " if failed else "it was the fastest; "
        reason = f"{reference.name} {reference.precision}: {why}"
    else:
        speedup = medians[0] / medians[best] if medians[best] > 0 else float("inf")
        reason = (
            f"{chosen.name} {chosen.precision}: {speedup:.2f}x {reference.name} {reference.precision}, "
            "agreeing with it; "
        )
    shapes = ", each round at new widths" if widen_to is not None else ""
    reason += f"median pass over {rows} probe rows in {rounds} rounds{shapes}: {figures}"
    return chosen, EngineSelection(chosen.name, chosen.precision, "auto", reason, timings)
