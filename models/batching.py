"""Model rows, batch assembly, and the one batch planner everything uses.

A *row* is one sequence the model runs on. A request item becomes one row (a sentence to
classify or embed) or several (a long QA context split into windows). Rows of any requests
are padded together into one batch; grouping rows of similar length keeps that padding small,
which matters: on SST-2, unsorted batches of 32 spend about 92% of their compute on padding.

``plan_groups`` (and ``plan_batches`` on unsorted lengths) is the planner of the server's
dynamic batcher, of ``ModelRuntime.predict`` (hence of ``distilserve eval`` and the bench's
ceiling), and of the evaluation batches of training; ``BatchLimits`` holds its limits and
their defaults, which the server's settings refer to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class EncodedRow:
    """Token ids of one model row, special tokens included, unpadded."""

    input_ids: Sequence[int]
    token_type_ids: Sequence[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True, slots=True)
class BatchArrays:
    """A padded batch: the arrays fed to the ONNX graph, and each row's true length."""

    feed: dict[str, np.ndarray]
    lengths: list[int]

    @property
    def padded_length(self) -> int:
        return int(self.feed["input_ids"].shape[1])

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def padded_tokens(self) -> int:
        return self.padded_length * len(self.lengths)

    @property
    def attention_mask(self) -> np.ndarray:
        return self.feed["attention_mask"]


def assemble_batch(rows: Sequence[EncodedRow], pad_token_id: int) -> BatchArrays:
    """Right-pad rows to the longest one (the layout the exported graphs expect)."""
    if not rows:
        raise ValueError("cannot assemble an empty batch")
    lengths = [len(row) for row in rows]
    width = max(lengths)
    input_ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, (row, length) in enumerate(zip(rows, lengths, strict=True)):
        input_ids[index, :length] = row.input_ids
        token_type_ids[index, :length] = row.token_type_ids
        attention_mask[index, :length] = 1
    feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    return BatchArrays(feed=feed, lengths=lengths)


def batch_cost(lengths: Sequence[int]) -> int:
    """Tokens a batch of these lengths computes once padded: rows x longest row."""
    return len(lengths) * max(lengths) if lengths else 0


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What one batch may hold, and what one more batch costs.

    The defaults are the server's: its latency target keeps batches at 8192 padded tokens.
    """

    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    # The fixed cost of one more ONNX Runtime call, in padded tokens: rows of different lengths
    # are split into two batches only when the padding saved is worth more than this.
    batch_overhead_tokens: int = 32

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_batch_tokens < 1 or self.batch_overhead_tokens < 0:
            raise ValueError(f"invalid batch limits: {self}")


SERVER_BATCH_LIMITS = BatchLimits()
# Offline scoring has no latency to protect: bigger batches, fewer calls.
OFFLINE_BATCH_LIMITS = BatchLimits(max_batch_tokens=16384)


def plan_groups(sorted_lengths: Sequence[int], limits: BatchLimits) -> list[tuple[int, int]]:
    """Cut lengths (ascending) into ``[start, end)`` groups of least total cost.

    A group costs its padded tokens (rows x its longest row) plus ``batch_overhead_tokens``.
    No group exceeds ``max_batch_size`` rows or ``max_batch_tokens`` padded tokens, except a
    single row longer than the budget, which gets a group of its own. Dynamic programming over
    the cut points: O(rows x max_batch_size), a few thousand steps for a full queue.
    """
    count = len(sorted_lengths)
    best = [0.0] + [float("inf")] * count
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        longest = sorted_lengths[end - 1]
        for start in range(end - 1, max(end - limits.max_batch_size, 0) - 1, -1):
            rows = end - start
            if rows > 1 and rows * longest > limits.max_batch_tokens:
                break  # more rows only cost more tokens
            cost = best[start] + rows * longest + limits.batch_overhead_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups = []
    end = count
    while end > 0:
        groups.append((cut[end], end))
        end = cut[end]
    return groups[::-1]


def plan_batches(lengths: Sequence[int], limits: BatchLimits = OFFLINE_BATCH_LIMITS) -> list[list[int]]:
    """Row indices in batches of similar length: ``plan_groups`` over the rows sorted by length."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    groups = plan_groups([lengths[index] for index in order], limits)
    return [order[start:end] for start, end in groups]
