"""SQuAD training data: a checked reader, features as the transformers QA examples build them.

``read_squad_questions`` reads the official SQuAD v1.1 JSON layout and checks every field it
uses, so that a bad file fails before training with the article and question named, never
halfway through a run.

``question_answering_features`` is ``prepare_train_features`` of transformers'
``examples/pytorch/question-answering/run_qa.py``: question first (left-stripped), context windows
of ``max_length`` tokens that overlap by ``doc_stride`` (``only_second`` truncation), character
offsets that map the first answer to its start and end tokens, and the CLS token as the target
of a window that does not hold the whole answer. Each feature also keeps what decoding needs
(its question and the character span of each context token), so the same features serve the
dev evaluation that picks the best checkpoint.
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distilserve.models.distill.data import DataError, EncodedSet
from distilserve.models.evaluation.metrics import squad_scores

# run_qa.py's default: answers longer than this many tokens are not considered when decoding.
MAX_ANSWER_TOKENS = 30
# Candidates per side when decoding (run_qa.py's n_best_size).
N_BEST = 20


@dataclass(frozen=True, slots=True)
class SquadQuestion:
    """One question with its context; the answers are (text, character start) pairs."""

    id: str
    article: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]

    @property
    def answer_texts(self) -> list[str]:
        return [text for text, _ in self.answers]


def _field(path: Path, where: str, record: Any, name: str, kind: type) -> Any:
    if not isinstance(record, dict):
        raise DataError(path, f"{where}: expected an object, got {type(record).__name__}")
    if name not in record:
        raise DataError(path, f"{where}: missing field {name!r}")
    value = record[name]
    # bool is an int subclass; an answer_start of true is a broken file, not position 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(path, f"{where}: field {name!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def read_squad_questions(
    path: Path | str, *, exclude_ids: Collection[str] = (), require_answers: bool = True
) -> list[SquadQuestion]:
    """Every question of a SQuAD v1.1 file, checked; ``exclude_ids`` are left out.

    Each answer must stand in its context at its ``answer_start``: a training label is a
    character span, and a span that is not the answer teaches the model a wrong position.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON ({exc})") from exc
    articles = _field(path, "top level", raw, "data", list)
    excluded = set(exclude_ids)
    questions: list[SquadQuestion] = []
    for article_index, article in enumerate(articles):
        title = article.get("title", "") if isinstance(article, dict) else ""
        article_where = f"article {article_index} ({title!r})" if title else f"article {article_index}"
        paragraphs = _field(path, article_where, article, "paragraphs", list)
        for paragraph_index, paragraph in enumerate(paragraphs):
            paragraph_where = f"{article_where}, paragraph {paragraph_index}"
            context = _field(path, paragraph_where, paragraph, "context", str)
            for qa_index, qa in enumerate(_field(path, paragraph_where, paragraph, "qas", list)):
                qa_id = qa.get("id") if isinstance(qa, dict) else None
                where = (
                    f"{paragraph_where}, question {qa_id!r}"
                    if qa_id
                    else f"{paragraph_where}, question {qa_index}"
                )
                question_id = _field(path, where, qa, "id", str)
                question = _field(path, where, qa, "question", str)
                raw_answers = _field(path, where, qa, "answers", list)
                if require_answers and not raw_answers:
                    raise DataError(path, f"{where}: no answers")
                answers: list[tuple[str, int]] = []
                for answer_index, answer in enumerate(raw_answers):
                    answer_where = f"{where}, answer {answer_index}"
                    text = _field(path, answer_where, answer, "text", str)
                    start = _field(path, answer_where, answer, "answer_start", int)
                    found = context[start : start + len(text)] if start >= 0 else ""
                    if not text or found != text:
                        raise DataError(
                            path,
                            f"{answer_where}: answer {text!r} is not at answer_start {start} "
                            f"(the context has {found!r} there)",
                        )
                    answers.append((text, start))
                if question_id not in excluded:
                    questions.append(SquadQuestion(question_id, title, question, context, tuple(answers)))
    if not questions:
        raise DataError(path, "file holds no questions")
    return questions


