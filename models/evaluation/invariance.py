"""Batch invariance: does a row's output depend on the rows it is batched with?

A server batches each request with whatever else is queued, so a model whose output depends
on its batch gives the same request different answers under different traffic. This module
runs every row of a data set twice through ``ModelRuntime.forward``, the server's batch step:
alone (a batch of one), and in seeded random batches of ``batch_size`` rows (padded to the
longest, as the server pads), then compares the two outputs of each row:

* ``max_abs_diff``: the largest change of any output value (logits, span logits, pooled
  embedding components);
* ``changed_argmax``: rows whose argmax moved (classification: a flipped label; QA: the best
  start or end token);
* ``min_cosine``: embeddings only, the lowest cosine between a row's two vectors.

Random batches are the hard case: lengths mix, so most rows sit beside padding and beside
longer sentences, both of which move a per-batch activation scale.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distilserve.models.batching import EncodedRow
from distilserve.models.runtime import ModelRuntime


@dataclass(frozen=True)
class InvarianceReport:
    rows: int
    batch_size: int
    max_abs_diff: float
    changed_argmax: int | None
    min_cosine: float | None

    def as_metrics(self) -> dict[str, float]:
        metrics = {"rows": float(self.rows), "max_abs_diff": self.max_abs_diff}
        if self.changed_argmax is not None:
            metrics["changed_argmax"] = float(self.changed_argmax)
        if self.min_cosine is not None:
            metrics["min_cosine"] = self.min_cosine
        return metrics


def _arrays(output: Any) -> list[np.ndarray]:
    """A row output as arrays: a vector (classification, embeddings) or (start, end) logits (QA)."""
    if isinstance(output, tuple):
        return [np.asarray(part, dtype=np.float32) for part in output]
    return [np.asarray(output, dtype=np.float32)]


def alone_and_batched(
    runtime: ModelRuntime, rows: Sequence[EncodedRow], *, batch_size: int = 16, seed: int = 0
) -> tuple[list[Any], list[Any]]:
    """Each row's output run alone, and run in a seeded random batch of ``batch_size`` rows."""
    alone = [runtime.forward([row])[0] for row in rows]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    batched: list[Any] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        for index, output in zip(indices, runtime.forward([rows[i] for i in indices]), strict=True):
            batched[index] = output
    return alone, batched


def compare(alone: Sequence[Any], batched: Sequence[Any], task: str, batch_size: int) -> InvarianceReport:
    """Compare each row's two outputs (see the module docstring for the measures)."""
    max_diff = 0.0
    changed = 0
    cosines: list[float] = []
    for first, second in zip(alone, batched, strict=True):
        parts_a, parts_b = _arrays(first), _arrays(second)
        for part_a, part_b in zip(parts_a, parts_b, strict=True):
            max_diff = max(max_diff, float(np.max(np.abs(part_a - part_b))) if part_a.size else 0.0)
        if task == "feature-extraction":
            a, b = parts_a[0], parts_b[0]
            cosines.append(float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)))
        elif any(int(np.argmax(x)) != int(np.argmax(y)) for x, y in zip(parts_a, parts_b, strict=True)):
            changed += 1
    embeddings = task == "feature-extraction"
    return InvarianceReport(
        rows=len(alone),
        batch_size=batch_size,
        max_abs_diff=max_diff,
        changed_argmax=None if embeddings else changed,
        min_cosine=min(cosines, default=1.0) if embeddings else None,
    )


def measure_batch_invariance(
    runtime: ModelRuntime, items: Sequence[Any], *, batch_size: int = 16, seed: int = 0
) -> InvarianceReport:
    """Batch invariance of ``runtime`` on the rows of ``items`` (texts, or QA inputs)."""
    rows = [row for item in items for row in runtime.prepare(item).rows]
    alone, batched = alone_and_batched(runtime, rows, batch_size=batch_size, seed=seed)
    return compare(alone, batched, runtime.manifest.task, batch_size)
