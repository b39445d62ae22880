"""OpenVINO against ONNX Runtime on tiny bundles, and the export's OpenVINO form (skipped, with
the reason, where openvino or nncf is not installed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from distilserve.models import BundleError, load_manifest, load_model
from distilserve.models.batching import assemble_batch
from distilserve.models.bundle import MANIFEST_NAME, OPENVINO_MODEL_NAME, OPENVINO_WEIGHTS_NAME
from distilserve.models.evaluation.invariance import measure_batch_invariance
from distilserve.models.export import ExportOptions, export_bundle
from distilserve.models.packing import assemble_packed
from distilserve.models.tasks import QAInput
from tests.conftest import TASKS
from tests.tiny_models import Arch, TinyTask, corpus

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason='openvino and nncf are not installed (pip install "distilserve[openvino]")',
)

Bundles = dict[tuple[Arch, TinyTask], Path]
TEXTS = [*corpus()[:20], "Hi.", corpus()[40] * 3]
# Tasks whose tiny int8 forms are meaningful (tiny QA span logits are too flat: tests/conftest.py).
FORM_TASKS: tuple[TinyTask, ...] = ("text-classification", "feature-extraction")


@pytest.fixture(scope="module")
def openvino_bundles(tiny_checkpoints: Bundles, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """bert classification and distilbert embeddings exported with the OpenVINO int8 form."""
    root = tmp_path_factory.mktemp("bundles-openvino")
    bundles = {}
    for key in (("bert", "text-classification"), ("distilbert", "feature-extraction")):
        output = root / "-".join(key)
        export_bundle(
            ExportOptions(source=str(tiny_checkpoints[key]), output=output, task=key[1], openvino="int8")
        )
        bundles[key] = output
    return bundles


@pytest.mark.parametrize("task", TASKS)
def test_openvino_runs_an_fp32_bundle_as_onnxruntime_does(tiny_bundles: Bundles, task: TinyTask) -> None:
    """fp32 bundles need no IR: OpenVINO reads model.onnx (in bf16 where the CPU has it)."""
    bundle = tiny_bundles[("bert", task)]
    reference = load_model(bundle, engine="onnxruntime")
    candidate = load_model(bundle, engine="openvino")
    assert candidate.selection.engine == candidate.session.name == "openvino"
    items: list[object] = list(TEXTS)
    if task == "question-answering":
        items = [QAInput(question="what was it?", context=text) for text in TEXTS]
    rows = [row for item in items for row in reference.prepare(item).rows]
    pad = reference.tokenizer.pad_token_id
    # The same feed for both: a packed model.onnx (the default for BERT) takes packed batches.
    assert candidate.packed == reference.packed
    if reference.packed:
        feed = assemble_packed(rows, pad, segment_starts=reference.per_sequence).feed
        mask = feed["attention_mask"].any(axis=2)  # real tokens: those that attend to something
    else:
        feed = assemble_batch(rows, pad).feed
        mask = feed["attention_mask"].astype(bool)
    expected = reference.session.run(feed, reference.manifest.output_names)
    actual = candidate.session.run(feed, candidate.manifest.output_names)
    tolerance = 5e-2 if candidate.selection.precision == "bf16" else 1e-4
    for name, values in expected.items():
        got = actual[name]
        if values.ndim >= 2 and values.shape[:2] == mask.shape:  # token-level: real tokens only
            values, got = values[mask], got[mask]
        np.testing.assert_allclose(got, values, atol=tolerance, rtol=0)


@pytest.mark.parametrize("key", [("bert", "text-classification"), ("distilbert", "feature-extraction")])
def test_export_writes_a_checked_hashed_openvino_form(
    openvino_bundles: Bundles, key: tuple[Arch, TinyTask]
) -> None:
    bundle = openvino_bundles[key]
    manifest = load_manifest(bundle)
    form = manifest.openvino
    assert form is not None and form.precision == "int8"
    assert form.calibration_source == "export samples" and form.calibration_samples == 24
    assert form.batch_invariant is True and form.versions["openvino"]
    assert {OPENVINO_MODEL_NAME, OPENVINO_WEIGHTS_NAME} <= set(manifest.files)
    candidates = {check.candidate: check for check in manifest.parity}
    assert candidates["openvino-fp32"].reference == "pytorch" and candidates["openvino-fp32"].passed
    assert candidates["openvino-int8"].reference == "onnx-fp32" and candidates["openvino-int8"].passed
    assert candidates["openvino-int8 batched"].metrics["max_abs_diff"] <= 1e-3
    assert not [
        path.name for path in bundle.parent.iterdir() if ".work-" in path.name or ".partial-" in path.name
    ]


@pytest.mark.parametrize("key", [("bert", "text-classification"), ("distilbert", "feature-extraction")])
def test_openvino_int8_agrees_with_onnxruntime_and_is_batch_invariant(
    openvino_bundles: Bundles, key: tuple[Arch, TinyTask]
) -> None:
    bundle = openvino_bundles[key]
    onnx = load_model(bundle, engine="onnxruntime")
    openvino = load_model(bundle, engine="openvino")
    assert (openvino.selection.engine, openvino.selection.precision) == ("openvino", "int8")
    expected, actual = onnx.predict(TEXTS), openvino.predict(TEXTS)
    if key[1] == "feature-extraction":
        cosines = [
            float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
            for a, b in zip(expected, actual, strict=True)
        ]
        assert min(cosines) > 0.9
    else:
        agree = [a[0].label == b[0].label for a, b in zip(expected, actual, strict=True)]
        assert sum(agree) >= 0.8 * len(agree)
    report = measure_batch_invariance(openvino, TEXTS, batch_size=8)
    assert report.max_abs_diff <= 1e-3
    assert not report.changed_argmax


def test_auto_measures_both_engines_and_reports_them(openvino_bundles: Bundles) -> None:
    model = load_model(openvino_bundles[("bert", "text-classification")])
    selection = model.selection
    assert selection.requested == "auto" and selection.engine == model.session.name
    assert [timing.engine for timing in selection.timings] == ["onnxruntime", "openvino"]
    assert all(timing.median_pass_ms > 0 for timing in selection.timings)
    assert "median pass over 24 probe rows" in selection.reason
    assert model.selection.as_info()["engine"] == selection.engine


def test_a_changed_ir_is_caught_at_load(openvino_bundles: Bundles, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(openvino_bundles[("bert", "text-classification")], bundle)
    weights = bundle / OPENVINO_WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 does not match"):
        load_model(bundle)
    assert json.loads((bundle / MANIFEST_NAME).read_text())["openvino"]["precision"] == "int8"
