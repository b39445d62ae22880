"""Packed batches (``distilserve.models.packing``) without a model: the planner, the feed, and the
round trip back to the padded layout. A numpy stand-in for attention checks that the mask lets
each sequence see only itself, whatever it is packed with."""

from __future__ import annotations

import random

import numpy as np
import pytest

from distilserve.models.batching import EncodedRow, assemble_batch
from distilserve.models.packing import (
    POSITION_IDS,
    SEGMENT_ALIGNMENT,
    SEGMENT_STARTS,
    aligned_lengths,
    assemble_packed,
    first_fit_decreasing,
    is_packed_graph,
    packed_tokens,
    plan_cost,
    plan_packs,
    run_packed,
    sequences_of,
    unpack_outputs,
)


def row(length: int, start: int = 1) -> EncodedRow:
    return EncodedRow(input_ids=list(range(start, start + length)), token_type_ids=[0] * length)


@pytest.mark.parametrize("seed", range(5))
def test_every_sequence_is_packed_once_within_the_row_capacity(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 200) for _ in range(rng.randint(1, 60))]
    plan = plan_packs(lengths, row_tokens=128, alignment=1)
    assert sorted(index for members in plan for index in members) == list(range(len(lengths)))
    capacity = max(128, max(lengths))
    assert all(sum(lengths[index] for index in members) <= capacity for members in plan)
    assert plan == plan_packs(lengths, row_tokens=128, alignment=1)  # deterministic


def test_short_sequences_fill_the_rows_of_long_ones() -> None:
    # 100 and 90 cannot share a row; the short ones fill their gaps, longest first, in the
    # narrowest rows that still make two (115 and 110 tokens, not 128).
    assert plan_packs([10, 100, 20, 90, 5], row_tokens=128, alignment=1) == [[1, 0, 4], [3, 2]]
    # A sequence over the row size sets the widest row for everyone.
    assert plan_packs([300, 150, 140], row_tokens=128, alignment=1) == [[0], [1, 2]]
    assert plan_packs([], row_tokens=128) == []
    with pytest.raises(ValueError):
        plan_packs([3], row_tokens=0)


def test_sequences_of_one_length_are_not_packed_wider_than_they_need() -> None:
    # Ten rows of 20 compute what two of 100 do, and attend over 20 tokens instead of 100.
    assert plan_packs([20] * 10, row_tokens=128) == [[index] for index in range(10)]


@pytest.mark.parametrize("seed", range(5))
def test_the_plan_is_the_cheapest_of_the_capacities_tried(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(3, 70) for _ in range(32)]
    cost = plan_cost(lengths, plan_packs(lengths, row_tokens=128, alignment=1))
    for capacity in (max(lengths), 64, 96, 128):
        if capacity >= max(lengths):
            assert cost <= plan_cost(lengths, first_fit_decreasing(lengths, capacity))
    # Never dearer than padding the same sequences: one row each, as wide as the longest.
    assert cost <= plan_cost(lengths, [[index] for index in range(len(lengths))])


def test_a_batch_costed_then_assembled_is_planned_once_and_plans_stay_the_callers() -> None:
    # The server's batcher costs a batch (packed_tokens) and the engine then assembles it: the
    # second planning is the remembered plan, the same one, and changing a plan a caller got
    # changes none handed out later.
    from distilserve.models import packing

    lengths = [37, 5, 18, 61, 9, 44, 23, 12, 30, 7, 52, 16]
    packing._cached_plan.cache_clear()
    costed = packed_tokens(lengths, row_tokens=128)
    packed = assemble_packed([row(length) for length in lengths], pad_token_id=0, row_tokens=128)
    info = packing._cached_plan.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert packed.packed_tokens == costed
    first = plan_packs(lengths, row_tokens=128)
    planned = [list(members) for members in first]
    first[0].append(99)
    first.append([98])
    assert plan_packs(lengths, row_tokens=128) == planned


def test_the_feed_is_block_diagonal_with_positions_per_sequence() -> None:
    sequences = [row(3, 10), row(1, 20), row(4, 30)]
    packed = assemble_packed(sequences, pad_token_id=0, row_tokens=6, segment_starts=True, alignment=1)
    feed = packed.feed
    assert is_packed_graph(list(feed))
    # Rows of 4 (not 6): the 4-token sequence alone in row 0, the 3- and 1-token ones in row 1.
    assert packed.segments == [(1, 0, 3), (1, 3, 1), (0, 0, 4)]
    assert feed["input_ids"].tolist() == [[30, 31, 32, 33], [10, 11, 12, 20]]
    assert feed[POSITION_IDS].tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]
    expected = np.zeros((2, 4, 4), dtype=np.int64)
    expected[0, :4, :4] = expected[1, :3, :3] = expected[1, 3, 3] = 1
    assert np.array_equal(feed["attention_mask"], expected)
    assert feed[SEGMENT_STARTS].tolist() == [4, 7, 0]  # flat index of each sequence's first token
    assert packed.real_tokens == 8 and packed.packed_tokens == 8


