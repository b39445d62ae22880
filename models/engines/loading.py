"""Open a bundle's graph on the engine the settings ask for (``--engine``), or on the measured
fastest (``auto``): what ``load_model`` calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from distilserve.models.bundle import MODEL_NAME, Manifest, ParityCheck
from distilserve.models.engines.base import Engine, EngineChoice
from distilserve.models.engines.int8_weights import fit_to_cpu
from distilserve.models.engines.onnxruntime import OnnxRuntimeEngine
from distilserve.models.engines.openvino import OpenVinoEngine, openvino_missing, run_precision
from distilserve.models.engines.select import PROBE_ROUNDS, Agreement, EngineSelection, choose_engine
from distilserve.models.errors import BundleError
from distilserve.models.export.isa import Isa, cpu_flags, detect_isa, read_cpuinfo
from distilserve.models.export.parity import (
    Outputs,
    SampleBatch,
    Thresholds,
    agreement_metrics,
    encode_samples,
)
from distilserve.models.export.parity import make_check as make_parity_check
from distilserve.models.export.samples import builtin_samples
from distilserve.models.session import SessionOptions
from distilserve.models.tokenization import ThreadSafeTokenizer

logger = logging.getLogger(__name__)

_missing_logged = False


def onnx_precision(manifest: Manifest) -> str:
    return "fp32" if manifest.quantization.mode == "none" else manifest.quantization.mode


def openvino_model(bundle_dir: Path, manifest: Manifest) -> tuple[Path, str] | str:
    """The file OpenVINO runs for this bundle and its stored precision, or why there is none."""
    if manifest.openvino is not None:
        return bundle_dir / manifest.openvino.model, manifest.openvino.precision
    if manifest.quantization.mode == "none":
        return bundle_dir / MODEL_NAME, "fp32"
    return "the bundle has no OpenVINO form (export it with --openvino int8)"


def open_onnxruntime(
    bundle_dir: Path, manifest: Manifest, options: SessionOptions, cpu_isa: Isa | None = None
) -> OnnxRuntimeEngine:
    """ONNX Runtime on the bundle's graph, its int8 weights fitted to ``cpu_isa`` (this machine's
    when None): a bundle exported on another kind of CPU is served at its checked accuracy."""
    path = bundle_dir / MODEL_NAME
    fit = fit_to_cpu(path, manifest, detect_isa() if cpu_isa is None else cpu_isa)
    try:
        return OnnxRuntimeEngine(path, options, onnx_precision(manifest), fit)
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise BundleError(bundle_dir / MODEL_NAME, f"cannot load ONNX model ({exc})") from exc


def open_openvino(
    bundle_dir: Path, manifest: Manifest, options: SessionOptions, flags: frozenset[str] | None = None
) -> Engine | str:
    """The OpenVINO engine for the bundle, or why it cannot run here."""
    missing = openvino_missing()
    if missing is not None:
        return missing
    found = openvino_model(bundle_dir, manifest)
    if isinstance(found, str):
        return found
    path, stored = found
    precision = run_precision(stored, cpu_flags(read_cpuinfo()) if flags is None else flags)
    try:
        return OpenVinoEngine(path, options, precision)
    except Exception as exc:  # openvino raises RuntimeError subclasses of its own
        raise BundleError(path, f"cannot load the OpenVINO model ({exc})") from exc


def probe_batches(manifest: Manifest, tokenizer: ThreadSafeTokenizer) -> list[SampleBatch]:
    return encode_samples(tokenizer, builtin_samples(manifest.task), manifest.max_length)


def agreement_with(manifest: Manifest, probe: Sequence[SampleBatch]) -> Agreement:
    """The export's int8 agreement check of the task, with ONNX Runtime's outputs as reference."""
    thresholds = Thresholds().for_task(manifest.task)

    def check(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> ParityCheck:
        metrics = agreement_metrics(
            manifest.task,
            reference,
            candidate,
            probe,
            problem_type=manifest.problem_type,
            pooling=manifest.pooling or "mean",
        )
        rows = sum(batch.attention_mask.shape[0] for batch in probe)
        return make_parity_check("onnxruntime", "openvino", rows, metrics, thresholds)

    return check


def open_engine(
    bundle_dir: Path,
    manifest: Manifest,
    tokenizer: ThreadSafeTokenizer,
    options: SessionOptions,
    choice: EngineChoice = "auto",
    *,
    rounds: int = PROBE_ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
    cpu_isa: Isa | None = None,
) -> tuple[Engine, EngineSelection]:
    """The engine that runs the bundle and why. ``onnxruntime`` and ``openvino`` are taken as
    asked (``openvino`` fails with the reason where it cannot run); ``auto`` measures.
    ``cpu_isa`` is the CPU ONNX Runtime's int8 weights are fitted to (None: this machine's)."""
    engine, selection = _open_engine(bundle_dir, manifest, tokenizer, options, choice, rounds, clock, cpu_isa)
    if isinstance(engine, OnnxRuntimeEngine) and engine.weights is not None:
        selection = replace(selection, weights=engine.weights)
    return engine, selection


def _open_engine(
    bundle_dir: Path,
    manifest: Manifest,
    tokenizer: ThreadSafeTokenizer,
    options: SessionOptions,
    choice: EngineChoice,
    rounds: int,
    clock: Callable[[], float],
    cpu_isa: Isa | None,
) -> tuple[Engine, EngineSelection]:
    global _missing_logged
    if choice == "onnxruntime":
        engine = open_onnxruntime(bundle_dir, manifest, options, cpu_isa)
        return engine, EngineSelection(
            engine.name, engine.precision, choice, "asked for (--engine onnxruntime)"
        )
    if choice == "openvino":
        opened = open_openvino(bundle_dir, manifest, options)
        if isinstance(opened, str):
            raise BundleError(bundle_dir, f"--engine openvino cannot run this bundle: {opened}")
        return opened, EngineSelection(opened.name, opened.precision, choice, "asked for (--engine openvino)")
    reference = open_onnxruntime(bundle_dir, manifest, options, cpu_isa)
    missing = openvino_missing()
    if missing is not None and not _missing_logged:
        _missing_logged = True
        logger.info("engine auto: onnxruntime only, %s", missing)
    # auto considers only a form the export checked: an fp32 bundle's model.onnx runs on
    # OpenVINO when asked (--engine openvino), never by surprise in another precision.
    form = manifest.openvino
    why_not = missing
    if why_not is None and form is None:
        why_not = "the bundle has no OpenVINO form (export it with --openvino int8)"
    if why_not is None and form is not None and form.batch_invariant is False:
        why_not = "the bundle's OpenVINO form is not batch invariant (its export check)"
    candidate = open_openvino(bundle_dir, manifest, options) if why_not is None else why_not
    if isinstance(candidate, str):
        return reference, EngineSelection(
            reference.name, reference.precision, choice, f"the only engine for this bundle: {candidate}"
        )
    probe = probe_batches(manifest, tokenizer)
    agreement = agreement_with(manifest, probe)
    return choose_engine(
        [reference, candidate],
        probe,
        manifest.output_names,
        agreement,
        rounds=rounds,
        clock=clock,
        widen_to=manifest.max_length,
    )
