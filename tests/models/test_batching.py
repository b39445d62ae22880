"""Row padding and the batch planner (the server, predict, evaluation and training share it)."""

from __future__ import annotations

import numpy as np

from distilserve.models.batching import (
    BatchLimits,
    EncodedRow,
    assemble_batch,
    batch_cost,
    plan_batches,
    plan_groups,
)


def test_assemble_batch_right_pads_and_masks() -> None:
    rows = [EncodedRow([5, 6, 7], [0, 0, 1]), EncodedRow([8], [0])]
    batch = assemble_batch(rows, pad_token_id=0)
    np.testing.assert_array_equal(batch.feed["input_ids"], [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(batch.feed["token_type_ids"], [[0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(batch.attention_mask, [[1, 1, 1], [1, 0, 0]])
    assert batch.feed["input_ids"].dtype == np.int64
    assert (batch.real_tokens, batch.padded_tokens, batch.padded_length) == (4, 6, 3)


def test_plans_cover_every_row_once_within_the_limits() -> None:
    lengths = [(index * 37) % 120 + 1 for index in range(500)]
    plan = plan_batches(lengths, BatchLimits(max_batch_size=32, max_batch_tokens=2048))
    flat = sorted(index for batch in plan for index in batch)
    assert flat == list(range(500))
    for batch in plan:
        batch_lengths = [lengths[index] for index in batch]
        assert len(batch) <= 32
        assert batch_cost(batch_lengths) <= 2048


def test_length_grouping_wastes_far_less_than_arrival_order() -> None:
    lengths = [(index * 37) % 120 + 1 for index in range(512)]
    grouped = plan_batches(lengths, BatchLimits(max_batch_size=32, max_batch_tokens=1 << 20))
    arrival = [list(range(start, start + 32)) for start in range(0, 512, 32)]

    def padding(plan: list[list[int]]) -> int:
        return sum(batch_cost([lengths[i] for i in batch]) - sum(lengths[i] for i in batch) for batch in plan)

    assert padding(grouped) * 10 < padding(arrival)


def test_a_row_longer_than_the_budget_still_gets_a_batch() -> None:
    assert plan_batches([600, 3, 4], BatchLimits(max_batch_size=8, max_batch_tokens=512)) == [[1, 2], [0]]


def test_the_queue_is_split_by_length_only_when_the_padding_saved_pays_for_a_batch() -> None:
    mixed = [5] * 16 + [60] * 16
    limits = BatchLimits(max_batch_size=32, max_batch_tokens=8192, batch_overhead_tokens=32)
    assert plan_groups(mixed, limits) == [(0, 16), (16, 32)]
    close = [10] * 16 + [11] * 16  # one token of padding per short row is cheaper than a second batch
    assert plan_groups(close, limits) == [(0, 32)]
    limited = plan_groups([8] * 40, BatchLimits(max_batch_size=16, max_batch_tokens=8192))
    assert len(limited) == 3 and all(end - start <= 16 for start, end in limited)
    assert sum(end - start for start, end in limited) == 40
    budget = plan_groups(
        [100] * 10, BatchLimits(max_batch_size=32, max_batch_tokens=300, batch_overhead_tokens=0)
    )
    assert all((end - start) * 100 <= 300 for start, end in budget)
