"""``distilserve export`` and ``distilserve build-default``: settings and entry points.

``distilserve.cli`` turns each settings class into command-line flags (one flag per field, the
field's description as help) and calls the entry with the parsed settings; tests and scripts
call ``run(Settings(...))`` directly. torch and friends are imported only when an export runs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from distilserve.models.bundle import Pooling, Task
from distilserve.models.errors import DistilserveError
from distilserve.models.export.default_model import default_cache_dir, ensure_default_bundle
from distilserve.models.export.exporter import ExportOptions, export_bundle
from distilserve.models.export.isa import ActivationScales, IsaChoice
from distilserve.models.export.openvino_form import OpenVinoMode
from distilserve.models.export.packed import GraphFormChoice
from distilserve.models.export.parity import Thresholds

logger = logging.getLogger(__name__)

_DEFAULTS = Thresholds()


class Settings(BaseSettings):
    """``distilserve export SOURCE --output DIR [--task TASK] ...``"""

    model_config = SettingsConfigDict(env_prefix="DISTILSERVE_EXPORT_", extra="ignore")

    source: str = Field(
        description="a checkpoint folder (save_pretrained or sentence-transformers) or a Hugging Face Hub id",
        json_schema_extra={"cli_positional": True},
    )
    output: Path = Field(description="the bundle folder to write")
    task: Task | None = Field(
        None, description="what the bundle serves; inferred from the config's architectures when unset"
    )
    quantize: Literal["int8", "none"] = Field("int8", description="int8 or none (fp32)")
    activation_scales: ActivationScales = Field(
        "per-row",
        description=(
            "int8 activation scales: per-row (each token its own scale: a sentence's output is the same "
            "alone and batched, accuracy kept; 0.74-0.95x the speed in loaded-machine runs) or "
            "per-tensor (ONNX Runtime's dynamic int8: one scale per batch, so outputs depend on batch "
            "neighbours)"
        ),
    )
    per_channel: bool = Field(
        True,
        description="per-channel int8 weight scales (MiniLM: cosine to fp32 0.993, vs 0.963 per-tensor)",
    )
    optimize: bool = Field(
        False,
        description="fuse attention, LayerNorm and GELU before int8 quantization (MiniLM: about 5% faster "
        "for single rows, 10-15% slower for batches; kept only if parity holds)",
    )
    graph_form: GraphFormChoice = Field(
        "auto",
        description=(
            "packed: several sequences per row (block-diagonal attention, position ids per "
            "sequence), so a batch computes the tokens it holds rather than rows x its longest "
            "(BERT-family checkpoints; the checks run on packed batches); padded: one sequence per "
            "row; auto: packed for classification and embeddings where the checkpoint allows it, "
            "padded for question answering and rerank (long sequences gain nothing from packing)"
        ),
    )
    keep_fp32: list[str] = Field(
        default_factory=list,
        description=(
            "mixed precision: glob patterns of MatMul/Gemm node names int8 leaves in fp32, e.g. "
            "'*qa_outputs*' (a reader's span head) or '*layer.0/*' (the first layer)"
        ),
    )
    isa: IsaChoice = Field(
        "auto", description="CPU the int8 scheme targets; auto reads this machine's /proc/cpuinfo"
    )
    max_length: int | None = Field(
        None,
        ge=2,
        description="token limit of the bundle; default min(tokenizer limit, position embeddings), "
        "or max_seq_length of a sentence-transformers model",
    )
    opset: int | None = Field(
        None, ge=11, description="ONNX opset; Optimum's default for the model when unset"
    )
    pooling: Pooling | None = Field(
        None, description="embedding pooling; from the sentence-transformers config when unset, else mean"
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) to export")
    source_name: str | None = Field(
        None,
        description=(
            "the source id the manifest records (default: the hub id or the local folder); name the "
            "recipe rather than the path of a checkpoint on the machine that built it"
        ),
    )
    samples: Path | None = Field(
        None,
        description=(
            "extra sample inputs for the checks, one per line (question<TAB>context for QA, "
            "query<TAB>document for rerank)"
        ),
    )
    openvino: OpenVinoMode = Field(
        "auto",
        description=(
            "also write an OpenVINO IR for --engine openvino/auto: int8 (NNCF static quantization), fp32 "
            "(run in bf16 where the CPU has it), none; auto: int8 where openvino and nncf are installed "
            "(the [openvino] extra)"
        ),
    )
    calibration: Path | None = Field(
        None,
        description="calibration inputs of the OpenVINO int8 form, one per line (the --samples format); "
        "default: the export's samples",
    )
    overwrite: bool = Field(False, description="replace an existing bundle at --output")
    fp32_tolerance: float = Field(
        _DEFAULTS.fp32_max_abs_diff, gt=0, description="largest allowed |ONNX fp32 - PyTorch| on any output"
    )
    min_argmax_agreement: float = Field(
        _DEFAULTS.min_argmax_agreement,
        ge=0,
        le=1,
        description=(
            "classification: share of int8 labels equal to fp32; rerank: of sample pairs int8 orders as fp32"
        ),
    )
    max_probability_gap: float = Field(
        _DEFAULTS.max_probability_gap,
        ge=0,
        le=1,
        description="classification and rerank: largest int8 vs fp32 score gap",
    )
    min_span_agreement: float = Field(
        _DEFAULTS.min_span_agreement,
        ge=0,
        le=1,
        description="question answering: share of identical int8 spans",
    )
    min_mean_cosine: float = Field(
        _DEFAULTS.min_mean_cosine, ge=-1, le=1, description="embeddings: mean int8 vs fp32 cosine"
    )
    min_cosine: float = Field(
        _DEFAULTS.min_cosine, ge=-1, le=1, description="embeddings: lowest int8 vs fp32 cosine of any sample"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["json", "text"] = Field("text", description="log format")

    def to_options(self) -> ExportOptions:
        return ExportOptions(
            source=self.source,
            output=self.output,
            task=self.task,
            quantize=self.quantize,
            per_channel=self.per_channel,
            optimize=self.optimize,
            isa=self.isa,
            activation_scales=self.activation_scales,
            max_length=self.max_length,
            opset=self.opset,
            pooling=self.pooling,
            revision=self.revision,
            source_name=self.source_name,
            samples=self.samples,
            overwrite=self.overwrite,
            keep_fp32=tuple(self.keep_fp32),
            graph_form=self.graph_form,
            openvino=self.openvino,
            calibration=self.calibration,
            thresholds=Thresholds(
                fp32_max_abs_diff=self.fp32_tolerance,
                min_argmax_agreement=self.min_argmax_agreement,
                max_probability_gap=self.max_probability_gap,
                min_span_agreement=self.min_span_agreement,
                min_mean_cosine=self.min_mean_cosine,
                min_cosine=self.min_cosine,
            ),
        )


def run(settings: Settings) -> int:
    """Export. Exit status 0 with the bundle's folder on stdout (the steps and the summary go to
    the log, on stderr), or 2 (input it cannot use: docs/architecture.md) with the reason on stderr."""
    try:
        export_bundle(settings.to_options())
    except DistilserveError as exc:
        print(f"distilserve export: {exc}", file=sys.stderr)
        return 2
    print(settings.output.expanduser().resolve())
    return 0


class BuildDefaultSettings(BaseSettings):
    """``distilserve build-default [--cache-dir DIR] [--overwrite]``"""

    model_config = SettingsConfigDict(env_prefix="DISTILSERVE_", extra="ignore")

    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="cache folder; the bundle goes to CACHE_DIR/bundles/"
    )
    overwrite: bool = Field(False, description="rebuild the bundle even if it exists")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["json", "text"] = Field("text", description="log format")


def run_build_default(settings: BuildDefaultSettings) -> int:
    """Build (or find) the default bundle and print its folder."""
    try:
        bundle = ensure_default_bundle(settings.cache_dir, overwrite=settings.overwrite)
    except DistilserveError as exc:
        print(f"distilserve build-default: {exc}", file=sys.stderr)
        return 2
    print(bundle)
    return 0
