"""Extractive question answering: windows over long contexts, span decoding, character offsets.

The answers, scores and offsets are those of the transformers ``question-answering`` pipeline
(4.57, fast tokenizer, question first), reproduced with numpy alone:

* ``prepare`` tokenizes (question, context) with ``only_second`` truncation, ``max_seq_len``
  and ``doc_stride``, and makes one row per window (the tokenizer's overflowing encodings).
* ``finish`` decodes each window like ``select_starts_ends`` / ``decode_spans`` (softmax over
  the candidate tokens, products of start and end probabilities, top candidates), maps tokens to
  characters like ``get_indices`` (whole words when ``align_to_words``), merges answers with
  the same text case-insensitively across windows by adding their scores, and orders them.

The pipeline's quirks are kept on purpose, because parity is the contract: when a window has
fewer good spans than the number of candidates it considers, zero-score spans fill the list and
decode to an empty answer, and the empty answer of ``handle_impossible_answer`` is added
separately from those. Where the pipeline would crash (the tokenizer panics when the stride
does not fit beside the question), ``prepare`` raises ``InputError`` instead.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from tokenizers import Encoding

from distilserve.models.batching import BatchArrays, EncodedRow
from distilserve.models.bundle import Task
from distilserve.models.errors import InputError
from distilserve.models.tasks.base import (
    WARMUP_TEXT,
    Outputs,
    Prepared,
    SampleBatch,
    TaskProcessor,
    TaskSpec,
)
from distilserve.models.tasks.samples import SAMPLE_QA_PAIRS
from distilserve.models.tokenization import TruncationConfig

# The pipeline's defaults: windows of at most 384 tokens, overlapping by half a window, at most 128.
PIPELINE_MAX_SEQ_LEN = 384
PIPELINE_MAX_DOC_STRIDE = 128
# The pipeline fills masked logits with this before the softmax (not -inf: exp gives exact zeros).
MASKED_LOGIT = -10000.0
# The pipeline's initial "no answer" score: larger than any probability, replaced by the first window's.
NO_NULL_SCORE = 1000000.0
# The tokenizer's sequence id of the context in a (question, context) pair; -1 marks special tokens.
CONTEXT_SEQUENCE = 1
NO_ID = -1
# The graph outputs, as optimum's ONNX export names them.
START_LOGITS, END_LOGITS = "start_logits", "end_logits"
# Longest answer span the export's agreement check considers when picking the best span, in
# tokens (the transformers question-answering pipeline's default ``max_answer_len``).
MAX_ANSWER_TOKENS = 30


@dataclass(frozen=True, slots=True)
class QAInput:
    question: str
    context: str


@dataclass(frozen=True, slots=True)
class QAParams:
    """The pipeline's parameters, with its defaults.

    ``max_seq_len`` None is ``min(model max length, 384)`` and ``doc_stride`` None is
    ``min(max_seq_len // 2, 128)``, as in the pipeline. ``max_question_len`` is a limit: a longer
    question is rejected (the pipeline's fast-tokenizer path never truncates the question, so
    truncating it here would change the answers; rejecting keeps every answer identical).
    """

    top_k: int = 1
    doc_stride: int | None = None
    max_answer_len: int = 15
    max_question_len: int = 64
    max_seq_len: int | None = None
    handle_impossible_answer: bool = False
    align_to_words: bool = True


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer: its text, score, and ``context[start:end]`` character offsets."""

    answer: str
    score: float
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class QAWindow:
    """What span decoding needs of one window (one model row), all arrays of the row's length."""

    offsets: np.ndarray  # (tokens, 2) character offsets; context tokens index into the context
    sequence_ids: np.ndarray  # (tokens,) 0 question, 1 context, -1 special token
    word_ids: np.ndarray  # (tokens,) word index within the token's sequence, -1 for none
    candidates: np.ndarray  # (tokens,) bool: may start or end an answer (the pipeline's 1 - p_mask)

    @classmethod
    def from_encoding(cls, encoding: Encoding, cls_token_id: int | None) -> QAWindow:
        sequence_ids = np.array([NO_ID if s is None else s for s in encoding.sequence_ids], dtype=np.int64)
        word_ids = np.array([NO_ID if w is None else w for w in encoding.word_ids], dtype=np.int64)
        offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        candidates = sequence_ids == CONTEXT_SEQUENCE
        if cls_token_id is not None:
            # The pipeline keeps every CLS token unmasked: some models point at it for "no answer".
            candidates |= np.asarray(encoding.ids, dtype=np.int64) == cls_token_id
        return cls(offsets=offsets, sequence_ids=sequence_ids, word_ids=word_ids, candidates=candidates)

    def word_to_chars(self, word: int) -> tuple[int, int] | None:
        """``Encoding.word_to_chars(word, sequence_index=1)``, within this window only.

        tokenizers scans the context's tokens while their word is <= ``word`` (no word sorts
        first) and takes the first and last token of that word, so a word cut by the window edge
        maps to the characters of its tokens inside the window.
        """
        in_context = np.flatnonzero(self.sequence_ids == CONTEXT_SEQUENCE)
        words = self.word_ids[in_context]
        beyond = np.flatnonzero(words > word)
        stop = int(beyond[0]) if beyond.size else int(words.size)
        hits = np.flatnonzero(words[:stop] == word)
        if not hits.size:
            return None
        first, last = int(in_context[hits[0]]), int(in_context[hits[-1]])
        return int(self.offsets[first, 0]), int(self.offsets[last, 1])

    def char_span(self, start: int, end: int, align_to_words: bool) -> tuple[int, int]:
        """The pipeline's ``get_indices``: token span to ``context[start:end]`` offsets."""
        if align_to_words:
            # token_to_word: only tokens inside a sequence have a word.
            start_word = int(self.word_ids[start]) if self.sequence_ids[start] != NO_ID else NO_ID
            end_word = int(self.word_ids[end]) if self.sequence_ids[end] != NO_ID else NO_ID
            if start_word != NO_ID and end_word != NO_ID:
                start_chars = self.word_to_chars(start_word)
                end_chars = self.word_to_chars(end_word)
                if start_chars is not None and end_chars is not None:
                    return start_chars[0], end_chars[1]
            # The pipeline falls back to token offsets when either word lookup fails (CLS has no word).
        return int(self.offsets[start, 0]), int(self.offsets[end, 1])


@dataclass(frozen=True, slots=True)
class QAContext:
    """``Prepared.context`` of a QA item: the context text and one ``QAWindow`` per row."""

    context: str
    windows: list[QAWindow]


@dataclass(slots=True)
class _Candidate:
    """A mutable answer while windows are merged (scores of equal texts add up)."""

    answer: str
    score: float
    start: int
    end: int


def _require_int(value: object, param: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{param} must be an integer, got {type(value).__name__}", param=param)
    if value < minimum:
        raise InputError(f"{param} must be >= {minimum} (got {value})", param=param)
    return value


def _require_text(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{param} must be a string, got {type(value).__name__}", param=param)
    if not value.strip():
        raise InputError(f"{param} is empty", param=param)
    return value


def softmax_candidates(logits: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The pipeline's normalisation: non-candidates get -10000, then a float32 softmax.

    Kept with a leading batch axis of 1 and the same operations, so that sums round the same way.
    """
    masked = np.where(~candidates[None, :], np.float32(MASKED_LOGIT), logits[None, :].astype(np.float32))
    exp = np.exp(masked - masked.max(axis=-1, keepdims=True))
    return exp / exp.sum()  # type: ignore[no-any-return]


def decode_spans(
    start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``top_k`` (start, end) token spans of one window and their scores.

    Same candidate matrix and the same numpy selection calls as the pipeline's ``decode_spans``:
    ties (the many exact zeros) are broken by ``argpartition``/``argsort`` internals, so any other
    selection would pick different zero-score spans.
    """
    # One float32 product per pair, bit for bit the pipeline's matmul of (tokens, 1) by (1, tokens).
    outer = np.multiply.outer(start, end)
    # Keep spans with start <= end < start + max_answer_len.
    spans = np.tril(np.triu(outer), max_answer_len - 1)
    flat = spans.flatten()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) <= top_k:
        # The pipeline has ``<`` here and crashes in argpartition when the sizes are equal.
        order = np.argsort(-flat)
    else:
        best = np.argpartition(-flat, top_k)[0:top_k]
        order = best[np.argsort(-flat[best])]
    starts, ends = np.unravel_index(order, spans.shape)
    # The pipeline tests membership in ``mask.nonzero()`` of a (1, tokens) mask, whose row indices
    # are all 0: token 0 counts as allowed whenever any token is.
    desired = allowed.copy()
    if desired.any():
        desired[0] = True
    keep = desired[starts] & desired[ends]
    starts, ends = starts[keep], ends[keep]
    return starts, ends, spans[starts, ends]


class QuestionAnsweringProcessor(TaskProcessor[QAInput, QAParams, list[Answer]]):
    task: ClassVar[Task] = "question-answering"

    def default_params(self) -> QAParams:
        return QAParams()

    def warmup_item(self) -> QAInput:
        return QAInput(question="What is this?", context=WARMUP_TEXT)

    def item_chars(self, item: QAInput) -> int:
        return len(item.question) + len(item.context) if isinstance(item, QAInput) else sys.maxsize

    def window_lengths(self, params: QAParams) -> tuple[int, int]:
        """``(max_seq_len, doc_stride)`` with the pipeline's defaults, capped by the bundle."""
        # The bundle's max_length stands in for the tokenizer's model_max_length.
        limit = self.manifest.max_length
        if params.max_seq_len is None:
            max_seq_len = min(limit, PIPELINE_MAX_SEQ_LEN)
        else:
            max_seq_len = _require_int(params.max_seq_len, "max_seq_len", 2)
            if max_seq_len > limit:
                raise InputError(
                    f"max_seq_len {max_seq_len} is larger than the model's limit of {limit} tokens",
                    param="max_seq_len",
                )
        if params.doc_stride is None:
            doc_stride = min(max_seq_len // 2, PIPELINE_MAX_DOC_STRIDE)
        else:
            doc_stride = _require_int(params.doc_stride, "doc_stride", 0)
            if doc_stride > max_seq_len:
                raise InputError(
                    f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})",
                    param="doc_stride",
                )
        return max_seq_len, doc_stride

    def prepare(self, item: QAInput, params: QAParams) -> Prepared:
        if not isinstance(item, QAInput):
            raise InputError(f"expected a question and a context, got {type(item).__name__}")
        question = _require_text(item.question, "question")
        context = _require_text(item.context, "context")
        # Checked here, before any model work, although only finish uses them.
        _require_int(params.top_k, "top_k", 1)
        _require_int(params.max_answer_len, "max_answer_len", 1)
        max_question_len = _require_int(params.max_question_len, "max_question_len", 1)
        max_seq_len, doc_stride = self.window_lengths(params)

        # The question with the pair's special tokens and no context: what every window repeats.
        probe = self.tokenizer.encode(question, "")
        question_tokens = sum(1 for sequence in probe.sequence_ids if sequence == 0)
        if question_tokens > max_question_len:
            raise InputError(
                f"question has {question_tokens} tokens, more than max_question_len ({max_question_len})",
                param="question",
            )
        room = max_seq_len - len(probe.ids)
        if room >= 1 and doc_stride < room:
            truncation = TruncationConfig(max_length=max_seq_len, stride=doc_stride, strategy="only_second")
            encoding = self.tokenizer.encode(question, context, truncation=truncation)
        else:
            # Windows cannot be made: tokenizers raises (no room) or panics (stride >= room), so the
            # context is only accepted when it fits in one row and needs no window at all.
            encoding = self.tokenizer.encode(question, context)
            if len(encoding.ids) > max_seq_len:
                if room < 1:
                    raise InputError(
                        f"question takes {len(probe.ids)} of the {max_seq_len} tokens of a window "
                        "(special tokens included), leaving no room for the context",
                        param="question",
                    )
                raise InputError(
                    f"doc_stride ({doc_stride}) must be smaller than the {room} context tokens a window "
                    f"holds beside this question (max_seq_len {max_seq_len})",
                    param="doc_stride",
                )
        encodings = [encoding, *encoding.overflowing]
        # The pipeline unmasks the tokenizer's CLS token; the post-processor puts it first.
        cls_token_id = encoding.ids[0] if encoding.ids and encoding.sequence_ids[0] is None else None
        rows = [EncodedRow(input_ids=window.ids, token_type_ids=window.type_ids) for window in encodings]
        windows = [QAWindow.from_encoding(window, cls_token_id) for window in encodings]
        return Prepared(
            rows=rows,
            context=QAContext(context=context, windows=windows),
            num_tokens=sum(len(row) for row in rows),
        )

    def split_outputs(
        self, outputs: dict[str, np.ndarray], batch: BatchArrays
    ) -> Sequence[tuple[np.ndarray, np.ndarray]]:
        # One cast for the whole batch (fp16 or bf16 graphs included); rows are views, cut to length.
        start = outputs[START_LOGITS].astype(np.float32, copy=False)
        end = outputs[END_LOGITS].astype(np.float32, copy=False)
        expected = (len(batch.lengths), batch.padded_length)
        if start.shape != expected or end.shape != expected:
            raise ValueError(f"QA logits have shapes {start.shape} and {end.shape}, expected {expected}")
        return [(start[row, :length], end[row, :length]) for row, length in enumerate(batch.lengths)]

    def finish(
        self, prepared: Prepared, row_outputs: Sequence[tuple[np.ndarray, np.ndarray]], params: QAParams
    ) -> list[Answer]:
        qa_context: QAContext = prepared.context
        if len(row_outputs) != len(qa_context.windows):
            raise ValueError(f"got outputs for {len(row_outputs)} rows, expected {len(qa_context.windows)}")
        # Aligning to words can merge or drop candidates, so the pipeline considers more of them.
        considered = params.top_k * 2 + 10 if params.align_to_words else params.top_k
        null_score = NO_NULL_SCORE
        answers: list[_Candidate] = []
        by_text: dict[str, _Candidate] = {}
        for window, (start_logits, end_logits) in zip(qa_context.windows, row_outputs, strict=True):
            start = softmax_candidates(start_logits, window.candidates)
            end = softmax_candidates(end_logits, window.candidates)
            if params.handle_impossible_answer:
                # "No answer" is CLS-CLS; its score is the lowest over the windows.
                null_score = min(null_score, float(start[0, 0] * end[0, 0]))
            start[0, 0] = end[0, 0] = 0.0
            starts, ends, scores = decode_spans(
                start[0], end[0], considered, params.max_answer_len, window.candidates
            )
            for span_start, span_end, score in zip(
                starts.tolist(), ends.tolist(), scores.tolist(), strict=True
            ):
                char_start, char_end = window.char_span(span_start, span_end, params.align_to_words)
                text = qa_context.context[char_start:char_end]
                # The same text found again (another window, or the same words) adds its score.
                existing = by_text.get(text.lower())
                if existing is not None:
                    existing.score += score
                    continue
                candidate = _Candidate(answer=text, score=score, start=char_start, end=char_end)
                by_text[text.lower()] = candidate
                answers.append(candidate)
        if params.handle_impossible_answer:
            answers.append(_Candidate(answer="", score=null_score, start=0, end=0))
        # sorted() is stable: equal scores keep the order they were found in, as in the pipeline.
        ranked = sorted(answers, key=lambda candidate: candidate.score, reverse=True)[: params.top_k]
        return [Answer(answer=c.answer, score=c.score, start=c.start, end=c.end) for c in ranked]


def best_span(start: np.ndarray, end: np.ndarray, allowed: np.ndarray) -> tuple[int, int]:
    """The (start, end) token pair of highest ``start + end`` logit, both in ``allowed`` positions."""
    positions = np.flatnonzero(allowed)
    if positions.size == 0:
        return (0, 0)
    scores = start[positions][:, None] + end[positions][None, :]
    offsets = positions[None, :] - positions[:, None]
    scores = np.where((offsets >= 0) & (offsets < MAX_ANSWER_TOKENS), scores, -np.inf)
    first, last = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return int(positions[first]), int(positions[last])


def qa_metrics(
    reference: Sequence[Outputs], candidate: Sequence[Outputs], batches: Sequence[SampleBatch]
) -> dict[str, float]:
    agree, total, worst_logit = 0, 0, 0.0
    for ref, cand, batch in zip(reference, candidate, batches, strict=True):
        assert batch.context_mask is not None
        for row in range(batch.context_mask.shape[0]):
            allowed = batch.context_mask[row]
            ref_span = best_span(ref["start_logits"][row], ref["end_logits"][row], allowed)
            cand_span = best_span(cand["start_logits"][row], cand["end_logits"][row], allowed)
            agree += ref_span == cand_span
            total += 1
            for name in ("start_logits", "end_logits"):
                gap = np.abs(ref[name][row][allowed] - cand[name][row][allowed]).max(initial=0.0)
                worst_logit = max(worst_logit, float(gap))
    return {"span_agreement": agree / max(total, 1), "max_logit_gap": worst_logit}


SPEC = TaskSpec(
    name="question-answering",
    processor=QuestionAnsweringProcessor,
    hf_auto_class="AutoModelForQuestionAnswering",
    optimum_task="question-answering",
    # Reader windows run to 384 tokens (160 on average on SQuAD dev), wider than a packed row, so
    # packing saves no padding; the shipped reader's packed graph ran 0.90x of its padded one
    # in-process and 0.70-0.81x served at c=32 (AMD EPYC, 2 cores; the reader's MODEL_CARD.md).
    packed_by_default=False,
    outputs=(START_LOGITS, END_LOGITS),
    agreement=lambda reference, candidate, batches, context: qa_metrics(reference, candidate, batches),
    thresholds=lambda marks: {"span_agreement": marks.min_span_agreement},
    lower_bounds=frozenset({"span_agreement"}),
    architecture_suffix="ForQuestionAnswering",
    architecture_hint="...ForQuestionAnswering (question-answering)",
    sample_pairs=SAMPLE_QA_PAIRS,
    pair_fields=("question", "context"),
)
