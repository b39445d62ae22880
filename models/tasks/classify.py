"""Sequence classification: softmax (or sigmoid for multi-label), top_k, raw scores.

Scores match the transformers ``text-classification`` pipeline: sigmoid when the model is
multi-label or has a single output, softmax otherwise, no activation for regression.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from distilserve.models.batching import BatchArrays, EncodedRow
from distilserve.models.bundle import ProblemType, Task
from distilserve.models.errors import InputError, InputTooLongError
from distilserve.models.tasks.base import Prepared, TaskProcessor
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


def encode_single_text(processor: TaskProcessor[str, Any, Any], text: str, truncate: bool) -> Prepared:
    """Tokenize one text for a one-row task, enforcing the bundle's length limit."""
    if not isinstance(text, str):
        raise InputError(f"expected a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError("input text is empty")
    limit = processor.manifest.max_length
    if truncate:
        encoding = processor.tokenizer.encode(text, truncation=TruncationConfig(max_length=limit))
    else:
        encoding = processor.tokenizer.encode(text)
        if len(encoding.ids) > limit:
            raise InputTooLongError(len(encoding.ids), limit)
    row = EncodedRow(input_ids=encoding.ids, token_type_ids=encoding.type_ids)
    return Prepared(rows=[row], context=None, num_tokens=len(row))


class ClassifyProcessor(TaskProcessor[str, ClassifyParams, list[LabelScore]]):
    task: ClassVar[Task] = "text-classification"

    def default_params(self) -> ClassifyParams:
        return ClassifyParams()

    def prepare(self, item: str, params: ClassifyParams) -> Prepared:
        return encode_single_text(self, item, params.truncate)

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
