"""Choose the relevance weight, the "I don't know" threshold and the human-flag threshold on the
calibration split of questions.json, then score the test split with them.

    python -m examples.support_assistant.calibrate [--distilserve-url URL]

Needs a running distilserve (``make serve``). Each message is read once (with every candidate
kept), then every weight and threshold is scored offline. Copy the chosen values into
``settings.py`` (``CALIBRATED_*``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from examples.support_assistant.assistant import NEGATIVE_LABEL, Assistant
from examples.support_assistant.evaluation import (
    Calibration,
    Scored,
    Split,
    accuracy_at,
    calibrations,
    choose_human_threshold,
    choose_threshold,
    flag_accuracy_at,
    load_questions,
)
from examples.support_assistant.settings import AssistantSettings
from examples.support_assistant.wiring import build_assistant, make_client


async def score(assistant: Assistant, split: Split) -> list[Scored]:
    scored = []
    for question in load_questions(split):
        reply = await assistant.reply(question.question)
        scored.append(Scored(question, reply.candidates, reply.sentiment.probability(NEGATIVE_LABEL)))
    return scored


def report(scored: Sequence[Scored], chosen: Calibration) -> None:
    rows = []
    for item in scored:
        candidate, trust = item.best(chosen.relevance_weight)
        if trust >= chosen.threshold:
            verdict = "right" if item.correct_if_answered(chosen.relevance_weight) else "wrong"
        else:
            verdict = "withheld" if item.question.answerable else "right (I don't know)"
        rows.append((trust, verdict, item.question.question, candidate.span.answer, candidate.passage.source))
    for trust, verdict, question, answer, source in sorted(rows, key=lambda row: -row[0]):
        print(f"  {trust:.4f}  {verdict:20}  {question}  ->  {answer!r} ({source})")


async def calibrate(settings: AssistantSettings) -> int:
    async with make_client(settings) as client:
        assistant = await build_assistant(client, settings)
        calibration = await score(assistant, "calibration")
        test = await score(assistant, "test")
    chosen = choose_threshold(calibration)
    answerable = [item for item in calibration if item.question.answerable]
    print(f"calibration split: {len(calibration)} messages, {len(answerable)} answerable")
    for weight in sorted({0.0, chosen.relevance_weight}):
        right = sum(item.correct_if_answered(weight) for item in answerable)
        print(f"  answers right before any threshold, relevance weight {weight:g}: {right}/{len(answerable)}")
    report(calibration, chosen)
    for choice in calibrations(calibration):
        weight, threshold, accuracy = choice.relevance_weight, choice.threshold, choice.accuracy
        print(f"  weight {weight:g}: threshold {threshold:.6f}, accuracy {accuracy:.3f}")
    print(
        f"chosen: relevance weight {chosen.relevance_weight:g}, threshold {chosen.threshold:.6f}; "
        f"calibration accuracy {chosen.accuracy:.3f} (no threshold: "
        f"{accuracy_at(calibration, chosen.relevance_weight, 0.0):.3f})"
    )
    test_accuracy = accuracy_at(test, chosen.relevance_weight, chosen.threshold)
    print(f"test split: accuracy {test_accuracy:.3f} on {len(test)} messages")
    report(test, chosen)
    human, flag_accuracy = choose_human_threshold(calibration)
    hostile = [item for item in calibration if item.question.hostile]
    calm = [item for item in calibration if not item.question.hostile]
    print(
        f"human flag: negative probability >= {human:.6f}; calibration flag accuracy {flag_accuracy:.3f} "
        f"({sum(item.negative >= human for item in hostile)}/{len(hostile)} hostile flagged, "
        f"{sum(item.negative >= human for item in calm)}/{len(calm)} others); "
        f"test split {flag_accuracy_at(test, human):.3f}"
    )
    for item in sorted([*calibration, *test], key=lambda item: -item.negative)[:12]:
        kind = "hostile" if item.question.hostile else "calm"
        print(f"  {item.negative:.6f}  {kind:7}  {item.question.split:11}  {item.question.question}")
    return 0


def main() -> int:
    settings = AssistantSettings(_cli_parse_args=sys.argv[1:])
    return asyncio.run(calibrate(settings))


if __name__ == "__main__":
    raise SystemExit(main())
