"""The OpenVINO form of a bundle (``export --openvino``): an IR beside ``model.onnx``.

* ``int8``: NNCF static post-training quantization of the fp32 graph (``ModelType.TRANSFORMER``:
  smooth quant, int8 MatMuls and embeddings, fp32 softmax and layer norm), calibrated on
  ``--calibration FILE`` or, by default, the samples the export checks with. The activation
  scales are constants, so a row's output does not depend on its batch.
* ``fp32``: the fp32 graph itself, weights stored as fp16; OpenVINO runs it in bf16 where the
  CPU has bf16 arithmetic (``avx512_bf16``, ``amx_bf16``), in fp32 elsewhere.

Three checks, recorded in the manifest's ``parity``; the first two fail the export when missed:
OpenVINO's reading of the fp32 graph against PyTorch (fp32 tolerance), the form as it will run
against the fp32 ONNX graph (the task's int8 thresholds), and batch invariance (each sample
alone against the same sample in the sample batches, at most ``INVARIANCE_TOLERANCE``). The
last is recorded rather than fatal: static scales do not depend on the batch, but a value near a
rounding boundary may round the other way when another kernel's blocking changes its last bits
(the DistilBERT-size benchmark model moved its logits by 0.0027), and ``--engine auto`` does not
choose a form that is not batch invariant.
openvino and nncf are imported here, lazily, and only when a form is built.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distilserve.models.bundle import (
    OPENVINO_MODEL_NAME,
    OPENVINO_WEIGHTS_NAME,
    OpenVinoForm,
    ParityCheck,
    ProblemType,
    Task,
)
from distilserve.models.engines.openvino import INSTALL_HINT, OpenVinoEngine, run_precision
from distilserve.models.errors import ExportError
from distilserve.models.export.isa import cpu_flags, read_cpuinfo
from distilserve.models.export.parity import (
    Outputs,
    SampleBatch,
    Thresholds,
    agreement_metrics,
    describe,
    make_check,
    max_abs_diff,
)
from distilserve.models.session import SessionOptions

logger = logging.getLogger(__name__)

OpenVinoMode = Literal["auto", "int8", "fp32", "none"]
OPENVINO_MODES: tuple[OpenVinoMode, ...] = ("auto", "int8", "fp32", "none")
# A row alone and in a batch: static scales leave only the kernels' blocking to differ.
INVARIANCE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class BuiltForm:
    model_path: Path
    weights_path: Path
    form: OpenVinoForm
    checks: list[ParityCheck]


def openvino_export_missing() -> str | None:
    """Why this install cannot build an OpenVINO form, or None when it can."""
    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed ({INSTALL_HINT})"
    return None


def resolve_mode(mode: OpenVinoMode, quantize: str = "int8") -> Literal["int8", "fp32", "none"]:
    """``auto``: int8 for an int8 export where openvino and nncf are installed; none for an fp32
    export (OpenVINO runs its model.onnx as it is) and where they are not (said in the log)."""
    if mode != "auto":
        return mode
    if quantize == "none":
        return "none"
    missing = openvino_export_missing()
    if missing is not None:
        logger.info("no OpenVINO form: %s", missing)
        return "none"
    return "int8"


def _versions() -> dict[str, str]:
    versions = {}
    for dist in ("openvino", "nncf"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _run(engine: OpenVinoEngine, batches: Sequence[SampleBatch], output_names: list[str]) -> list[Outputs]:
    return [engine.run(batch.feed, output_names) for batch in batches]


def invariance_check(
    engine: OpenVinoEngine, batches: Sequence[SampleBatch], output_names: list[str], candidate: str
) -> ParityCheck:
    """Each sample alone against the same sample in its batch: the largest change on real tokens."""
    worst = 0.0
    rows = 0
    for batch in batches:
        together = engine.run(batch.feed, output_names)
        lengths = batch.attention_mask.sum(axis=1)
        for row, length in enumerate(lengths.tolist()):
            alone_feed = {name: values[row : row + 1, :length] for name, values in batch.feed.items()}
            alone = engine.run(alone_feed, output_names)
            for name in output_names:
                batched = together[name][row : row + 1]
                if batched.ndim >= 2 and batched.shape[1] == batch.attention_mask.shape[1]:
                    batched = batched[:, :length]
                worst = max(worst, float(np.abs(batched - alone[name]).max(initial=0.0)))
            rows += 1
    return make_check(
        f"{candidate} alone",
        f"{candidate} batched",
        rows,
        {"max_abs_diff": worst},
        {"max_abs_diff": INVARIANCE_TOLERANCE},
    )


def build_openvino_form(
    mode: Literal["int8", "fp32"],
    fp32_path: Path,
    scratch: Path,
    *,
    task: Task,
    batches: Sequence[SampleBatch],
    calibration: Sequence[SampleBatch],
    calibration_source: str,
    torch_outputs: Sequence[Outputs],
    fp32_outputs: Sequence[Outputs],
    output_names: list[str],
    thresholds: Thresholds,
    problem_type: ProblemType | None,
    pooling: str,
) -> BuiltForm:
    """Convert, (quantize,) save and check the OpenVINO form; an ``ExportError`` if a check fails."""
    missing = openvino_export_missing()
    if missing is not None:
        raise ExportError(f"--openvino {mode} needs openvino and nncf: {missing}")
    import openvino as ov

    folder = scratch / "openvino"
    folder.mkdir(parents=True, exist_ok=True)
    options = SessionOptions(allow_spinning=False)
    checks: list[ParityCheck] = []
    model: Any = ov.Core().read_model(str(fp32_path))
    # OpenVINO's reading of the graph must compute what PyTorch does before anything else is judged.
    read_path = folder / "fp32.xml"
    ov.save_model(model, str(read_path), compress_to_fp16=False)
    read_outputs = _run(OpenVinoEngine(read_path, options, "fp32"), batches, output_names)
    samples = sum(batch.attention_mask.shape[0] for batch in batches)
    parity = make_check(
        "pytorch",
        "openvino-fp32",
        samples,
        {"max_abs_diff": max_abs_diff(torch_outputs, read_outputs, batches)},
        {"max_abs_diff": thresholds.fp32_max_abs_diff},
    )
    logger.info("%s", describe(parity))
    if not parity.passed:
        raise ExportError(
            f"OpenVINO does not reproduce the PyTorch model: {describe(parity)}; try --openvino none"
        )
    checks.append(parity)

    model_path = folder / OPENVINO_MODEL_NAME
    calibration_rows = sum(batch.attention_mask.shape[0] for batch in calibration)
    if mode == "int8":
        import nncf

        # Only the graph's own inputs: a graph may not take token_type_ids (DistilBERT).
        inputs = [port.get_any_name() for port in model.inputs]
        dataset = nncf.Dataset([{name: batch.feed[name] for name in inputs} for batch in calibration])
        quantized = nncf.quantize(
            model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration)
        )
        ov.save_model(quantized, str(model_path))
    else:
        ov.save_model(model, str(model_path), compress_to_fp16=True)
    precision = run_precision(mode, cpu_flags(read_cpuinfo()))
    engine = OpenVinoEngine(model_path, options, precision)
    candidate = f"openvino-{precision}"
    outputs = _run(engine, batches, output_names)
    metrics = agreement_metrics(
        task, fp32_outputs, outputs, batches, problem_type=problem_type, pooling=pooling
    )
    agreement = make_check("onnx-fp32", candidate, samples, metrics, thresholds.for_task(task))
    logger.info("%s", describe(agreement))
    if not agreement.passed:
        raise ExportError(
            f"the OpenVINO {mode} form does not agree with fp32: {describe(agreement)}. Try other "
            "--calibration samples or --openvino none; the bundle was not written"
        )
    checks.append(agreement)
    invariance = invariance_check(engine, batches, output_names, candidate)
    if invariance.passed:
        logger.info("%s", describe(invariance))
    else:
        # Recorded, not fatal: --engine auto then keeps ONNX Runtime's per-row int8, which is.
        logger.warning(
            "the OpenVINO %s form is not batch invariant (--engine auto will not choose it): %s",
            mode,
            describe(invariance),
        )
    checks.append(invariance)
    weights_path = model_path.with_suffix(".bin")
    form = OpenVinoForm(
        model=OPENVINO_MODEL_NAME,
        weights=OPENVINO_WEIGHTS_NAME,
        precision=mode,
        calibration_samples=calibration_rows if mode == "int8" else None,
        calibration_source=calibration_source if mode == "int8" else None,
        batch_invariant=invariance.passed,
        model_bytes=model_path.stat().st_size + weights_path.stat().st_size,
        versions=_versions(),
    )
    logger.info(
        "OpenVINO %s form: %.1f MB%s",
        mode,
        form.model_bytes / 1e6 if form.model_bytes else 0.0,
        f", calibrated on {calibration_rows} samples ({calibration_source})" if mode == "int8" else "",
    )
    return BuiltForm(model_path, weights_path, form, checks)
