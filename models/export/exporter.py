"""``export_bundle``: a Hugging Face checkpoint in, a verified distilserve bundle out.

Five steps, each logged when it starts and when it ends, with its duration:

1. load the checkpoint and export it to ONNX with Optimum (dynamic batch and sequence axes);
2. fp32 parity: the ONNX graph against PyTorch on the sample inputs (hard failure beyond the
   tolerance: the graph must compute the same function);
3. int8: fuse the fp32 graph (kept only if it still matches PyTorch) and quantize it dynamically
   with the scheme of the target ISA;
4. int8 agreement: the int8 graph against the fp32 graph, in the task's terms (class, span,
   embedding direction); a failed threshold fails the export;
5. the OpenVINO form (``--openvino``, ``models.export.openvino_form``): an NNCF int8 (or fp32)
   IR, checked against PyTorch, fp32 and for batch invariance;
6. write the bundle atomically: ``model.onnx``, ``tokenizer.json``, ``distilserve.json`` (and
   the IR's ``openvino_model.xml``/``.bin``).

All intermediate files live in a scratch folder beside the output that is removed whatever
happens, so the fp32 graph never ends up in an int8 bundle and a failed export leaves nothing.
torch, transformers and optimum are imported inside the functions that need them.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import logging
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from distilserve.models.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MODEL_NAME,
    TOKENIZER_NAME,
    GraphForm,
    Manifest,
    OpenVinoForm,
    ParityCheck,
    Pooling,
    QuantizationInfo,
    SourceInfo,
    Task,
    atomic_bundle_dir,
    hash_files,
)
from distilserve.models.errors import BundleError, ExportError
from distilserve.models.export.checkpoint import Checkpoint, load_checkpoint
from distilserve.models.export.isa import ActivationScales, IsaChoice, QuantScheme, resolve_scheme
from distilserve.models.export.openvino_form import OpenVinoMode, build_openvino_form, resolve_mode
from distilserve.models.export.packed import GraphFormChoice, export_packed_onnx, resolve_graph_form
from distilserve.models.export.parity import (
    Outputs,
    SampleBatch,
    Thresholds,
    agreement_metrics,
    describe,
    encode_samples,
    make_check,
    max_abs_diff,
    run_onnx,
    run_torch,
)
from distilserve.models.export.quantize import (
    fuse_transformer_graph,
    nodes_matching,
    quantize_int8,
    quantize_int8_per_row,
)
from distilserve.models.export.samples import export_samples, read_sample_file
from distilserve.models.export.source import (
    weight_files,
    weights_sha256,
)
from distilserve.models.packing import POSITION_IDS, SEGMENT_STARTS
from distilserve.models.tasks import TASK_SPECS, task_spec
from distilserve.models.tokenization import ThreadSafeTokenizer

logger = logging.getLogger(__name__)

QuantizeMode = Literal["int8", "none"]

# The inputs the runtime feeds (see models.batching.assemble_batch) and the outputs each task's
# processor reads (its ``TaskSpec.outputs``).
RUNTIME_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids", POSITION_IDS, SEGMENT_STARTS})
REQUIRED_OUTPUTS: dict[Task, tuple[str, ...]] = {name: spec.outputs for name, spec in TASK_SPECS.items()}
EXPORT_EXTRA_MODULES = ("torch", "transformers", "optimum.exporters.onnx", "onnx")
STEPS = 6
# Recorded in the manifest beside the int8 scheme; the measurements are in models.export.quantize.
SCHEME_REASONS: dict[ActivationScales, str] = {
    "per-row": (
        "per-row activation scales: each token is quantized from its own values, so a row's output "
        "is the same alone and in any batch (batch invariant), at per-tensor accuracy or better; "
        "0.74-0.95x the speed of ONNX Runtime's per-tensor dynamic int8 (MiniLM-L6, SST-2 student)"
    ),
    "per-tensor": (
        "per-tensor dynamic activation scales (ONNX Runtime quantize_dynamic): the fastest int8, "
        "but one scale per batch makes a row's output depend on its batch neighbours"
    ),
}


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``distilserve export`` takes (``distilserve.models.export.cli.Settings`` maps onto this)."""

    source: str
    output: Path
    task: Task | None = None
    quantize: QuantizeMode = "int8"
    # Per-channel weight scales: all-MiniLM-L6-v2's int8-vs-fp32 embedding cosine goes from
    # 0.967 (per-tensor) to 0.993, for about 5% more latency.
    per_channel: bool = True
    # Fuse attention/LayerNorm/GELU before quantizing: faster for single rows, slower for
    # batches (figures in models.export.quantize), hence off by default.
    optimize: bool = False
    isa: IsaChoice = "auto"
    # One int8 activation scale per row (token): batch invariant, and the default. "per-tensor"
    # is ONNX Runtime's dynamic quantization (one scale per batch; faster, not invariant).
    activation_scales: ActivationScales = "per-row"
    max_length: int | None = None
    opset: int | None = None
    pooling: Pooling | None = None
    normalize: bool | None = None
    revision: str | None = None
    # Recorded as the manifest's source id instead of SOURCE (e.g. the hub id of a packaged copy).
    source_name: str | None = None
    samples: Path | None = None
    overwrite: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    # Glob patterns of MatMul/Gemm node names that int8 leaves in fp32 (mixed precision).
    keep_fp32: tuple[str, ...] = ()
    # The OpenVINO form beside model.onnx: int8 (NNCF static), fp32 (bf16 where the CPU has it),
    # none, or auto (int8 where openvino and nncf are installed).
    openvino: OpenVinoMode = "none"
    # Calibration inputs of the OpenVINO int8 form (the --samples format); default: the samples.
    calibration: Path | None = None
    # The graph form of model.onnx (models.packing): packed (several sequences per row, no
    # padding to compute), padded, or auto: packed where the architecture allows it.
    graph_form: GraphFormChoice = "auto"


