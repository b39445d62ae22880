"""Sequence classification: softmax (or sigmoid for multi-label), top_k, raw scores.

Scores match the transformers ``text-classification`` pipeline: sigmoid when the model is
multi-label or has a single output, softmax otherwise, no activation for regression.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tokenizers import Encoding

from distilserve.models.batching import BatchArrays, EncodedRow
from distilserve.models.bundle import ProblemType, Task
from distilserve.models.errors import InputError, InputTooLongError
from distilserve.models.tasks.base import Outputs, Prepared, TaskProcessor, TaskSpec
from distilserve.models.tasks.samples import SAMPLE_TEXTS
from distilserve.models.tokenization import TruncationConfig


@dataclass(frozen=True, slots=True)
class ClassifyParams:
    """``top_k``: how many labels to return, best first; None returns every label."""

    top_k: int | None = 1
    raw_scores: bool = False
    truncate: bool = True


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    score: float
    index: int


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))  # type: ignore[no-any-return]


def activation(logits: np.ndarray, problem_type: ProblemType | None) -> np.ndarray:
    """Scores from logits, as the pipeline computes them (export parity checks use it too)."""
    if problem_type == "regression":
        return logits
    if problem_type == "multi_label_classification" or logits.shape[-1] == 1:
        return sigmoid(logits)
    return softmax(logits)


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise InputError(f"expected a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError("input text is empty")


def _single_row(encoding: Encoding, limit: int, truncate: bool) -> Prepared:
    if not truncate and len(encoding.ids) > limit:
        raise InputTooLongError(len(encoding.ids), limit)
    row = EncodedRow(input_ids=encoding.ids, token_type_ids=encoding.type_ids)
    return Prepared(rows=[row], context=None, num_tokens=len(row))


def _truncation(limit: int, truncate: bool) -> TruncationConfig:
    return TruncationConfig(max_length=limit) if truncate else TruncationConfig()


def encode_single_text(processor: TaskProcessor[str, Any, Any], text: str, truncate: bool) -> Prepared:
    """Tokenize one text for a one-row task, enforcing the bundle's length limit."""
    _check_text(text)
    limit = processor.manifest.max_length
    encoding = processor.tokenizer.encode(text, truncation=_truncation(limit, truncate))
    return _single_row(encoding, limit, truncate)


def encode_single_texts(
    processor: TaskProcessor[str, Any, Any], texts: Sequence[str], truncate: bool
) -> list[Prepared | InputError]:
    """``encode_single_text`` over a list, with one tokenizer call for all the valid texts."""
    results: list[Prepared | InputError | None] = [None] * len(texts)
    valid: list[int] = []
    for index, text in enumerate(texts):
        try:
            _check_text(text)
            valid.append(index)
        except InputError as exc:
            results[index] = exc
    limit = processor.manifest.max_length
    encodings = processor.tokenizer.encode_batch(
        [texts[index] for index in valid], truncation=_truncation(limit, truncate)
    )
    for index, encoding in zip(valid, encodings, strict=True):
        try:
            results[index] = _single_row(encoding, limit, truncate)
        except InputError as exc:
            results[index] = exc
    return [result for result in results if result is not None]


class ClassifyProcessor(TaskProcessor[str, ClassifyParams, list[LabelScore]]):
    task: ClassVar[Task] = "text-classification"

    def default_params(self) -> ClassifyParams:
        return ClassifyParams()

    def prepare(self, item: str, params: ClassifyParams) -> Prepared:
        return encode_single_text(self, item, params.truncate)

    def prepare_each(self, items: Sequence[str], params: ClassifyParams) -> list[Prepared | InputError]:
        return encode_single_texts(self, items, params.truncate)

    def split_outputs(self, outputs: dict[str, np.ndarray], batch: BatchArrays) -> Sequence[np.ndarray]:
        logits = outputs["logits"].astype(np.float32, copy=False)
        return list(logits)

    def activation(self, logits: np.ndarray) -> np.ndarray:
        return activation(logits, self.manifest.problem_type)

    def finish(
        self, prepared: Prepared, row_outputs: Sequence[np.ndarray], params: ClassifyParams
    ) -> list[LabelScore]:
        (logits,) = row_outputs
        scores = logits if params.raw_scores else self.activation(logits)
        order = np.argsort(-scores, kind="stable")
        if params.top_k is not None:
            order = order[: max(params.top_k, 0)]
        return [
            LabelScore(
                label=self.manifest.label_for(int(index)), score=float(scores[index]), index=int(index)
            )
            for index in order
        ]


def class_scores(logits: np.ndarray, problem_type: ProblemType | None) -> np.ndarray:
    """Scores as the runtime reports them: the classifier's own activation."""
    return activation(logits, problem_type)


def classification_metrics(
    reference: Sequence[Outputs], candidate: Sequence[Outputs], problem_type: ProblemType | None
) -> dict[str, float]:
    ref = class_scores(np.concatenate([out["logits"] for out in reference]), problem_type)
    cand = class_scores(np.concatenate([out["logits"] for out in candidate]), problem_type)
    return {
        "argmax_agreement": float(np.mean(ref.argmax(axis=-1) == cand.argmax(axis=-1))),
        "max_probability_gap": float(np.abs(ref - cand).max()),
        "mean_probability_gap": float(np.abs(ref - cand).mean()),
    }


SPEC = TaskSpec(
    name="text-classification",
    processor=ClassifyProcessor,
    hf_auto_class="AutoModelForSequenceClassification",
    optimum_task="text-classification",
    per_sequence_outputs=True,
    outputs=("logits",),
    agreement=lambda reference, candidate, batches, context: classification_metrics(
        reference, candidate, context.problem_type
    ),
    thresholds=lambda marks: {
        "argmax_agreement": marks.min_argmax_agreement,
        "max_probability_gap": marks.max_probability_gap,
    },
    lower_bounds=frozenset({"argmax_agreement"}),
    upper_bounds=frozenset({"max_probability_gap"}),
    architecture_suffix="ForSequenceClassification",
    architecture_hint="...ForSequenceClassification (text-classification)",
    labels=True,
    sample_texts=SAMPLE_TEXTS,
)
