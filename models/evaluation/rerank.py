"""``distilserve eval --dataset squad-rerank``: retrieve, then rerank, on SQuAD v1.1 dev.

The pool is every distinct paragraph of the dev file (2,067), whatever article a question comes
from. For each question the embedding model (``--retriever``: all-MiniLM-L6-v2 by default, the
shipped embedding model's weights) retrieves the 20 paragraphs of highest cosine; each reranker
then orders those 20 by its score of (question, paragraph). The question's own paragraph is the
one relevant passage. Reported per model: recall@1, recall@5 and MRR@10 (x100), and the pairs
it scored per second.

The default is the whole dev set (10,570 questions). ``--limit N`` scores a seeded random sample
of N questions (``--sample-seed``), never the first N, which would all come from the first
articles.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from distilserve.models.batching import OFFLINE_BATCH_LIMITS, plan_batches
from distilserve.models.evaluation.data import DataError, read_squad
from distilserve.models.evaluation.metrics import mrr_at_k, recall_at_k

CANDIDATES = 20


@dataclass(frozen=True)
class RetrievalSet:
    """Dev questions and the pool of distinct paragraphs; ``positives[i]`` is question i's."""

    paragraphs: list[str]
    questions: list[str]
    positives: list[int]

    def __len__(self) -> int:
        return len(self.questions)


def read_retrieval_set(path: Path, limit: int | None = None, seed: int = 0) -> RetrievalSet:
    """Every question of a SQuAD file (or a seeded sample of ``limit``) and every paragraph."""
    examples = read_squad(path)
    index_of: dict[str, int] = {}
    for example in examples:
        index_of.setdefault(example.context, len(index_of))
    chosen = list(range(len(examples)))
    if limit is not None and limit < len(examples):
        chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
    if not examples:
        raise DataError(path, "file holds no questions")
    return RetrievalSet(
        paragraphs=list(index_of),
        questions=[examples[i].question.strip() for i in chosen],
        positives=[index_of[examples[i].context] for i in chosen],
    )


def top_k_by_cosine(queries: np.ndarray, passages: np.ndarray, k: int) -> np.ndarray:
    """``(queries, k)`` passage indices of highest cosine, best first (ties: lower index first)."""

    def unit(rows: np.ndarray) -> np.ndarray:
        norms: np.ndarray = np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        return np.asarray(rows / norms)

    similarity = unit(queries) @ unit(passages).T
    k = min(k, passages.shape[0])
    # A stable sort of the negated scores keeps equal scores in index order.
    best: np.ndarray = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return best


def positive_ranks(
    rankings: Sequence[Sequence[int]] | np.ndarray, positives: Sequence[int]
) -> list[int | None]:
    """The 1-based rank of each question's paragraph in its ranking, or None when absent."""
    ranks: list[int | None] = []
    for ranking, positive in zip(rankings, positives, strict=True):
        order = [int(index) for index in ranking]
        ranks.append(order.index(positive) + 1 if positive in order else None)
    return ranks


def ranking_metrics(ranks: Sequence[int | None]) -> dict[str, float]:
    """recall@1, recall@5 and MRR@10, x100."""
    return {
        "recall@1": 100.0 * recall_at_k(ranks, 1),
        "recall@5": 100.0 * recall_at_k(ranks, 5),
        "mrr@10": 100.0 * mrr_at_k(ranks, 10),
    }