def require_export_extra() -> None:
    """Fail with the install command when the export dependencies are missing."""
    missing = [name for name in EXPORT_EXTRA_MODULES if not _module_available(name)]
    if missing:
        raise ExportError(
            f"exporting needs {', '.join(missing)}, which this install lacks: "
            'pip install "distilserve[export]"'
        )


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


class _Steps:
    """Numbered step logging: 'step 2/5 fp32 parity ...' then '... done in 1.3s'."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.index = 0
        self.durations: dict[str, float] = {}

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.index += 1
        label = f"step {self.index}/{self.total} {title}"
        logger.info("%s ...", label, extra={"step": self.index, "steps": self.total})
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            logger.error("%s failed after %.1fs", label, time.perf_counter() - start)
            raise
        elapsed = time.perf_counter() - start
        self.durations[title] = elapsed
        logger.info(
            "%s done in %.1fs", label, elapsed, extra={"step": self.index, "duration_s": round(elapsed, 3)}
        )

    def skip(self, title: str, reason: str) -> None:
        self.index += 1
        logger.info("step %d/%d %s skipped (%s)", self.index, self.total, title, reason)


def export_bundle(options: ExportOptions) -> Manifest:
    """Export ``options.source`` to a verified bundle at ``options.output``; returns its manifest.

    Raises ``ExportError`` (bad source, unsupported model, failed parity or agreement) and
    leaves no bundle, and no partial folder, behind.
    """
    require_export_extra()
    output = Path(options.output).expanduser().resolve()
    if output.exists() and not options.overwrite:
        raise ExportError(f"{output}: output already exists; pass --overwrite to replace it")
    if options.max_length is not None and options.max_length < 2:
        raise ExportError(f"--max-length must be at least 2, got {options.max_length}")
    scheme = resolve_scheme(options.isa) if options.quantize == "int8" else None
    started = time.perf_counter()
    steps = _Steps(STEPS)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Beside the output, so that the final files move into the bundle by rename (same filesystem).
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.work-", dir=output.parent) as scratch_name:
        scratch = Path(scratch_name)
        with steps.step("ONNX export"):
            checkpoint = load_checkpoint(options)
            logger.info(
                "exporting %s for %s",
                options.source,
                checkpoint.task,
                extra={"model_type": checkpoint.config.model_type, "max_length": checkpoint.max_length},
            )
            graph_form, form_reason = resolve_graph_form(options.graph_form, checkpoint)
            logger.info("graph form %s (%s)", graph_form, form_reason)
            openvino_mode = resolve_mode(options.openvino, options.quantize)
            # The OpenVINO form is built from the padded graph (OpenVINO runs what it is given;
            # its own packing is not ours): a packed bundle exports that one too.
            padded_fp32_path: Path | None = None
            if graph_form == "packed":
                fp32_path = export_packed_onnx(checkpoint, scratch / "onnx", options.opset)
                if openvino_mode != "none":
                    padded_fp32_path = _export_onnx(checkpoint, scratch / "onnx-padded", options.opset)
            else:
                fp32_path = padded_fp32_path = _export_onnx(checkpoint, scratch / "onnx", options.opset)
            input_names, output_names = _graph_io(fp32_path, checkpoint.task)
            tokenizer_path = scratch / TOKENIZER_NAME
            _write_tokenizer(checkpoint.tokenizer, tokenizer_path, checkpoint.max_length)
            num_parameters = int(sum(p.numel() for p in checkpoint.model.parameters()))

        parity: list[ParityCheck] = []
        with steps.step("fp32 parity"):
            samples = export_samples(checkpoint.task, options.samples)
            batches = encode_samples(
                ThreadSafeTokenizer.from_file(tokenizer_path), samples, checkpoint.max_length
            )
            torch_outputs = run_torch(checkpoint.model, batches, input_names, output_names)
            fp32_outputs = run_onnx(fp32_path, batches, output_names)
            fp32_check = _fp32_check("onnx-fp32", torch_outputs, fp32_outputs, batches, options.thresholds)
            logger.info("%s", describe(fp32_check))
            if not fp32_check.passed:
                raise ExportError(
                    f"the ONNX graph does not reproduce the PyTorch model: {describe(fp32_check)}. "
                    "This is an exporter problem (opset, unsupported op); the bundle was not written"
                )
            parity.append(fp32_check)
        # The PyTorch model is no longer needed; a large one should not sit in memory through int8.
        config = checkpoint.config
        checkpoint.model = None
        gc.collect()

        served_path = fp32_path
        optimized = False
        fp32_nodes: list[str] = []
        if scheme is None:
            steps.skip("int8 quantization", "--quantize none")
            steps.skip("int8 agreement", "--quantize none")
        else:
            with steps.step("int8 quantization"):
                served_path, fp32_nodes, fused_check = _quantize(
                    fp32_path, scratch, config, batches, torch_outputs, options, scheme
                )
                if fused_check is not None:
                    parity.append(fused_check)
                    optimized = True
            with steps.step("int8 agreement"):
                parity.append(
                    _int8_check(
                        checkpoint, served_path, batches, fp32_outputs, output_names, len(samples), options
                    )
                )

        openvino_form: OpenVinoForm | None = None
        openvino_files: list[Path] = []
        if openvino_mode == "none" or padded_fp32_path is None:
            steps.skip("OpenVINO form", f"--openvino {options.openvino}")
        else:
            with steps.step("OpenVINO form"):
                calibration = batches
                if options.calibration is not None:
                    calibration = encode_samples(
                        ThreadSafeTokenizer.from_file(tokenizer_path),
                        read_sample_file(options.calibration, checkpoint.task),
                        checkpoint.max_length,
                    )
                built = build_openvino_form(
                    openvino_mode,
                    padded_fp32_path,
                    scratch,
                    task=checkpoint.task,
                    batches=batches,
                    calibration=calibration,
                    calibration_source=str(options.calibration) if options.calibration else "export samples",
                    torch_outputs=torch_outputs,
                    fp32_outputs=fp32_outputs,
                    output_names=output_names,
                    thresholds=options.thresholds,
                    problem_type=checkpoint.problem_type,
                    pooling=checkpoint.pooling or "mean",
                )
                parity.extend(built.checks)
                openvino_form = built.form
                openvino_files = [built.model_path, built.weights_path]

        with steps.step("write bundle"):
            quantization = QuantizationInfo(
                mode=options.quantize,
                isa=scheme.isa if scheme else None,
                per_channel=options.per_channel if scheme else False,
                weight_type=scheme.weight_type if scheme else None,
                activation_type=scheme.activation_type if scheme else None,
                reduce_range=scheme.reduce_range if scheme else False,
                optimized_graph=optimized,
                activation_scales=options.activation_scales if scheme else None,
                batch_invariant=scheme is None or options.activation_scales == "per-row",
                scheme_reason=SCHEME_REASONS[options.activation_scales] if scheme else None,
                fp32_nodes=fp32_nodes,
                fp32_bytes=fp32_path.stat().st_size,
                model_bytes=served_path.stat().st_size,
            )
            manifest = _write_bundle(
                output,
                options,
                checkpoint,
                served_path=served_path,
                tokenizer_path=tokenizer_path,
                input_names=input_names,
                output_names=output_names,
                num_parameters=num_parameters,
                quantization=quantization,
                parity=parity,
                openvino_form=openvino_form,
                openvino_files=openvino_files,
                graph_form=graph_form,
            )
    elapsed = time.perf_counter() - started
    for line in summary_lines(manifest, output):
        logger.info("%s", line)
    steps_text = ", ".join(f"{title} {seconds:.1f}s" for title, seconds in steps.durations.items())
    logger.info(
        "export finished in %.1fs (%s)",
        elapsed,
        steps_text,
        extra={"bundle": str(output), "duration_s": round(elapsed, 3)},
    )
    return manifest


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the tracer's and optimum's advisory noise during the ONNX export."""
    import torch

    noisy = [logging.getLogger(name) for name in ("optimum", "torch.onnx")]
    levels = [log.level for log in noisy]
    tracer_warning: type[Warning] = getattr(torch.jit, "TracerWarning", UserWarning)
    with warnings.catch_warnings():
        # The tracer warns about every Python-level branch in the modeling code; the parity
        # step checks the traced graph on varied shapes instead.
        warnings.simplefilter("ignore", tracer_warning)
        # Optimum 2.1 uses the TorchScript exporter on purpose (it handles these encoders' dynamic
        # axes); torch's notice that a newer exporter exists is not actionable here.
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript", category=DeprecationWarning
        )
        for log in noisy:
            log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for log, level in zip(noisy, levels, strict=True):
                log.setLevel(level)


