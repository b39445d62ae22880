"""Sentence embeddings: mean or CLS pooling over the attention mask, optional L2 normalization."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from distilserve.models.batching import BatchArrays
from distilserve.models.bundle import Task
from distilserve.models.tasks.base import Prepared, TaskProcessor
from distilserve.models.tasks.classify import encode_single_text


@dataclass(frozen=True, slots=True)
class EmbedParams:
    """``normalize`` None uses the bundle's setting (sentence-transformers' Normalize module)."""

    normalize: bool | None = None
    truncate: bool = True


def pool(hidden: np.ndarray, attention_mask: np.ndarray, method: str) -> np.ndarray:
    """Pool token vectors ``(rows, tokens, hidden)`` into ``(rows, hidden)``, ignoring padding."""
    if method == "cls":
        return hidden[:, 0, :]
    mask = attention_mask[:, :, None].astype(hidden.dtype)
    summed = (hidden * mask).sum(axis=1)
    counts = np.clip(mask.sum(axis=1), 1e-9, None)
    return summed / counts  # type: ignore[no-any-return]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)  # type: ignore[no-any-return]


class EmbedProcessor(TaskProcessor[str, EmbedParams, np.ndarray]):
    task: ClassVar[Task] = "feature-extraction"

    def default_params(self) -> EmbedParams:
        return EmbedParams()

    def prepare(self, item: str, params: EmbedParams) -> Prepared:
        return encode_single_text(self, item, params.truncate)

    def split_outputs(self, outputs: dict[str, np.ndarray], batch: BatchArrays) -> Sequence[np.ndarray]:
        hidden = outputs["last_hidden_state"].astype(np.float32, copy=False)
        pooled = pool(hidden, batch.attention_mask, self.manifest.pooling or "mean")
        return list(pooled)

    def finish(
        self, prepared: Prepared, row_outputs: Sequence[np.ndarray], params: EmbedParams
    ) -> np.ndarray:
        (vector,) = row_outputs
        normalize = self.manifest.normalize if params.normalize is None else params.normalize
        return l2_normalize(vector) if normalize else vector
