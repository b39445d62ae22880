"""Reranking with a cross-encoder: one ``[CLS] query [SEP] document [SEP]`` row per pair, one logit.

A cross-encoder reads the query and the document together and scores their relevance with a
single logit (``AutoModelForSequenceClassification`` with ``num_labels=1``, as
sentence-transformers' ``CrossEncoder`` trains it). The score is ``sigmoid(logit)``, or the
logit itself with ``raw_scores``; sorting, ``top_n`` and the document texts are the HTTP side's.

A pair longer than the model's limit loses tokens of the document only (``only_second``): the
query is what the ranking is about, so it is kept whole, and a query that leaves no room for
any document token is refused. ``truncation_direction`` says which end of the document goes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tokenizers import Encoding

from distilserve.models.batching import BatchArrays, EncodedRow
from distilserve.models.bundle import Task
from distilserve.models.errors import InputError, InputTooLongError
from distilserve.models.tasks.base import WARMUP_TEXT, Outputs, Prepared, TaskProcessor, TaskSpec
from distilserve.models.tasks.classify import class_scores, sigmoid
from distilserve.models.tasks.samples import SAMPLE_RERANK_PAIRS
from distilserve.models.tokenization import TruncationConfig, TruncationDirection

# The tokenizer's sequence id of the document in a (query, document) pair.
DOCUMENT_SEQUENCE = 1


@dataclass(frozen=True, slots=True)
class RerankPair:
    """One (query, document) pair: one model row."""

    query: str
    document: str


@dataclass(frozen=True, slots=True)
class RerankParams:
    """``truncate`` False refuses a pair longer than the model's limit instead of cutting the
    document; ``raw_scores`` returns the logit instead of its sigmoid."""

    truncate: bool = True
    truncation_direction: TruncationDirection = "right"
    raw_scores: bool = False


def _require_text(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{param} must be a string, got {type(value).__name__}", param=param)
    if not value.strip():
        raise InputError(f"{param} is empty", param=param)
    return value


class RerankProcessor(TaskProcessor[RerankPair, RerankParams, float]):
    task: ClassVar[Task] = "rerank"

    def default_params(self) -> RerankParams:
        return RerankParams()

    def warmup_item(self) -> RerankPair:
        return RerankPair(query="What is this?", document=WARMUP_TEXT)

    def item_chars(self, item: RerankPair) -> int:
        return len(item.query) + len(item.document) if isinstance(item, RerankPair) else sys.maxsize

    def _truncation(self, params: RerankParams) -> TruncationConfig:
        if not params.truncate:
            return TruncationConfig()
        return TruncationConfig(
            max_length=self.manifest.max_length,
            strategy="only_second",
            direction=params.truncation_direction,
        )

    def _query_room(self, query: str) -> int:
        """Tokens the query takes in a pair (its special tokens included); refused when no
        document token would fit beside it."""
        probe = self.tokenizer.encode(query, "")
        limit = self.manifest.max_length
        if len(probe.ids) >= limit:
            raise InputError(
                f"query takes {len(probe.ids)} of the model's {limit} tokens (special tokens included), "
                "leaving no room for a document; shorten the query",
                param="query",
            )
        return len(probe.ids)

    def _row(self, encoding: Encoding, params: RerankParams) -> Prepared:
        limit = self.manifest.max_length
        if len(encoding.ids) > limit:
            # Only without truncation: with it, the tokenizer cut the document to fit.
            raise InputTooLongError(len(encoding.ids), limit)
        row = EncodedRow(input_ids=encoding.ids, token_type_ids=encoding.type_ids)
        return Prepared(rows=[row], context=None, num_tokens=len(row))

    def _check(self, item: object) -> RerankPair:
        if not isinstance(item, RerankPair):
            raise InputError(f"expected a query and a document, got {type(item).__name__}")
        _require_text(item.query, "query")
        _require_text(item.document, "document")
        return item

    def prepare(self, item: RerankPair, params: RerankParams) -> Prepared:
        pair = self._check(item)
        if params.truncate:
            self._query_room(pair.query)
        encoding = self.tokenizer.encode(pair.query, pair.document, truncation=self._truncation(params))
        return self._row(encoding, params)

    def prepare_each(self, items: Sequence[RerankPair], params: RerankParams) -> list[Prepared | InputError]:
        """Every valid pair in one ``encode_batch``; a query is measured once however many
        documents it comes with."""
        results: list[Prepared | InputError | None] = [None] * len(items)
        valid: list[int] = []
        rooms: dict[str, InputError | None] = {}
        for index, item in enumerate(items):
            try:
                pair = self._check(item)
                if params.truncate:
                    if pair.query not in rooms:
                        try:
                            self._query_room(pair.query)
                            rooms[pair.query] = None
                        except InputError as exc:
                            rooms[pair.query] = exc
                    error = rooms[pair.query]
                    if error is not None:
                        raise InputError(str(error), param=error.param)
                valid.append(index)
            except InputError as exc:
                results[index] = exc
        encodings = self.tokenizer.encode_batch(
            [(items[index].query, items[index].document) for index in valid],
            truncation=self._truncation(params),
        )
        for index, encoding in zip(valid, encodings, strict=True):
            try:
                results[index] = self._row(encoding, params)
            except InputError as exc:
                results[index] = exc
        return [result for result in results if result is not None]

    def split_outputs(self, outputs: dict[str, np.ndarray], batch: BatchArrays) -> Sequence[np.ndarray]:
        logits = outputs["logits"].astype(np.float32, copy=False)
        if logits.ndim != 2 or logits.shape[1] != 1:
            raise ValueError(f"a cross-encoder has one logit per row; the graph gave shape {logits.shape}")
        return list(logits)

    def finish(self, prepared: Prepared, row_outputs: Sequence[np.ndarray], params: RerankParams) -> float:
        (logits,) = row_outputs
        # The classifier's float32 sigmoid, so a one-logit model scores the same on both routes.
        return float(logits[0]) if params.raw_scores else float(sigmoid(logits)[0])


# Sample pairs whose fp32 logits are closer than this are ties for the order check: int8 moves
# logits by a few hundredths, so their order is noise, not a ranking (a trained reranker puts
# many unrelated documents within this of each other; what matters is the relevant one above them).
ORDER_MARGIN = 0.1


def relevance_scores(outputs: Sequence[Outputs]) -> np.ndarray:
    """Every sample's relevance score, as the runtime reports it by default (the sigmoid)."""
    return class_scores(relevance_logits(outputs)[:, None], None)[:, 0]