def _export_onnx(checkpoint: Checkpoint, folder: Path, opset: int | None) -> Path:
    """Export with Optimum from the already loaded model (the one parity compares against)."""
    from optimum.exporters.onnx import onnx_export_from_model

    try:
        with _quiet_export():
            # Validation is off: step 2 does it on better inputs (padding, pairs, long texts).
            onnx_export_from_model(
                checkpoint.model,
                folder,
                task=task_spec(checkpoint.task).optimum_task,
                opset=opset,
                do_validation=False,
                device="cpu",
            )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ExportError(f"ONNX export of {checkpoint.source.ref} failed: {exc}") from exc
    path = folder / MODEL_NAME
    if not path.is_file():
        raise ExportError(f"ONNX export of {checkpoint.source.ref} wrote no {MODEL_NAME}")
    if any(folder.glob("*.onnx_data")) or any(folder.glob("*.onnx.data")):
        raise ExportError(
            "the model is over 2 GB and was exported with external data, which bundles do not support"
        )
    return path


def _graph_io(path: Path, task: Task) -> tuple[list[str], list[str]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [node.name for node in graph.input if node.name not in initializers]
    outputs = [node.name for node in graph.output]
    unknown = sorted(set(inputs) - RUNTIME_INPUTS)
    if unknown or not {"input_ids", "attention_mask"} <= set(inputs):
        raise ExportError(
            f"unsupported architecture: the exported graph takes inputs {inputs}; the runtime feeds "
            f"{sorted(RUNTIME_INPUTS)} (input_ids and attention_mask required)"
        )
    missing = [name for name in REQUIRED_OUTPUTS[task] if name not in outputs]
    if missing:
        raise ExportError(
            f"the exported graph lacks the outputs {missing} that {task} needs (it has {outputs})"
        )
    return inputs, [name for name in outputs if name in REQUIRED_OUTPUTS[task]]


def _write_tokenizer(tokenizer: Any, path: Path, max_length: int) -> None:
    """Save the fast tokenizer's definition, truncating at the bundle's limit and never padding.

    The runtime pads per batch itself; a fixed padding length baked into some checkpoints'
    tokenizer.json (all-MiniLM-L6-v2 pads to 128) would waste compute for other users of the file.
    """
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length)
    backend.save(str(path))


