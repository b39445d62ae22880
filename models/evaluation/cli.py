"""``distilserve eval BUNDLE --dataset sst2|squad|stsb``: score a bundle on a dev set.

Scores the bundle, and beside it, on the same examples, its fp32 export (``--fp32-bundle``) and
its PyTorch source checkpoint (``--source``), then prints one table with each model's score and
its difference to fp32 (the int8 cost), and writes it as JSON with ``--output``.

* sst2: accuracy on SST-2 dev (labels read by name: positive/negative).
* squad: exact match and F1 on SQuAD v1.1 dev, the official normalisation, best over the gold
  answers, the top answer of each question.
* stsb: Spearman correlation (x100) of the cosine of the two sentences' embeddings with the
  gold similarity, on STS-B dev.

torch is imported only with ``--source``; a bundle alone is scored with the runtime install.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from distilserve.models.bundle import Manifest, read_manifest
from distilserve.models.errors import DistilserveError
from distilserve.models.evaluation.data import (
    SQUAD_DEV,
    SST2_DEV,
    STSB_DEV,
    DataError,
    default_data_dir,
    read_squad,
    read_sst2,
    read_stsb,
)
from distilserve.models.evaluation.metrics import accuracy, cosine_rows, spearman, squad_scores
from distilserve.models.evaluation.scorers import BundleScorer, Scorer, TorchScorer

logger = logging.getLogger(__name__)

Dataset = Literal["sst2", "squad", "stsb"]
DATA_FILES: dict[Dataset, str] = {"sst2": SST2_DEV, "squad": SQUAD_DEV, "stsb": STSB_DEV}
# The task a bundle must serve for each dataset.
DATASET_TASKS = {"sst2": "text-classification", "squad": "question-answering", "stsb": "feature-extraction"}
# The metric the deltas are reported on (the others are printed as well).
PRIMARY_METRIC: dict[Dataset, str] = {"sst2": "accuracy", "squad": "f1", "stsb": "spearman"}


class Settings(BaseSettings):
    """``distilserve eval BUNDLE --dataset sst2|squad|stsb [--fp32-bundle DIR] [--source DIR]``"""

    model_config = SettingsConfigDict(env_prefix="DISTILSERVE_EVAL_", extra="ignore")

    bundle: Path = Field(description="the bundle to score", json_schema_extra={"cli_positional": True})
    dataset: Dataset = Field(description="the dev set: sst2 (accuracy), squad (EM/F1), stsb (Spearman)")
    fp32_bundle: Path | None = Field(None, description="the fp32 export of the same model, scored beside it")
    source: str | None = Field(
        None, description="the PyTorch checkpoint folder the bundle was exported from (imports torch)"
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="folder with sst2_dev.tsv, squad_v1.1_dev.json, stsbenchmark/ (DISTILSERVE_DATA_DIR)",
    )
    compare: list[str] = Field(
        default_factory=list,
        description=(
            "other bundles scored on the same examples, as NAME=DIR (e.g. teacher-fp32=bundles/teacher): "
            "a teacher beside its student, in one run"
        ),
    )
    limit: int | None = Field(None, ge=1, description="score only the first N examples (quick runs)")
    batch_size: int = Field(32, ge=1, description="rows per model batch (length-grouped)")
    output: Path | None = Field(None, description="also write the results to this JSON file")
    log_level: Literal["debug", "info", "warning", "error"] = Field("warning", description="log level")
    log_format: Literal["json", "text"] = Field("text", description="log format")


@dataclass
class ModelScore:
    name: str
    kind: str
    path: str
    metrics: dict[str, float]
    seconds: float
    examples: int


@dataclass
class EvalReport:
    dataset: Dataset
    data_file: str
    examples: int
    primary_metric: str
    models: list[ModelScore] = field(default_factory=list)
    deltas_vs_fp32: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _sst2(data_file: Path, limit: int | None) -> tuple[int, Callable[[Scorer], dict[str, float]]]:
    data = read_sst2(data_file, limit)

    def score(model: Scorer) -> dict[str, float]:
        return {"accuracy": 100.0 * accuracy(model.classify(data.texts), data.labels)}

    return len(data), score


def _squad(data_file: Path, limit: int | None) -> tuple[int, Callable[[Scorer], dict[str, float]]]:
    examples = read_squad(data_file, limit)
    gold = {example.id: example.answers for example in examples}

    def score(model: Scorer) -> dict[str, float]:
        answers = model.answer(examples)
        predictions = {example.id: answer for example, answer in zip(examples, answers, strict=True)}
        return squad_scores(predictions, gold)

    return len(examples), score


def _stsb(data_file: Path, limit: int | None) -> tuple[int, Callable[[Scorer], dict[str, float]]]:
    pairs = read_stsb(data_file, limit)

    def score(model: Scorer) -> dict[str, float]:
        # One pass over both columns, so batches mix them and pad less.
        vectors = model.embed(pairs.first + pairs.second)
        cosines = cosine_rows(vectors[: len(pairs)], vectors[len(pairs) :])
        return {"spearman": 100.0 * spearman(cosines, np.asarray(pairs.scores))}

    return len(pairs), score


SCORERS = {"sst2": _sst2, "squad": _squad, "stsb": _stsb}


def _manifest_for(bundle: Path, dataset: Dataset) -> Manifest:
    """The bundle's manifest, if it serves the task the dataset scores; a DataError if not."""
    manifest = read_manifest(bundle)
    expected_task = DATASET_TASKS[dataset]
    if manifest.task != expected_task:
        raise DataError(bundle, f"bundle serves {manifest.task}; {dataset} needs {expected_task}")
    return manifest


