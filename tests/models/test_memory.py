"""Process memory: the cgroup limit, the RSS, the heap trim, the batch estimate, and the ONNX
session's memory release (same answers with and without it)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from distilserve.models.memory import (
    BatchMemoryEstimate,
    cgroup_memory_limit,
    map_large_blocks,
    resident_bytes,
    trim_heap,
)
from distilserve.models.packing import run_padded_feed
from distilserve.models.session import OnnxSession, SessionOptions


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"memory.max": "1073741824\n"}, 1 << 30),  # cgroup v2, docker run --memory 1g
        ({"memory.max": "max\n"}, None),  # v2, no limit
        ({"memory/memory.limit_in_bytes": "536870912\n"}, 512 << 20),  # cgroup v1
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),  # v1's "no limit"
        ({"memory.max": "garbage"}, None),
        ({}, None),  # no cgroup file at all (not in a container, or not Linux)
    ],
)
def test_the_cgroup_limit_is_read_from_v2_or_v1(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_memory_limit(tmp_path) == expected


def test_resident_bytes_and_the_heap_trim_work_here() -> None:
    resident = resident_bytes()
    assert resident is not None and resident > 10 * 2**20  # a Python with numpy loaded
    assert trim_heap() is True  # glibc (Linux CI and the image)


def test_the_batch_estimate_grows_with_rows_and_quadratically_with_width() -> None:
    estimate = BatchMemoryEstimate(hidden_size=384)
    assert estimate.batch_bytes(2, 128) == 2 * estimate.batch_bytes(1, 128)
    # The attention term dominates long rows: doubling the width more than doubles the row.
    assert estimate.row_bytes(512) > 2 * estimate.row_bytes(256)
    # At least the measured peaks it was fitted to (MiB): 21 x 384 QA rows peaked at 415.
    assert estimate.batch_bytes(21, 384) >= 415 * 2**20
    assert estimate.batch_bytes(32, 256) >= 314 * 2**20
    limit = estimate.batch_bytes(3, 300)
    assert estimate.rows_within(limit, 300) == 3
    assert estimate.rows_within(estimate.row_bytes(300) - 1, 300) == 0


def tiny_feed(rows: int, width: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = rng.integers(5, 50, size=(rows, width), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("key", [("bert", "feature-extraction"), ("distilbert", "question-answering")])
def test_releasing_memory_between_runs_changes_no_output(
    tiny_bundles: dict[tuple[str, str], Path], key: tuple[str, str]
) -> None:
    bundle = tiny_bundles[key]
    released = OnnxSession(bundle / "model.onnx", SessionOptions(release_memory=True))
    kept = OnnxSession(bundle / "model.onnx", SessionOptions(release_memory=False))
    assert released.releases_memory and not kept.releases_memory
    rng = np.random.default_rng(0)
    for rows, width in [(1, 8), (4, 64), (2, 16)]:  # a large shape between two small ones
        feed = tiny_feed(rows, width, rng)
        # A packed graph (BERT's default form) runs the padded feed packed.
        first = run_padded_feed(released.run, released.input_names, feed, released.output_names)
        released.release_memory()
        second = run_padded_feed(kept.run, kept.input_names, feed, kept.output_names)
        for name in first:
            np.testing.assert_array_equal(first[name], second[name])


def test_a_release_hands_the_arena_back_to_the_system(tiny_bundles: dict[tuple[str, str], Path]) -> None:
    bundle = tiny_bundles[("distilbert", "question-answering")]
    session = OnnxSession(bundle / "model.onnx", SessionOptions(release_memory=True))
    feed = tiny_feed(512, 128, np.random.default_rng(0))
    before = resident_bytes()
    run_padded_feed(session.run, session.input_names, feed, session.output_names)
    grown = resident_bytes()
    assert before is not None and grown is not None
    # The batch's activations stay in the arena: tens of MiB for 512 x 128 tokens.
    assert grown - before > 16 * 2**20
    session.release_memory()
    released = resident_bytes()
    assert released is not None and released - before < (grown - before) / 2


def test_a_session_told_not_to_release_runs_nothing_when_asked(
    tiny_bundles: dict[tuple[str, str], Path],
) -> None:
    session = OnnxSession(
        tiny_bundles[("bert", "feature-extraction")] / "model.onnx", SessionOptions(release_memory=False)
    )
    calls: list[Any] = []
    session._session = SimpleNamespace(run=lambda *args: calls.append(args))  # type: ignore[assignment]
    session.release_memory()
    assert calls == []
    assert map_large_blocks() is True  # glibc: large blocks are mapped on their own
