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


@pytest.mark.parametrize("key", [("bert", "feature-extraction"), ("distilbert", "question-answering")])
def test_releasing_memory_after_each_run_changes_no_output(
    tiny_bundles: dict[tuple[str, str], Path], key: tuple[str, str]
) -> None:
    bundle = tiny_bundles[key]
    released = OnnxSession(bundle / "model.onnx", SessionOptions(release_memory=True, release_above_cells=0))
    kept = OnnxSession(bundle / "model.onnx", SessionOptions(release_memory=False))
    rng = np.random.default_rng(0)
    for rows, width in [(1, 8), (4, 64), (2, 16)]:  # a large shape between two small ones
        ids = rng.integers(5, 50, size=(rows, width), dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        # A packed graph (BERT's default form) runs the padded feed packed.
        first = run_padded_feed(released.run, released.input_names, feed, released.output_names)
        second = run_padded_feed(kept.run, kept.input_names, feed, kept.output_names)
        for name in first:
            np.testing.assert_array_equal(first[name], second[name])


def test_memory_is_released_only_after_batches_that_can_have_grown_the_arena(
    tiny_bundles: dict[tuple[str, str], Path],
) -> None:
    bundle = tiny_bundles[("bert", "feature-extraction")]
    session = OnnxSession(bundle / "model.onnx", SessionOptions(release_above_cells=4 * 64 * 64))
    real_run = session._session.run
    shrunk: list[bool] = []

    def recording_run(names: Any, inputs: Any, run_options: Any = None) -> Any:
        shrunk.append(run_options is not None)  # the arena-shrinking run options, or none
        return real_run(names, inputs, run_options)

    session._session = SimpleNamespace(run=recording_run)  # type: ignore[assignment]
    for rows, width in [(1, 8), (4, 64), (2, 16), (8, 64)]:
        ids = np.full((rows, width), 7, dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        # Rows of one length stay one per row when packed, so the shapes are the same.
        run_padded_feed(session.run, session.input_names, feed, session.output_names)
    # Shrunk after 4 x 64 and 8 x 64 (rows x width^2 at the threshold or above), not the others.
    assert shrunk == [False, True, False, True]
    assert map_large_blocks() is True  # glibc: large blocks are mapped on their own
