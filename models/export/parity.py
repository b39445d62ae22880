"""Parity and agreement checks between implementations of one model on the sample inputs.

Two kinds of check, both recorded in the manifest as ``ParityCheck``s:

* fp32 parity (PyTorch vs the fp32 ONNX graph): the largest absolute difference of any output,
  which must stay within a tight tolerance: the graph should compute the same function.
* int8 agreement (the fp32 graph vs the int8 graph): int8 changes the numbers by design, so what
  is checked is whether it changes the *answers*: the predicted class, the answer span, the
  direction of the embedding, the order of reranked documents. Each task declares its metrics
  and marks in its ``TaskSpec`` (``distilserve.models.tasks``).

Token-level outputs (hidden states, span logits) are compared on real tokens only: values at
padded positions are never used by the runtime, and fused attention kernels are free to leave
different numbers there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distilserve.models.batching import EncodedRow, assemble_batch
from distilserve.models.bundle import ParityCheck, ProblemType, Task
from distilserve.models.export.samples import SampleSet, batch_slices
from distilserve.models.packing import run_padded_feed
from distilserve.models.session import OnnxSession, SessionOptions
from distilserve.models.tasks import TASK_SPECS, task_spec
from distilserve.models.tasks.base import AgreementContext, Outputs, SampleBatch
from distilserve.models.tasks.classify import class_scores, classification_metrics
from distilserve.models.tasks.embed import embedding_metrics, pooled_embeddings
from distilserve.models.tasks.qa import MAX_ANSWER_TOKENS, best_span, qa_metrics
from distilserve.models.tokenization import ThreadSafeTokenizer, TruncationConfig

# Each task's agreement metrics live with the task (its ``TaskSpec``); they are named here too.
__all__ = [
    "MAX_ANSWER_TOKENS",
    "Outputs",
    "SampleBatch",
    "Thresholds",
    "agreement_metrics",
    "best_span",
    "class_scores",
    "classification_metrics",
    "embedding_metrics",
    "make_check",
    "pooled_embeddings",
    "qa_metrics",
]

# Direction of every thresholded metric: a lower bound (the metric must be at least the
# threshold) or an upper bound (at most the threshold). fp32 parity's own, then each task's.
LOWER_BOUNDS = frozenset[str]().union(*(spec.lower_bounds for spec in TASK_SPECS.values()))
UPPER_BOUNDS = frozenset({"max_abs_diff"}).union(*(spec.upper_bounds for spec in TASK_SPECS.values()))


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Pass marks of the export's checks (see ``ParityCheck.thresholds`` in the manifest).

    The int8 marks leave room for what dynamic quantization does by design: activations are
    quantized with one scale per batch, so a short text padded into a batch of long ones moves
    more than it would alone. all-MiniLM-L6-v2 (per-channel) scores a mean cosine of 0.990 and
    a minimum of 0.956 on the built-in samples (the minimum is "ok" batched with long texts;
    0.970 alone); per-tensor weights fall below the mean mark, which is the point of it.
    Classification allows 2 flipped labels in the 24 built-in samples, QA 1 moved span in 8.
    """

    fp32_max_abs_diff: float = 1e-4
    min_argmax_agreement: float = 0.9
    max_probability_gap: float = 0.15
    min_span_agreement: float = 0.85
    min_mean_cosine: float = 0.98
    min_cosine: float = 0.9

    def for_task(self, task: Task) -> dict[str, float]:
        """The marks ``task``'s agreement metrics are held to (its ``TaskSpec.thresholds``)."""
        return task_spec(task).thresholds(self)


def encode_samples(tokenizer: ThreadSafeTokenizer, samples: SampleSet, max_length: int) -> list[SampleBatch]:
    """Tokenize the samples exactly as the runtime will (same tokenizer file, same padding)."""
    truncation = TruncationConfig(max_length=max_length)
    if samples.pairs:
        encodings = [
            tokenizer.encode(question, context, truncation=truncation) for question, context in samples.pairs
        ]
    else:
        encodings = [tokenizer.encode(text, truncation=truncation) for text in samples.texts]
    batches = []
    for part in batch_slices(len(encodings)):
        chosen = encodings[part]
        rows = [EncodedRow(input_ids=encoding.ids, token_type_ids=encoding.type_ids) for encoding in chosen]
        arrays = assemble_batch(rows, tokenizer.pad_token_id)
        context_mask = None
        if samples.pairs:
            context_mask = np.zeros(arrays.feed["input_ids"].shape, dtype=bool)
            for index, encoding in enumerate(chosen):
                context_mask[index, : len(encoding.ids)] = [
                    sequence == 1 for sequence in encoding.sequence_ids
                ]
        batches.append(SampleBatch(feed=arrays.feed, context_mask=context_mask))
    return batches


