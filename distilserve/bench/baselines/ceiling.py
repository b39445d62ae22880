"""The ceiling: the same bundle in-process, no HTTP, no queue: ``ModelRuntime.predict``.

``predict`` tokenizes every item, sorts the rows by length and runs batches of at most
``max_batch_size`` rows and ``max_batch_tokens`` padded tokens (the server's batch policy), so
it is what the served model could do if requests cost nothing and always arrived 32 at a time
with all their neighbours in length already known. A served figure divided by this one is the
share of the model's speed that survives the serving stack.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilserve.bench.loadgen import latency_summary
from distilserve.models.batching import SERVER_BATCH_LIMITS
from distilserve.models.runtime import load_model
from distilserve.models.session import SessionOptions


@dataclass
class CeilingResult:
    workload: str
    items: int
    duration_s: float
    items_per_s: float
    tokens_per_s: float
    passes: int


def measure_throughput(
    bundle: Path,
    items: Sequence[Any],
    tokens: Sequence[int],
    *,
    workload: str,
    max_batch_size: int = SERVER_BATCH_LIMITS.max_batch_size,
    max_batch_tokens: int = SERVER_BATCH_LIMITS.max_batch_tokens,
    max_items: int = 2000,
    max_duration_s: float = 20.0,
    session_options: SessionOptions | None = None,
) -> CeilingResult:
    """Items per second over repeated ``predict`` calls on chunks of the workload.

    Chunks of at most ``max_items`` items (the whole workload when it is smaller) are predicted
    until the item or time bound is reached; one warm-up batch runs first.
    """
    runtime = load_model(bundle, session_options or SessionOptions())
    runtime.predict(list(items[:max_batch_size]), max_batch_size=max_batch_size)
    chunk = list(items[: max(1, min(len(items), max_items))])
    chunk_tokens = sum(tokens[: len(chunk)])
    done = done_tokens = passes = 0
    started = time.perf_counter()
    while done < max_items and time.perf_counter() - started < max_duration_s:
        runtime.predict(chunk, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)
        done += len(chunk)
        done_tokens += chunk_tokens
        passes += 1
    duration = time.perf_counter() - started
    return CeilingResult(workload, done, duration, done / duration, done_tokens / duration, passes)


def measure_latency(
    bundle: Path,
    items: Sequence[Any],
    *,
    requests: int = 100,
    max_duration_s: float = 10.0,
    session_options: SessionOptions | None = None,
) -> dict[str, float]:
    """Latency of one item at a time through ``predict`` (tokenize, run, post-process), in ms."""
    runtime = load_model(bundle, session_options or SessionOptions())
    for item in items[:3]:
        runtime.predict([item])
    latencies: list[float] = []
    started = time.perf_counter()
    for index in range(requests):
        if time.perf_counter() - started > max_duration_s:
            break
        sent = time.perf_counter()
        runtime.predict([items[index % len(items)]])
        latencies.append(time.perf_counter() - sent)
    return latency_summary(latencies)