def evaluate(settings: Settings) -> EvalReport:
    """Score every model the settings name on the same examples. Raises DataError, DistilserveError."""
    data_file = settings.data_dir / DATA_FILES[settings.dataset]
    examples, score = SCORERS[settings.dataset](data_file, settings.limit)
    manifest = _manifest_for(settings.bundle, settings.dataset)
    report = EvalReport(
        dataset=settings.dataset,
        data_file=str(data_file),
        examples=examples,
        primary_metric=PRIMARY_METRIC[settings.dataset],
    )
    candidates: list[tuple[str, Callable[[], Scorer]]] = [
        (
            str(settings.bundle),
            lambda: BundleScorer(settings.bundle, "bundle", batch_size=settings.batch_size),
        )
    ]
    fp32_bundle = settings.fp32_bundle
    if fp32_bundle is not None:
        candidates.append(
            (
                str(fp32_bundle),
                lambda: BundleScorer(fp32_bundle, "fp32 bundle", batch_size=settings.batch_size),
            )
        )
    for spec in settings.compare:
        name, separator, folder = spec.partition("=")
        if not separator or not name or not folder:
            raise DataError(Path(spec), "--compare takes NAME=DIR")
        compared = Path(folder)
        _manifest_for(compared, settings.dataset)
        candidates.append(
            (str(compared), functools.partial(BundleScorer, compared, name, batch_size=settings.batch_size))
        )
    source = settings.source
    if source is not None:
        candidates.append(
            (
                source,
                lambda: TorchScorer(
                    source,
                    batch_size=settings.batch_size,
                    max_length=manifest.max_length,
                    pooling=manifest.pooling or "mean",
                ),
            )
        )
    for path, build in candidates:
        # One model in memory at a time: the fp32 and PyTorch models are several times larger.
        model = build()
        started = time.perf_counter()
        metrics = score(model)
        seconds = time.perf_counter() - started
        report.models.append(ModelScore(model.name, model.kind, path, metrics, seconds, examples))
        logger.info("scored", extra={"model": model.name, "metrics": metrics, "seconds": round(seconds, 2)})
        del model
    by_name = {entry.name: entry for entry in report.models}
    reference = by_name.get("fp32 bundle")
    if reference is not None:
        for entry in report.models:
            if entry is not reference:
                report.deltas_vs_fp32[entry.name] = (
                    entry.metrics[report.primary_metric] - reference.metrics[report.primary_metric]
                )
    return report


def format_report(report: EvalReport) -> list[str]:
    metric_names = list(report.models[0].metrics) if report.models else []
    lines = [
        f"{report.dataset}: {report.examples} examples from {report.data_file}",
        "",
        "| model | runtime | "
        + " | ".join(metric_names)
        + f" | {report.primary_metric} vs fp32 | seconds | examples/s |",
        "|---|---|" + "---|" * len(metric_names) + "---|---|---|",
    ]
    for entry in report.models:
        delta = report.deltas_vs_fp32.get(entry.name)
        delta_text = f"{delta:+.2f}" if delta is not None else "-"
        values = " | ".join(f"{entry.metrics[name]:.2f}" for name in metric_names)
        rate = entry.examples / entry.seconds if entry.seconds > 0 else float("nan")
        lines.append(
            f"| {entry.name} | {entry.kind} | {values} | {delta_text} | {entry.seconds:.1f} | {rate:.1f} |"
        )
    return lines


def run(settings: Settings) -> int:
    """Evaluate and print the table. Exit status 0, or 2 (input it cannot use) with the reason on stderr."""
    try:
        report = evaluate(settings)
    except (DataError, DistilserveError) as exc:
        print(f"distilserve eval: {exc}", file=sys.stderr)
        return 2
    for line in format_report(report):
        print(line)
    if settings.output is not None:
        settings.output.parent.mkdir(parents=True, exist_ok=True)
        settings.output.write_text(report.to_json(), encoding="utf-8")
    return 0