def relevance_logits(outputs: Sequence[Outputs]) -> np.ndarray:
    return np.concatenate([out["logits"] for out in outputs])[:, 0].astype(np.float64)


def ranking_metrics(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> dict[str, float]:
    """int8 against fp32 for a reranker: what matters is the order of the documents.

    ``order_agreement`` is the share of sample pairs that int8 orders as fp32 does, among the
    ``ordered_pairs`` whose fp32 logits differ by ``ORDER_MARGIN`` or more (1.0 when there are
    none: every sample scores the same, so there is no order to keep); ``max_probability_gap``
    is the largest change of a score.
    """
    ref_logits, cand_logits = relevance_logits(reference), relevance_logits(candidate)
    ref, cand = relevance_scores(reference), relevance_scores(candidate)
    upper = np.triu_indices(len(ref_logits), k=1)
    ref_diff = (ref_logits[:, None] - ref_logits[None, :])[upper]
    cand_diff = (cand_logits[:, None] - cand_logits[None, :])[upper]
    ordered = np.abs(ref_diff) >= ORDER_MARGIN
    agree = np.sign(ref_diff[ordered]) == np.sign(cand_diff[ordered])
    return {
        "order_agreement": float(agree.mean()) if agree.size else 1.0,
        "ordered_pairs": float(agree.size),
        "max_probability_gap": float(np.abs(ref - cand).max(initial=0.0)),
        "mean_probability_gap": float(np.abs(ref - cand).mean()) if ref.size else 0.0,
    }


def _one_logit(config: Any) -> str | None:
    labels = int(getattr(config, "num_labels", 0) or 0)
    if labels != 1:
        return (
            f"a rerank checkpoint is a cross-encoder with one output (num_labels=1); this one has "
            f"{labels}. Export it as text-classification, or train a one-logit cross-encoder"
        )
    return None


SPEC = TaskSpec(
    name="rerank",
    processor=RerankProcessor,
    hf_auto_class="AutoModelForSequenceClassification",
    optimum_task="text-classification",
    per_sequence_outputs=True,
    # A query with a passage is as long as a reader's window (SQuAD passages: 150 tokens and
    # more), where packing measured slower than padding (see question-answering's spec).
    packed_by_default=False,
    outputs=("logits",),
    agreement=lambda reference, candidate, batches, context: ranking_metrics(reference, candidate),
    # The classifier's marks: a share of agreeing decisions (the order of the sample pairs), and
    # the largest score gap.
    thresholds=lambda marks: {
        "order_agreement": marks.min_argmax_agreement,
        "max_probability_gap": marks.max_probability_gap,
    },
    lower_bounds=frozenset({"order_agreement"}),
    upper_bounds=frozenset({"max_probability_gap"}),
    architecture_hint="one-logit ...ForSequenceClassification cross-encoders (rerank, with --task rerank)",
    check_config=_one_logit,
    sample_pairs=SAMPLE_RERANK_PAIRS,
    pair_fields=("query", "document"),
)