def run_onnx(model_path: Path, batches: Sequence[SampleBatch], output_names: Sequence[str]) -> list[Outputs]:
    """Outputs of an ONNX graph on every batch, with the session settings the server uses.

    A packed graph (``export --graph-form packed``) gets each batch's sequences packed and answers in the
    padded layout, so every check compares it with the padded reference as it is."""
    session = OnnxSession(model_path, SessionOptions(allow_spinning=False))
    return [
        run_padded_feed(session.run, session.input_names, batch.feed, list(output_names)) for batch in batches
    ]


def run_torch(
    model: Any, batches: Sequence[SampleBatch], input_names: Sequence[str], output_names: Sequence[str]
) -> list[Outputs]:
    """Outputs of the PyTorch model on every batch (fp32, inference mode).

    The reference is the padded model: a packed graph's extra inputs (position ids, segment
    starts) are made by packing and are not in a sample batch's feed, so they are not passed."""
    import torch

    results = []
    with torch.inference_mode():
        for batch in batches:
            inputs = {name: torch.from_numpy(batch.feed[name]) for name in input_names if name in batch.feed}
            output = model(**inputs)
            results.append({name: output[name].detach().float().numpy() for name in output_names})
    return results


def _real_values(values: np.ndarray, batch: SampleBatch) -> np.ndarray:
    """The values at real (unpadded) positions for token-level outputs; all values otherwise."""
    mask = batch.attention_mask
    if values.ndim >= 2 and values.shape[:2] == mask.shape:
        real: np.ndarray = values[mask.astype(bool)]
        return real
    return values


def max_abs_diff(
    reference: Sequence[Outputs], candidate: Sequence[Outputs], batches: Sequence[SampleBatch]
) -> float:
    worst = 0.0
    for ref, cand, batch in zip(reference, candidate, batches, strict=True):
        for name, values in ref.items():
            diff = np.abs(_real_values(values, batch) - _real_values(cand[name], batch))
            worst = max(worst, float(diff.max(initial=0.0)))
    return worst


def agreement_metrics(
    task: Task,
    reference: Sequence[Outputs],
    candidate: Sequence[Outputs],
    batches: Sequence[SampleBatch],
    *,
    problem_type: ProblemType | None = None,
    pooling: str = "mean",
) -> dict[str, float]:
    """The task's agreement metrics of ``candidate`` against ``reference`` (its ``TaskSpec.agreement``)."""
    context = AgreementContext(problem_type=problem_type, pooling="cls" if pooling == "cls" else "mean")
    return task_spec(task).agreement(reference, candidate, batches, context)


def make_check(
    reference: str, candidate: str, samples: int, metrics: dict[str, float], thresholds: dict[str, float]
) -> ParityCheck:
    """A ``ParityCheck``, passed when every thresholded metric is on the right side of its mark."""
    passed = all(_within(name, metrics[name], limit) for name, limit in thresholds.items())
    return ParityCheck(
        reference=reference,
        candidate=candidate,
        samples=samples,
        metrics=metrics,
        thresholds=thresholds,
        passed=passed,
    )


def _within(name: str, value: float, limit: float) -> bool:
    if name in LOWER_BOUNDS:
        return value >= limit
    if name in UPPER_BOUNDS:
        return value <= limit
    raise ValueError(f"metric {name!r} has no threshold direction")


def describe(check: ParityCheck) -> str:
    """One line: each thresholded metric, its mark, and whether it passed."""
    parts = []
    for name, limit in check.thresholds.items():
        value = check.metrics[name]
        sign = ">=" if name in LOWER_BOUNDS else "<="
        verdict = "ok" if _within(name, value, limit) else "FAILED"
        parts.append(f"{name} {value:.4g} (needs {sign} {limit:g}: {verdict})")
    return f"{check.candidate} vs {check.reference} on {check.samples} samples: " + ", ".join(parts)