def _fp32_check(
    candidate: str,
    reference: Sequence[Outputs],
    outputs: Sequence[Outputs],
    batches: Sequence[SampleBatch],
    thresholds: Thresholds,
) -> ParityCheck:
    samples = sum(batch.attention_mask.shape[0] for batch in batches)
    metrics = {"max_abs_diff": max_abs_diff(reference, outputs, batches)}
    return make_check("pytorch", candidate, samples, metrics, {"max_abs_diff": thresholds.fp32_max_abs_diff})


def _quantize(
    fp32_path: Path,
    scratch: Path,
    config: Any,
    batches: Sequence[SampleBatch],
    torch_outputs: Sequence[Outputs],
    options: ExportOptions,
    scheme: QuantScheme,
) -> tuple[Path, list[str], ParityCheck | None]:
    """The int8 graph (fused first with ``--optimize`` when fusion keeps parity), the nodes kept
    in fp32, and the fused graph's parity check if it was used."""
    quantize_source = fp32_path
    fused_check = None
    if options.optimize:
        fused = _fuse_if_faithful(fp32_path, scratch, config, batches, torch_outputs, options)
        if fused is not None:
            quantize_source, fused_check = fused
    served_path = scratch / "model.int8.onnx"
    try:
        fp32_nodes = nodes_matching(quantize_source, options.keep_fp32)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if options.activation_scales == "per-row":
        try:
            quantize_int8_per_row(
                quantize_source,
                served_path,
                scheme,
                per_channel=options.per_channel,
                nodes_to_keep_fp32=fp32_nodes,
            )
        except ValueError as exc:
            raise ExportError(str(exc)) from exc
    else:
        quantize_int8(
            quantize_source,
            served_path,
            scheme,
            per_channel=options.per_channel,
            nodes_to_keep_fp32=fp32_nodes,
        )
    if fp32_nodes:
        logger.info("kept %d nodes in fp32", len(fp32_nodes), extra={"nodes": fp32_nodes})
    logger.info(
        "quantized %s: %s weights, %s activations with %s scales%s%s",
        "fused graph" if fused_check is not None else "graph",
        scheme.weight_type,
        scheme.activation_type,
        options.activation_scales,
        ", per-channel" if options.per_channel else "",
        ", reduced range" if scheme.reduce_range else "",
        extra={
            "isa": scheme.isa,
            "activation_scales": options.activation_scales,
            "bytes": served_path.stat().st_size,
        },
    )
    return served_path, fp32_nodes, fused_check


