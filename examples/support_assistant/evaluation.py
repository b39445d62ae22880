"""The labelled questions, SQuAD's answer normalisation, and the thresholds they choose."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from examples.support_assistant.assistant import Candidate, best_candidate, confidence

QUESTIONS_FILE = Path(__file__).with_name("questions.json")
Split = Literal["calibration", "test"]
# The relevance weights ``calibrate`` tries (0: the reader's score alone).
RELEVANCE_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)


@dataclass(frozen=True, slots=True)
class LabelledQuestion:
    question: str
    answers: tuple[str, ...]  # empty: the documentation does not answer it
    sources: tuple[str, ...]  # the files that state the answer
    split: Split
    hostile: bool  # a message a person should take over

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def load_questions(split: Split | None = None, path: Path = QUESTIONS_FILE) -> list[LabelledQuestion]:
    entries = json.loads(path.read_text(encoding="utf-8"))
    questions = [
        LabelledQuestion(
            entry["question"],
            tuple(entry["answers"]),
            tuple(entry["sources"]),
            entry["split"],
            bool(entry.get("hostile", False)),
        )
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
    """One labelled message as the assistant read it: every candidate, so that any relevance
    weight and threshold can be scored without asking distilserve again."""

    question: LabelledQuestion
    candidates: tuple[Candidate, ...]
    negative: float  # the sentiment model's probability that the message is negative

    def best(self, relevance_weight: float) -> tuple[Candidate, float]:
        chosen = best_candidate(self.candidates, relevance_weight)
        return chosen, confidence(chosen, relevance_weight)

    def correct_if_answered(self, relevance_weight: float) -> bool:
        chosen, _ = self.best(relevance_weight)
        return self.question.answerable and exact_match(chosen.span.answer, self.question.answers)


def accuracy_at(scored: Sequence[Scored], relevance_weight: float, threshold: float) -> float:
    """Exact-match accuracy when answers below ``threshold`` become "I don't know": right for an
    unanswerable question, wrong for an answerable one (as SQuAD 2.0 scores abstentions)."""
    right = 0
    for item in scored:
        _, trust = item.best(relevance_weight)
        answered = trust >= threshold
        right += item.correct_if_answered(relevance_weight) if answered else not item.question.answerable
    return right / max(len(scored), 1)


def flag_accuracy_at(scored: Sequence[Scored], threshold: float) -> float:
    """Share of messages flagged for a human exactly when they are hostile."""
    right = sum((item.negative >= threshold) == item.question.hostile for item in scored)
    return right / max(len(scored), 1)


def _best_threshold(values: Sequence[float], accuracy: Callable[[float], float]) -> tuple[float, float]:
    """Among 0 and every observed value, the threshold of best accuracy; on a tie the lowest, so
    that nothing the labelled set shows to be right is held back."""
    candidates = sorted({0.0, *values})
    best = max(candidates, key=lambda threshold: (accuracy(threshold), -threshold))
    return best, accuracy(best)


@dataclass(frozen=True, slots=True)
class Calibration:
    relevance_weight: float
    threshold: float
    accuracy: float


def calibrations(scored: Sequence[Scored], weights: Sequence[float] = RELEVANCE_WEIGHTS) -> list[Calibration]:
    """For each relevance weight, the "I don't know" threshold of best accuracy (as SQuAD 2.0's
    ``find_best_thresh`` picks it) and that accuracy."""
    choices = []
    for weight in weights:
        confidences = [item.best(weight)[1] for item in scored]
        threshold, accuracy = _best_threshold(
            confidences,
            lambda t, w=weight: accuracy_at(scored, w, t),  # type: ignore[misc]
        )
        choices.append(Calibration(weight, threshold, accuracy))
    return choices


def choose_threshold(scored: Sequence[Scored], weights: Sequence[float] = RELEVANCE_WEIGHTS) -> Calibration:
    """The relevance weight and threshold of best accuracy; on a tie the smaller weight."""
    choices = calibrations(scored, weights)
    return max(choices, key=lambda choice: (choice.accuracy, -choice.relevance_weight))


def choose_human_threshold(scored: Sequence[Scored]) -> tuple[float, float]:
    """The negative probability from which to flag, of best flag accuracy on the same set."""
    return _best_threshold([item.negative for item in scored], lambda t: flag_accuracy_at(scored, t))
