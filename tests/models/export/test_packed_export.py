"""``export --graph-form``: the packed graph of a tiny BERT per task answers what the padded graph of
the same checkpoint answers, passes the export's checks on packed feeds, and is the same for a
sequence alone and packed among others (batch invariance, int8 included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distilserve.models import ExportError, load_model
from distilserve.models.evaluation.invariance import alone_and_batched, compare
from distilserve.models.export import ExportOptions, export_bundle
from distilserve.models.packing import POSITION_IDS, SEGMENT_STARTS
from distilserve.models.tasks import QAInput, RerankPair
from tests.conftest import TASKS
from tests.tiny_models import Arch, TinyTask, corpus

TEXTS = [*corpus()[:20], "Hi.", corpus()[40] * 3]
QUESTIONS = [
    QAInput(question=text[:30], context=" ".join(TEXTS[i : i + 4])) for i, text in enumerate(TEXTS[:8])
]


def items_for(task: str) -> list[Any]:
    if task == "question-answering":
        return QUESTIONS
    if task == "rerank":
        return [RerankPair(query=TEXTS[0], document=text) for text in TEXTS]
    return TEXTS


def export(checkpoint: Path, output: Path, task: str, *, form: str, quantize: str) -> Path:
    export_bundle(
        ExportOptions(source=str(checkpoint), output=output, task=task, quantize=quantize, graph_form=form)  # type: ignore[arg-type]
    )
    return output


def flat(result: Any) -> np.ndarray:
    """A result as numbers: logits-derived scores, vectors, or answer scores and spans."""
    if isinstance(result, np.ndarray):
        return result.astype(np.float64)
    if isinstance(result, float):
        return np.array([result])
    if isinstance(result, list):
        return np.concatenate([flat(part) for part in result]) if result else np.zeros(0)
    fields = [getattr(result, name) for name in ("score", "start", "end", "index") if hasattr(result, name)]
    return np.array(fields, dtype=np.float64)


@pytest.fixture(scope="module")
def checkpoints(
    tiny_checkpoints: dict[tuple[Arch, TinyTask], Path], tiny_rerank_checkpoints: dict[Arch, Path]
) -> dict[str, Path]:
    found: dict[str, Path] = {task: tiny_checkpoints[("bert", task)] for task in TASKS}
    found["rerank"] = tiny_rerank_checkpoints["bert"]
    return found


@pytest.mark.parametrize("task", [*TASKS, "rerank"])
def test_the_packed_graph_answers_what_the_padded_graph_answers(
    task: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    padded = load_model(export(checkpoints[task], tmp_path / "padded", task, form="padded", quantize="none"))
    packed = load_model(export(checkpoints[task], tmp_path / "packed", task, form="packed", quantize="none"))
    assert packed.manifest.graph_form == "packed" and padded.manifest.graph_form == "padded"
    assert POSITION_IDS in packed.manifest.input_names
    assert (SEGMENT_STARTS in packed.manifest.input_names) is (task in ("text-classification", "rerank"))
    # The fp32 parity check ran on packed feeds against PyTorch on padded ones.
    assert packed.manifest.parity and all(check.passed for check in packed.manifest.parity)
    items = items_for(task)
    for mine, theirs in zip(packed.predict(items), padded.predict(items), strict=True):
        np.testing.assert_allclose(flat(mine), flat(theirs), atol=1e-4)
    # Arrival order, the server's case: batches of mixed lengths, packed into shared rows.
    rows = [row for item in items for row in packed.prepare(item).rows]
    report = compare(*alone_and_batched(packed, rows, batch_size=8), task, 8)
    assert report.max_abs_diff <= 1e-4
    assert report.changed_argmax in (0, None)


@pytest.mark.parametrize("task", ["text-classification", "feature-extraction"])
def test_a_packed_int8_graph_is_batch_invariant(
    task: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    runtime = load_model(export(checkpoints[task], tmp_path / "int8", task, form="packed", quantize="int8"))
    assert runtime.manifest.quantization.mode == "int8" and runtime.manifest.quantization.batch_invariant
    rows = [row for item in TEXTS for row in runtime.prepare(item).rows]
    report = compare(*alone_and_batched(runtime, rows, batch_size=8), task, 8)
    # Per-row (per-token) activation scales: a neighbour's values never set a token's scale. What
    # is left is fp32 attention over a longer row (sums in another order, about 1e-6), which can
    # move a token across one int8 rounding step: 1.4e-3 at most on these models, direction kept.
    assert report.max_abs_diff <= 2e-3
    assert report.changed_argmax in (0, None)
    assert report.min_cosine is None or report.min_cosine >= 0.9999


def test_a_checkpoint_that_cannot_be_packed_is_refused_with_the_way_out(
    tiny_checkpoints: dict[tuple[Arch, TinyTask], Path], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="--graph-form padded"):
        export(
            tiny_checkpoints[("distilbert", "text-classification")],
            tmp_path / "out",
            "text-classification",
            form="packed",
            quantize="none",
        )
    assert not (tmp_path / "out").exists()


def test_auto_packs_what_can_be_packed_and_pads_the_rest(
    tiny_checkpoints: dict[tuple[Arch, TinyTask], Path], tmp_path: Path
) -> None:
    for arch, expected in (("bert", "packed"), ("distilbert", "padded")):
        bundle = export(
            tiny_checkpoints[(arch, "text-classification")],
            tmp_path / arch,
            "text-classification",
            form="auto",
            quantize="none",
        )
        runtime = load_model(bundle)
        assert runtime.manifest.graph_form == expected
        assert runtime.packed == (expected == "packed")
        assert (POSITION_IDS in runtime.manifest.input_names) == (expected == "packed")


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("text-classification", "packed"),
        ("feature-extraction", "packed"),
        ("question-answering", "padded"),
        ("rerank", "padded"),
    ],
)
def test_auto_packs_the_tasks_of_short_sequences_only(
    task: str, expected: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    # Reader windows and query-passage pairs are wider than a packed row: packing them saves no
    # padding, so auto pads them; --graph-form packed still packs them (the test above).
    runtime = load_model(export(checkpoints[task], tmp_path / "auto", task, form="auto", quantize="none"))
    assert runtime.manifest.graph_form == expected
    assert runtime.packed == (expected == "packed")