def _int8_check(
    checkpoint: Checkpoint,
    served_path: Path,
    batches: Sequence[SampleBatch],
    fp32_outputs: Sequence[Outputs],
    output_names: Sequence[str],
    sample_count: int,
    options: ExportOptions,
) -> ParityCheck:
    """int8 against fp32 on the samples, with the task's thresholds; an ``ExportError`` if it fails."""
    int8_outputs = run_onnx(served_path, batches, output_names)
    metrics = agreement_metrics(
        checkpoint.task,
        fp32_outputs,
        int8_outputs,
        batches,
        problem_type=checkpoint.problem_type,
        pooling=checkpoint.pooling or "mean",
    )
    check = make_check(
        "onnx-fp32", "onnx-int8", sample_count, metrics, options.thresholds.for_task(checkpoint.task)
    )
    logger.info("%s", describe(check))
    if not check.passed:
        remedies = "--quantize none or other thresholds"
        if not options.per_channel:
            remedies = "--per-channel, " + remedies
        raise ExportError(
            f"int8 does not agree with fp32: {describe(check)}. Try {remedies}; the bundle was not written"
        )
    return check


def _fuse_if_faithful(
    fp32_path: Path,
    scratch: Path,
    config: Any,
    batches: Sequence[SampleBatch],
    torch_outputs: Sequence[Outputs],
    options: ExportOptions,
) -> tuple[Path, ParityCheck] | None:
    """The fused fp32 graph and its parity check, or None (with a warning) if fusion broke parity."""
    fused_path = scratch / "model.fused.onnx"
    try:
        fused_ops = fuse_transformer_graph(
            fp32_path,
            fused_path,
            num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        )
        fused_outputs = run_onnx(fused_path, batches, list(torch_outputs[0]))
    except Exception as exc:  # onnxruntime.transformers raises assorted errors on unknown patterns
        logger.warning("graph fusion failed, quantizing the unfused graph (%s)", exc)
        return None
    check = _fp32_check("onnx-fp32-fused", torch_outputs, fused_outputs, batches, options.thresholds)
    if not check.passed:
        logger.warning("fused graph breaks fp32 parity, quantizing the unfused graph: %s", describe(check))
        return None
    logger.info("fused graph: %s; %s", _format_ops(fused_ops), describe(check))
    return fused_path, check


