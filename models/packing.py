"""Padding-free (packed) batches: several sequences share one model row.

A padded batch computes rows x its longest row, so short sentences padded to a long neighbour
cost what the long one costs (arrival-order batches of SST-2 ran at half the speed of sorted
ones). A packed batch lays sequences end to end in rows; each sequence sees only itself
through a block-diagonal attention mask (``attention_mask[row, query, key]``), and its position
ids restart at 0, so its outputs are what it gets alone. Attention still costs ``width^2`` per
row, where the segments need only the sum of their squares, so the planner weighs the tokens a
plan computes against the width of its rows (``plan_packs``), and no row holding several
sequences is wider than ``row_tokens``.

Each sequence starts at a multiple of ``SEGMENT_ALIGNMENT`` tokens. ONNX Runtime's fp32 kernels
sum a sequence's attention over its keys in an order that depends on where in the row they sit:
on an Intel Xeon with AMX, packed sentences came out up to 7.75e-7 off their outputs alone in
fp32, and the int8 graph's per-row quantization turned that into 0.078 (an embedding's cosine to
itself alone fell to 0.9968 on STS-B), where the padded graph, which always starts a sequence at
0, changed by 0. Starting each one at a multiple of 4 made the int8 graph give exactly what it
gives alone (``distilserve eval --batch-invariance``; BENCHMARKS.md, 2026-12-07 night).

The packed graph (``distilserve export --graph-form``; the default for BERT-family checkpoints)
takes ``position_ids`` and the 3-D mask beside ``input_ids`` and ``token_type_ids``. A task
whose head reads one position per sequence (the classifier's and the cross-encoder's ``[CLS]``)
also takes ``segment_starts``, each sequence's first token as a flat index into
``rows x row_length``, and answers one output row per sequence; the others answer per token.
``unpack_outputs`` turns either back into the padded batch the task's ``split_outputs``
expects, so no task has code of its own for packing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from distilserve.models.batching import BatchArrays, EncodedRow

# The widest a row is made to hold several sequences; a longer sequence has a row of its own.
DEFAULT_ROW_TOKENS = 128
# The width at which a row's attention costs as much again as its tokens' dense layers: the cost
# of a plan is rows x width x (1 + width / ATTENTION_TOKENS). Attention is a small share of the
# FLOPs, but its softmax, mask and fp32 matmuls over rows x heads x width^2 are not: at a fixed
# width of 128, packed SST-2 batches computed 5% more tokens than sorted padded ones and ran 34%
# slower (scripts/bench_packing.py).
ATTENTION_TOKENS = 512
# Row capacities tried, from the longest sequence up: every CAPACITY_STEP tokens (step 1 finds
# plans about 1% cheaper, at 4 times the planning time: 1.4 ms for 32 sequences).
CAPACITY_STEP = 4
# Where a sequence may start in a packed row: a multiple of this many tokens (module docstring).
SEGMENT_ALIGNMENT = 4
SEGMENT_STARTS = "segment_starts"
POSITION_IDS = "position_ids"
# Plans kept by their lengths: the server's batcher costs a batch (its padding metric) on the
# event loop, then the engine assembles the same batch on its thread; planning 32 sequences took
# 0.4 ms, so the second planning of each batch is a cache hit instead.
PLAN_CACHE_ENTRIES = 256


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Sequence indices per row, longest first, each into the first row with room for it.

    Deterministic (ties keep input order); a sequence longer than ``capacity`` has a row of its
    own."""
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        for row, room in enumerate(free):
            if length <= room:
                rows[row].append(index)
                free[row] -= length
                break
        else:
            rows.append([index])
            free.append(capacity - length)
    return rows


def plan_cost(lengths: Sequence[int], plan: Sequence[Sequence[int]]) -> float:
    """What a plan computes: rows x width (the widest row) x (1 + width / ATTENTION_TOKENS)."""
    width = max(sum(lengths[index] for index in row) for row in plan)
    return len(plan) * width * (1 + width / ATTENTION_TOKENS)