def test_padding_left_in_a_packed_row_attends_to_nothing() -> None:
    packed = assemble_packed([row(5, 10), row(3, 20), row(1, 30)], pad_token_id=0, row_tokens=5, alignment=1)
    # Rows of 5: [5] and [3, 1] with one pad token, which sees nothing and is seen by nothing.
    assert packed.feed["input_ids"].tolist() == [[10, 11, 12, 13, 14], [20, 21, 22, 30, 0]]
    mask = packed.feed["attention_mask"]
    assert not mask[1, 4].any() and not mask[1, :, 4].any()


def test_every_sequence_starts_at_a_multiple_of_the_alignment() -> None:
    sequences = [row(3, 10), row(1, 20), row(6, 30), row(2, 40)]
    packed = assemble_packed(sequences, pad_token_id=0, row_tokens=12, segment_starts=True, alignment=4)
    assert all(offset % 4 == 0 for _, offset, _ in packed.segments)
    # The 3 and the 1 share row 1 with one token of padding between them (the 1 starts at 4, not
    # 3); the last sequence of a row takes its own length, so rows are 6 wide, not 8.
    assert packed.segments == [(1, 0, 3), (1, 4, 1), (0, 0, 6), (2, 0, 2)]
    assert packed.row_length == 6 and packed.packed_tokens == 18
    assert packed.feed["input_ids"].tolist() == [
        [30, 31, 32, 33, 34, 35],
        [10, 11, 12, 0, 20, 0],
        [40, 41, 0, 0, 0, 0],
    ]
    assert packed.feed[POSITION_IDS][1].tolist() == [0, 1, 2, 0, 0, 0]
    mask = packed.feed["attention_mask"]
    assert not mask[1, 3].any() and not mask[1, :, 3].any()  # the gap sees and is seen by nothing
    assert mask[1, 4, 4] and not mask[1, 4, :4].any()
    assert packed.feed[SEGMENT_STARTS].tolist() == [6, 10, 0, 12]
    assert packed_tokens([3, 1, 6, 2], row_tokens=12, alignment=4) == 18
    assert aligned_lengths([1, 4, 5], 4) == [4, 4, 8] and SEGMENT_ALIGNMENT == 4
    with pytest.raises(ValueError):
        aligned_lengths([1], 0)


@pytest.mark.parametrize("seed", range(5))
def test_aligned_plans_keep_rows_within_the_capacity(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 200) for _ in range(rng.randint(1, 60))]
    plan = plan_packs(lengths, row_tokens=128)
    assert sorted(index for members in plan for index in members) == list(range(len(lengths)))
    slots = aligned_lengths(lengths, SEGMENT_ALIGNMENT)
    assert all(sum(slots[index] for index in members) <= max(128, max(slots)) for members in plan)


def fake_attention_model(feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Each token's output: the mean of the ids it may attend to, plus its position (the shape
    of what attention computes: a mix of the visible tokens). Per token, ``[rows, tokens, 2]``."""
    mask = feed["attention_mask"].astype(np.float64)
    ids = feed["input_ids"].astype(np.float64)
    visible = np.maximum(mask.sum(axis=2), 1.0)
    mixed = np.einsum("rqk,rk->rq", mask, ids) / visible
    positions = feed[POSITION_IDS].astype(np.float64)
    return {name: np.stack([mixed, positions], axis=-1) for name in names}


def test_a_sequence_gets_what_it_gets_alone_whatever_it_is_packed_with() -> None:
    rng = random.Random(0)
    sequences = [row(rng.randint(1, 40), start=rng.randint(1, 900)) for _ in range(25)]
    alone = [run_packed(fake_attention_model, [s], 0, ["hidden"], per_sequence=False)[0] for s in sequences]
    packed, view = run_packed(
        fake_attention_model, sequences, 0, ["hidden"], per_sequence=False, row_tokens=64
    )
    assert view.lengths == [len(s) for s in sequences]
    for index, sequence in enumerate(sequences):
        length = len(sequence)
        assert np.array_equal(packed["hidden"][index, :length], alone[index]["hidden"][0, :length])
        assert not packed["hidden"][index, length:].any()  # padding is zeros, as nobody reads it
        assert packed["hidden"][index, :length, 1].tolist() == list(range(length))


def test_unpacking_gives_the_padded_layout() -> None:
    sequences = [row(5, 1), row(2, 7), row(3, 9)]
    packed = assemble_packed(sequences, pad_token_id=0, row_tokens=8)
    outputs = {"ids": packed.feed["input_ids"].astype(np.float32)}
    unpacked, view = unpack_outputs(outputs, packed, per_sequence=False)
    padded = assemble_batch(sequences, pad_token_id=0)
    assert np.array_equal(unpacked["ids"], padded.feed["input_ids"].astype(np.float32))
    assert np.array_equal(view.attention_mask, padded.attention_mask)
    assert view.padded_length == padded.padded_length
    # One row per sequence (a classifier's head) passes through as it is.
    logits = {"logits": np.arange(6, dtype=np.float32).reshape(3, 2)}
    same, _ = unpack_outputs(logits, packed, per_sequence=True)
    assert same["logits"] is logits["logits"]
    with pytest.raises(ValueError, match="per token"):
        unpack_outputs(logits, packed, per_sequence=False)


def test_sequences_of_a_padded_feed() -> None:
    sequences = [row(4, 3), row(1, 50)]
    assert sequences_of(assemble_batch(sequences, pad_token_id=0).feed) == sequences