def _format_ops(ops: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in sorted(ops.items())) or "no patterns fused"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in (
        "distilserve",
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime",
        "openvino",
        "nncf",
        "tokenizers",
        "numpy",
    ):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _write_bundle(
    output: Path,
    options: ExportOptions,
    checkpoint: Checkpoint,
    *,
    served_path: Path,
    tokenizer_path: Path,
    input_names: list[str],
    output_names: list[str],
    num_parameters: int,
    quantization: QuantizationInfo,
    parity: list[ParityCheck],
    openvino_form: OpenVinoForm | None = None,
    openvino_files: Sequence[Path] = (),
    graph_form: GraphForm = "padded",
) -> Manifest:
    config = checkpoint.config
    source = checkpoint.source
    revision = options.revision
    if not source.is_local:
        # Pin what was actually downloaded: a branch name like "main" moves.
        revision = getattr(config, "_commit_hash", None) or revision
    labels: dict[int, str] = {}
    if task_spec(checkpoint.task).labels:
        labels = {int(index): str(label) for index, label in (config.id2label or {}).items()}
    manifest_fields: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": checkpoint.task,
        "model_type": str(config.model_type),
        "labels": labels,
        "problem_type": checkpoint.problem_type,
        "max_length": checkpoint.max_length,
        "input_names": input_names,
        "output_names": output_names,
        "graph_form": graph_form,
        "hidden_size": getattr(config, "hidden_size", None),
        "num_parameters": num_parameters,
        "pooling": checkpoint.pooling,
        "normalize": checkpoint.normalize,
        "quantization": quantization,
        "openvino": openvino_form,
        "parity": parity,
        "source": SourceInfo(
            id=options.source_name or (str(source.local_dir) if source.local_dir else source.ref),
            revision=revision,
            sha256=weights_sha256(weight_files(source)),
        ),
        "versions": library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        with atomic_bundle_dir(output, overwrite=options.overwrite) as staging:
            shutil.move(str(served_path), staging / MODEL_NAME)
            shutil.move(str(tokenizer_path), staging / TOKENIZER_NAME)
            for path in openvino_files:
                shutil.move(str(path), staging / path.name)
            names = [MODEL_NAME, TOKENIZER_NAME, *(path.name for path in openvino_files)]
            manifest = Manifest(**manifest_fields, files=hash_files(staging, names))
            (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    except BundleError as exc:
        raise ExportError(str(exc)) from exc
    return manifest


def summary_lines(manifest: Manifest, bundle: Path) -> list[str]:
    """A short, plain-text account of a bundle: what, how big, and how it checked out."""
    quant = manifest.quantization
    lines = [f"bundle {bundle}: {manifest.task}, {manifest.model_type}, max_length {manifest.max_length}"]
    if quant.model_bytes is not None:
        size = f"{MODEL_NAME} {quant.model_bytes / 1e6:.1f} MB"
        if quant.mode == "int8" and quant.fp32_bytes:
            details = [f"int8 {quant.weight_type}/{quant.activation_type} for {quant.isa}"]
            details += [f"{quant.activation_scales} activation scales"] if quant.activation_scales else []
            details += ["per-channel"] if quant.per_channel else []
            details += ["fused"] if quant.optimized_graph else []
            details += [f"{len(quant.fp32_nodes)} nodes kept fp32"] if quant.fp32_nodes else []
            size += (
                f" ({', '.join(details)}; "
                f"fp32 {quant.fp32_bytes / 1e6:.1f} MB, {quant.model_bytes / quant.fp32_bytes:.0%} of it)"
            )
        else:
            size += " (fp32)"
        lines.append(size)
    if manifest.openvino is not None and manifest.openvino.model_bytes is not None:
        lines.append(
            f"OpenVINO {manifest.openvino.precision} IR {manifest.openvino.model_bytes / 1e6:.1f} MB"
        )
    lines.extend(describe(check) for check in manifest.parity)
    return lines