def aligned_lengths(lengths: Sequence[int], alignment: int) -> list[int]:
    """What each sequence takes of a packed row: its length rounded up to ``alignment``."""
    if alignment < 1:
        raise ValueError(f"alignment must be at least 1, got {alignment}")
    return [-(-length // alignment) * alignment for length in lengths]


def plan_packs(
    lengths: Sequence[int], row_tokens: int, alignment: int = SEGMENT_ALIGNMENT
) -> list[list[int]]:
    """Sequence indices per row: the cheapest first-fit-decreasing plan (``plan_cost``), each
    sequence taking its length rounded up to ``alignment`` (``aligned_lengths``).

    Row capacities from the longest sequence up to ``max(row_tokens, longest)`` are tried, every
    ``CAPACITY_STEP`` tokens: a narrow row wastes its tail, a wide one pays in attention.
    Deterministic, and every index appears once. A row never holds more (aligned) tokens than the
    capacity chosen, so no row is wider than ``max(row_tokens, longest)``, longest aligned."""
    if row_tokens < 1:
        raise ValueError(f"row_tokens must be at least 1, got {row_tokens}")
    # Fresh lists each call: callers may change them, the cached tuples stay as planned.
    return [list(row) for row in _cached_plan(tuple(lengths), row_tokens, alignment)]


@lru_cache(maxsize=PLAN_CACHE_ENTRIES)
def _cached_plan(lengths: tuple[int, ...], row_tokens: int, alignment: int) -> tuple[tuple[int, ...], ...]:
    aligned = aligned_lengths(lengths, alignment)
    if len(aligned) < 2:
        return ((0,),) if aligned else ()
    longest = max(aligned)
    widest = max(row_tokens, longest)
    best: list[list[int]] = []
    best_cost = float("inf")
    for capacity in [*range(longest, widest, CAPACITY_STEP), widest]:
        plan = first_fit_decreasing(aligned, capacity)
        cost = plan_cost(aligned, plan)
        if cost < best_cost:
            best, best_cost = plan, cost
    return tuple(tuple(row) for row in best)


def packed_tokens(
    lengths: Sequence[int], row_tokens: int = DEFAULT_ROW_TOKENS, alignment: int = SEGMENT_ALIGNMENT
) -> int:
    """Tokens a packed batch of these lengths computes: rows x width of ``plan_packs``'s plan
    (what ``rows x longest`` is for a padded batch)."""
    plan = plan_packs(lengths, row_tokens, alignment)
    if not plan:
        return 0
    return len(plan) * row_width(lengths, aligned_lengths(lengths, alignment), plan)


def row_width(lengths: Sequence[int], slots: Sequence[int], plan: Sequence[Sequence[int]]) -> int:
    """The widest row of a plan: every member's slot (``aligned_lengths``) but the last one's,
    which ends the row at its own length."""
    return max(sum(slots[index] for index in row[:-1]) + lengths[row[-1]] for row in plan)


@dataclass(frozen=True, slots=True)
class PackedBatch:
    """The feed of a packed graph, and where each sequence (in input order) sits in it."""

    feed: dict[str, np.ndarray]
    # (row, offset, length) per sequence, in the order the sequences were given.
    segments: list[tuple[int, int, int]]

    @property
    def lengths(self) -> list[int]:
        return [length for _, _, length in self.segments]

    @property
    def rows(self) -> int:
        return int(self.feed["input_ids"].shape[0])

    @property
    def row_length(self) -> int:
        return int(self.feed["input_ids"].shape[1])

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def packed_tokens(self) -> int:
        """Tokens the graph computes: rows x the longest row (what padding costs here)."""
        return self.rows * self.row_length


def assemble_packed(
    sequences: Sequence[EncodedRow],
    pad_token_id: int,
    row_tokens: int = DEFAULT_ROW_TOKENS,
    *,
    segment_starts: bool = False,
    alignment: int = SEGMENT_ALIGNMENT,
) -> PackedBatch:
    """Pack sequences into rows (``plan_packs``), each starting at a multiple of ``alignment``;
    ``segment_starts`` adds each one's first token."""
    if not sequences:
        raise ValueError("cannot assemble an empty batch")
    lengths = [len(sequence) for sequence in sequences]
    plan = plan_packs(lengths, row_tokens, alignment)
    slots = aligned_lengths(lengths, alignment)
    width = row_width(lengths, slots, plan)
    input_ids = np.full((len(plan), width), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(plan), width), dtype=np.int64)
    position_ids = np.zeros((len(plan), width), dtype=np.int64)
    # Which sequence each token belongs to (-1: padding), for the block-diagonal mask.
    owner = np.full((len(plan), width), -1, dtype=np.int64)
    segments: list[tuple[int, int, int]] = [(0, 0, 0)] * len(sequences)
    for row, members in enumerate(plan):
        offset = 0
        for index in members:
            sequence, length = sequences[index], lengths[index]
            end = offset + length
            input_ids[row, offset:end] = sequence.input_ids
            token_type_ids[row, offset:end] = sequence.token_type_ids
            position_ids[row, offset:end] = np.arange(length)
            owner[row, offset:end] = index
            segments[index] = (row, offset, length)
            offset += slots[index]
    # A padding token attends to nothing; its outputs are never read (and no row of scores is
    # all masked out in a way that matters: the mask adds a large negative, not -inf).
    mask = (owner[:, :, None] == owner[:, None, :]) & (owner[:, :, None] >= 0)
    feed = {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        POSITION_IDS: position_ids,
        "attention_mask": mask.astype(np.int64),
    }
    if segment_starts:
        feed[SEGMENT_STARTS] = np.array([row * width + offset for row, offset, _ in segments], dtype=np.int64)
    return PackedBatch(feed=feed, segments=segments)


def unpack_outputs(
    outputs: dict[str, np.ndarray], packed: PackedBatch, *, per_sequence: bool
) -> tuple[dict[str, np.ndarray], BatchArrays]:
    """The packed graph's outputs as the padded batch of the same sequences would have them.

    ``per_sequence``: the graph answers one row per sequence (it took ``segment_starts``), which
    is already the padded layout; otherwise every output is per token, ``[rows, row_length, ...]``,
    and each sequence's tokens are cut out and right-padded with zeros. The ``BatchArrays``
    returned has the padded batch's lengths and 2-D attention mask, for ``split_outputs``."""
    lengths = packed.lengths
    width = max(lengths)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for index, length in enumerate(lengths):
        mask[index, :length] = 1
    view = BatchArrays(feed={"input_ids": mask, "attention_mask": mask}, lengths=lengths)
    if per_sequence:
        return outputs, view
    padded: dict[str, np.ndarray] = {}
    for name, values in outputs.items():
        if values.shape[:2] != (packed.rows, packed.row_length):
            raise ValueError(
                f"packed output {name!r} has shape {values.shape}, expected "
                f"({packed.rows}, {packed.row_length}, ...) per token"
            )
        out = np.zeros((len(lengths), width, *values.shape[2:]), dtype=values.dtype)
        for index, (row, offset, length) in enumerate(packed.segments):
            out[index, :length] = values[row, offset : offset + length]
        padded[name] = out
    return padded, view


def is_packed_graph(input_names: Sequence[str]) -> bool:
    """Whether a graph takes packed batches (its inputs say so: position ids)."""
    return POSITION_IDS in input_names


def sequences_of(feed: dict[str, np.ndarray]) -> list[EncodedRow]:
    """The sequences of a right-padded feed, unpadded (for checks that hold padded batches)."""
    lengths = feed["attention_mask"].sum(axis=1)
    type_ids = feed.get("token_type_ids")
    return [
        EncodedRow(
            input_ids=feed["input_ids"][row, :length].tolist(),
            token_type_ids=[0] * int(length) if type_ids is None else type_ids[row, :length].tolist(),
        )
        for row, length in enumerate(lengths.tolist())
    ]


RunGraph = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]


def run_packed(
    run: RunGraph,
    sequences: Sequence[EncodedRow],
    pad_token_id: int,
    output_names: list[str],
    *,
    per_sequence: bool,
    row_tokens: int = DEFAULT_ROW_TOKENS,
) -> tuple[dict[str, np.ndarray], BatchArrays]:
    """Pack, run a packed graph once, and return its outputs in the padded layout."""
    packed = assemble_packed(sequences, pad_token_id, row_tokens, segment_starts=per_sequence)
    return unpack_outputs(run(packed.feed, output_names), packed, per_sequence=per_sequence)


def run_padded_feed(
    run: RunGraph, input_names: Sequence[str], feed: dict[str, np.ndarray], output_names: list[str]
) -> dict[str, np.ndarray]:
    """Run a right-padded feed on a graph of either form, outputs in the padded layout: a packed
    graph gets the feed's sequences packed (checks and engine probes hold padded batches)."""
    if not is_packed_graph(input_names):
        return run(feed, output_names)
    per_sequence = SEGMENT_STARTS in input_names
    return run_packed(run, sequences_of(feed), 0, output_names, per_sequence=per_sequence)[0]
