"""Batch invariance: a row's output is the same alone and batched with any other rows.

The default int8 export (per-row activation scales) must give each row the same output within
1e-3 whether it runs alone, in a random batch of 16 padded to its longest row (the server's
batch step), or in the offline planner's length-sorted batches; the old per-tensor dynamic
scheme moves outputs by about 0.1 on the same tiny model, which shows the test can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distilserve.models import load_model
from distilserve.models.bundle import load_manifest
from distilserve.models.evaluation.invariance import measure_batch_invariance
from distilserve.models.export import ExportOptions, export_bundle
from tests.tiny_models import Arch, TinyTask, corpus

BundleMap = dict[tuple[Arch, TinyTask], Path]
TOLERANCE = 1e-3
# Varied lengths (1 to 12 extra adjectives), so most rows sit beside padding and longer rows.
TEXTS = corpus(64, seed=3)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
@pytest.mark.parametrize("task", ["text-classification", "feature-extraction"])
def test_default_int8_export_answers_the_same_alone_and_batched(
    tiny_int8_bundles: BundleMap, arch: Arch, task: TinyTask
) -> None:
    bundle = tiny_int8_bundles[(arch, task)]
    quantization = load_manifest(bundle).quantization
    assert quantization.activation_scales == "per-row" and quantization.batch_invariant
    assert quantization.scheme_reason and "batch invariant" in quantization.scheme_reason
    model = load_model(bundle)

    report = measure_batch_invariance(model, TEXTS, batch_size=16)
    assert report.rows == len(TEXTS)
    assert report.max_abs_diff <= TOLERANCE
    if task == "text-classification":
        assert report.changed_argmax == 0
    else:
        assert report.min_cosine is not None and report.min_cosine >= 0.9999

    # The offline planner's length-sorted batches (what eval and the bench's ceiling run).
    planned = model.predict(TEXTS)
    alone = [model.predict([text])[0] for text in TEXTS]
    if task == "text-classification":
        assert [result[0].label for result in planned] == [result[0].label for result in alone]
        planned_scores = np.array([[label.score for label in result] for result in planned])
        alone_scores = np.array([[label.score for label in result] for result in alone])
        assert np.abs(planned_scores - alone_scores).max() <= TOLERANCE
    else:
        assert np.abs(np.stack(planned) - np.stack(alone)).max() <= TOLERANCE


def test_per_tensor_scales_make_outputs_depend_on_the_batch(
    tiny_checkpoints: BundleMap, tmp_path: Path
) -> None:
    """The old scheme fails the same check: one activation scale per batch, padding included."""
    bundle = tmp_path / "per-tensor"
    manifest = export_bundle(
        ExportOptions(
            source=str(tiny_checkpoints[("distilbert", "text-classification")]),
            output=bundle,
            activation_scales="per-tensor",
        )
    )
    assert manifest.quantization.activation_scales == "per-tensor"
    assert manifest.quantization.batch_invariant is False
    report = measure_batch_invariance(load_model(bundle), TEXTS, batch_size=16)
    assert report.max_abs_diff > 10 * TOLERANCE


def test_fp32_bundles_are_batch_invariant(tiny_bundles: BundleMap) -> None:
    bundle = tiny_bundles[("bert", "feature-extraction")]
    assert load_manifest(bundle).quantization.batch_invariant
    report = measure_batch_invariance(load_model(bundle), TEXTS, batch_size=16)
    assert report.max_abs_diff <= TOLERANCE and report.min_cosine is not None
