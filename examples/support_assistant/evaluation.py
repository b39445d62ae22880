"""The labelled questions, SQuAD's answer normalisation, and the threshold they choose."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

QUESTIONS_FILE = Path(__file__).with_name("questions.json")
Split = Literal["calibration", "test"]


@dataclass(frozen=True, slots=True)
class LabelledQuestion:
    question: str
    answers: tuple[str, ...]  # empty: the documentation does not answer it
    sources: tuple[str, ...]  # the files that state the answer
    split: Split

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def load_questions(split: Split | None = None, path: Path = QUESTIONS_FILE) -> list[LabelledQuestion]:
    entries = json.loads(path.read_text(encoding="utf-8"))
    questions = [
        LabelledQuestion(entry["question"], tuple(entry["answers"]), tuple(entry["sources"]), entry["split"])
        for entry in entries
    ]
    return [question for question in questions if split is None or question.split == split]


def normalize_answer(text: str) -> str:
    """SQuAD's official normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(character for character in text.lower() if character not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    return any(normalize_answer(prediction) == normalize_answer(answer) for answer in answers)


@dataclass(frozen=True, slots=True)
class Scored:
    """One labelled question as the assistant answered it with no threshold."""

    question: LabelledQuestion
    answer: str
    confidence: float

    @property
    def correct_if_answered(self) -> bool:
        return self.question.answerable and exact_match(self.answer, self.question.answers)


def accuracy_at(scored: Sequence[Scored], threshold: float) -> float:
    """Exact-match accuracy when answers below ``threshold`` become "I don't know": right for an
    unanswerable question, wrong for an answerable one (as SQuAD 2.0 scores abstentions)."""
    right = sum(
        item.correct_if_answered if item.confidence >= threshold else not item.question.answerable
        for item in scored
    )
    return right / max(len(scored), 1)


def choose_threshold(scored: Sequence[Scored]) -> tuple[float, float]:
    """The threshold of best accuracy (SQuAD 2.0's ``find_best_thresh``) and that accuracy.

    Candidates are 0 and every observed confidence; among equally good ones the lowest wins,
    so that no answer the labelled set shows to be right is withheld.
    """
    candidates = sorted({0.0, *(item.confidence for item in scored)})
    best = max(candidates, key=lambda threshold: (accuracy_at(scored, threshold), -threshold))
    return best, accuracy_at(scored, best)