def read_id_list(path: Path | str) -> set[str]:
    """Question ids, one a line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}


def subsample_questions(
    questions: Sequence[SquadQuestion], limit: int | None, seed: int
) -> list[SquadQuestion]:
    """A seeded random subset of ``limit`` questions, in file order (all of them when None)."""
    if limit is None or limit >= len(questions):
        return list(questions)
    keep = sorted(random.Random(seed).sample(range(len(questions)), limit))
    return [questions[index] for index in keep]


@dataclass
class QuestionAnsweringFeatures(EncodedSet):
    """Tokenized windows with their answer-token targets and what decoding them needs.

    ``question_index[i]`` is the question that window ``i`` comes from; ``context_offsets[i][t]``
    is the character span of token ``t`` in that question's context, or None for question,
    special and padding tokens (run_qa.py's ``offset_mapping`` after its post-processing).
    """

    start_positions: list[int] = field(default_factory=list)
    end_positions: list[int] = field(default_factory=list)
    question_index: list[int] = field(default_factory=list)
    context_offsets: list[list[tuple[int, int] | None]] = field(default_factory=list)
    questions: list[SquadQuestion] = field(default_factory=list)

    def target_columns(self) -> dict[str, list[int]]:
        return {"start_positions": self.start_positions, "end_positions": self.end_positions}


def question_answering_features(
    tokenizer: Any, questions: Sequence[SquadQuestion], max_length: int, doc_stride: int
) -> QuestionAnsweringFeatures:
    """Windows and answer-token targets, exactly as run_qa.py's ``prepare_train_features``."""
    if tokenizer.padding_side != "right":
        raise ValueError("question-answering features assume right padding (question first)")
    if doc_stride >= max_length:
        raise ValueError(f"--doc-stride {doc_stride} must be smaller than --max-length {max_length}")
    encoded = tokenizer(
        # run_qa.py strips the question's leading whitespace: some SQuAD questions start with
        # many spaces, which would waste the window.
        [question.question.lstrip() for question in questions],
        [question.context for question in questions],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    sample_mapping = encoded["overflow_to_sample_mapping"]
    features = QuestionAnsweringFeatures(
        input_ids=encoded["input_ids"],
        token_type_ids=encoded.get("token_type_ids")
        if "token_type_ids" in tokenizer.model_input_names
        else None,
        labels=None,
        questions=list(questions),
    )
    cls_token_id = tokenizer.cls_token_id
    for window, offsets in enumerate(encoded["offset_mapping"]):
        input_ids = encoded["input_ids"][window]
        cls_index = input_ids.index(cls_token_id) if cls_token_id in input_ids else 0
        sequence_ids = encoded.sequence_ids(window)
        question_index = sample_mapping[window]
        question = questions[question_index]
        features.question_index.append(question_index)
        features.context_offsets.append(
            [tuple(offset) if sequence_ids[token] == 1 else None for token, offset in enumerate(offsets)]
        )
        if not question.answers:
            features.start_positions.append(cls_index)
            features.end_positions.append(cls_index)
            continue
        text, start_char = question.answers[0]
        end_char = start_char + len(text)
        token_start = 0
        while sequence_ids[token_start] != 1:
            token_start += 1
        token_end = len(input_ids) - 1
        while sequence_ids[token_end] != 1:
            token_end -= 1
        if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
            # The answer is not (wholly) inside this window: the target is CLS.
            features.start_positions.append(cls_index)
            features.end_positions.append(cls_index)
            continue
        while token_start < len(offsets) and offsets[token_start][0] <= start_char:
            token_start += 1
        features.start_positions.append(token_start - 1)
        while offsets[token_end][1] >= end_char:
            token_end -= 1
        features.end_positions.append(token_end + 1)
    return features


def best_answers(
    features: QuestionAnsweringFeatures,
    start_logits: Sequence[np.ndarray] | np.ndarray,
    end_logits: Sequence[np.ndarray] | np.ndarray,
    *,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
    n_best: int = N_BEST,
) -> list[str]:
    """The best answer text of each question: run_qa.py's ``postprocess_qa_predictions``.

    Over all windows of a question, the context span with the highest start + end logit, among
    the ``n_best`` starts and ends of each window, of at most ``max_answer_tokens`` tokens.
    """
    best: list[tuple[float, str]] = [(-np.inf, "")] * len(features.questions)
    for window, question_index in enumerate(features.question_index):
        offsets = features.context_offsets[window]
        starts = np.asarray(start_logits[window])[: len(offsets)]
        ends = np.asarray(end_logits[window])[: len(offsets)]
        context = features.questions[question_index].context
        for start in np.argsort(starts)[::-1][:n_best]:
            start_span = offsets[start]
            if start_span is None:
                continue
            for end in np.argsort(ends)[::-1][:n_best]:
                end_span = offsets[end]
                if end_span is None or end < start or end - start + 1 > max_answer_tokens:
                    continue
                score = float(starts[start] + ends[end])
                if score > best[question_index][0]:
                    best[question_index] = (score, context[start_span[0] : end_span[1]])
    return [text for _, text in best]


def squad_dev_scores(
    features: QuestionAnsweringFeatures,
    start_logits: Sequence[np.ndarray] | np.ndarray,
    end_logits: Sequence[np.ndarray] | np.ndarray,
) -> dict[str, float]:
    """Exact match and F1 (official normalisation, 0-100) of the decoded answers."""
    predictions = best_answers(features, start_logits, end_logits)
    gold = {question.id: question.answer_texts for question in features.questions}
    return squad_scores(
        {question.id: text for question, text in zip(features.questions, predictions, strict=True)}, gold
    )
