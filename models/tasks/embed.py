"""Sentence embeddings: mean or CLS pooling over the attention mask, optional L2 normalization."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from distilserve.models.batching import BatchArrays
from distilserve.models.bundle import Task
from distilserve.models.errors import InputError
from distilserve.models.tasks.base import Outputs, Prepared, SampleBatch, TaskProcessor, TaskSpec
from distilserve.models.tasks.classify import encode_single_text, encode_single_texts
from distilserve.models.tasks.samples import SAMPLE_TEXTS


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

    def prepare_each(self, items: Sequence[str], params: EmbedParams) -> list[Prepared | InputError]:
        return encode_single_texts(self, items, params.truncate)

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


def pooled_embeddings(outputs: Sequence[Outputs], batches: Sequence[SampleBatch], pooling: str) -> np.ndarray:
    return np.concatenate(
        [
            pool(out["last_hidden_state"].astype(np.float32), batch.attention_mask, pooling)
            for out, batch in zip(outputs, batches, strict=True)
        ]
    )


def embedding_metrics(
    reference: Sequence[Outputs], candidate: Sequence[Outputs], batches: Sequence[SampleBatch], pooling: str
) -> dict[str, float]:
    ref = pooled_embeddings(reference, batches, pooling)
    cand = pooled_embeddings(candidate, batches, pooling)
    # Cosine does not depend on the bundle's L2 normalization, so it is left out here.
    norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1)
    cosine = (ref * cand).sum(axis=-1) / np.clip(norms, 1e-12, None)
    return {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min())}


SPEC = TaskSpec(
    name="feature-extraction",
    processor=EmbedProcessor,
    hf_auto_class="AutoModel",
    optimum_task="feature-extraction",
    outputs=("last_hidden_state",),
    agreement=lambda reference, candidate, batches, context: embedding_metrics(
        reference, candidate, batches, context.pooling
    ),
    thresholds=lambda marks: {"mean_cosine": marks.min_mean_cosine, "min_cosine": marks.min_cosine},
    lower_bounds=frozenset({"mean_cosine", "min_cosine"}),
    architecture_hint="base encoders (feature-extraction)",
    base_encoder=True,
    pooling=True,
    sample_texts=SAMPLE_TEXTS,
)