def rerank(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each row of candidates reordered by its scores, highest first (ties keep retrieval order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


class PairScorer(Protocol):
    """A reranker: one relevance score (a logit; higher is more relevant) per (query, passage)."""

    name: str
    kind: str

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...


class BundlePairScorer:
    """A distilserve ``rerank`` bundle through ``ModelRuntime.predict``, raw logits."""

    def __init__(
        self, bundle: Path, name: str, *, batch_size: int = OFFLINE_BATCH_LIMITS.max_batch_size
    ) -> None:
        from distilserve.models.runtime import load_model
        from distilserve.models.session import SessionOptions

        self.name = name
        self.runtime = load_model(bundle, SessionOptions())
        if self.runtime.manifest.task != "rerank":
            raise DataError(bundle, f"bundle serves {self.runtime.manifest.task}; squad-rerank needs rerank")
        mode = self.runtime.manifest.quantization.mode
        self.kind = f"ONNX {'fp32' if mode == 'none' else mode} bundle"
        self.batch_size = batch_size

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        from distilserve.models.tasks.rerank import RerankPair, RerankParams

        items = [RerankPair(query=query, document=passage) for query, passage in pairs]
        scores = self.runtime.predict(items, RerankParams(raw_scores=True), max_batch_size=self.batch_size)
        return np.asarray(scores, dtype=np.float32)


class TorchPairScorer:
    """A one-logit cross-encoder checkpoint in PyTorch fp32, passages truncated (``only_second``)."""

    def __init__(
        self,
        source: str,
        name: str,
        *,
        batch_size: int = OFFLINE_BATCH_LIMITS.max_batch_size,
        max_length: int = 256,
    ) -> None:
        import torch
        import transformers

        self.torch = torch
        self.name = name
        self.kind = "PyTorch fp32"
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(source).eval()
        if self.model.config.num_labels != 1:
            raise DataError(Path(source), "not a one-logit cross-encoder (num_labels != 1)")
        self.batch_size = batch_size
        self.max_length = max_length

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        encoded = self.tokenizer(
            [query for query, _ in pairs],
            [passage for _, passage in pairs],
            truncation="only_second",
            max_length=self.max_length,
        )
        scores = np.zeros(len(pairs), dtype=np.float32)
        limits = replace(OFFLINE_BATCH_LIMITS, max_batch_size=self.batch_size)
        pad = self.tokenizer.pad_token_id or 0
        with self.torch.inference_mode():
            for rows in plan_batches([len(ids) for ids in encoded["input_ids"]], limits):
                width = max(len(encoded["input_ids"][row]) for row in rows)
                inputs: dict[str, Any] = {}
                for name, fill in (("input_ids", pad), ("token_type_ids", 0), ("attention_mask", 0)):
                    if name in encoded:
                        inputs[name] = self.torch.tensor(
                            [encoded[name][row] + [fill] * (width - len(encoded[name][row])) for row in rows]
                        )
                logits = self.model(**inputs).logits[:, 0].float().numpy()
                scores[rows] = logits
        return scores


def pair_scorer(path: str, name: str, *, batch_size: int, max_length: int) -> PairScorer:
    """A bundle folder (with ``distilserve.json``) or a Hugging Face checkpoint folder."""
    from distilserve.models.bundle import MANIFEST_NAME

    folder = Path(path)
    if (folder / MANIFEST_NAME).is_file():
        return BundlePairScorer(folder, name, batch_size=batch_size)
    if (folder / "config.json").is_file():
        return TorchPairScorer(path, name, batch_size=batch_size, max_length=max_length)
    raise DataError(folder, "neither a distilserve bundle nor a Hugging Face checkpoint folder")


@dataclass
class RerankRun:
    """One model's figures: its metrics and its pairs per second."""

    metrics: dict[str, float]
    seconds: float
    pairs: int


def score_reranker(
    scorer: PairScorer, data: RetrievalSet, candidates: np.ndarray
) -> tuple[RerankRun, np.ndarray]:
    """Rerank every question's candidates with ``scorer``; its metrics and the new order."""
    pairs = [
        (question, data.paragraphs[int(index)])
        for question, row in zip(data.questions, candidates, strict=True)
        for index in row
    ]
    started = time.perf_counter()
    scores = scorer.score_pairs(pairs).reshape(candidates.shape)
    seconds = time.perf_counter() - started
    order = rerank(candidates, scores)
    metrics = ranking_metrics(positive_ranks(order, data.positives))
    return RerankRun(metrics, seconds, len(pairs)), order
