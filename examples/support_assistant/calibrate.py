"""Choose the "I don't know" threshold on the calibration split of questions.json.

    python -m examples.support_assistant.calibrate [--distilserve-url URL]

Needs a running distilserve (``make serve``). Prints each question's answer and confidence,
the accuracy at every candidate threshold, and the chosen one; the test split is then scored
at that threshold, as a check on questions the choice never saw.
"""

from __future__ import annotations

import asyncio
import sys

from examples.support_assistant.assistant import Assistant
from examples.support_assistant.client import DistilserveClient, RetryPolicy
from examples.support_assistant.evaluation import Scored, accuracy_at, choose_threshold, load_questions
from examples.support_assistant.settings import AssistantSettings


async def score(assistant: Assistant, split: str) -> list[Scored]:
    scored = []
    for question in load_questions(split):  # type: ignore[arg-type]
        reply = await assistant.reply(question.question)
        best = reply.candidates[0]
        scored.append(Scored(question, best.span.answer, reply.confidence))
    return scored


def report(scored: list[Scored], threshold: float) -> None:
    for item in sorted(scored, key=lambda item: -item.confidence):
        known = item.confidence >= threshold
        verdict = (
            ("right" if item.correct_if_answered else "wrong")
            if known
            else ("right (I don't know)" if not item.question.answerable else "withheld")
        )
        print(f"  {item.confidence:.3f}  {verdict:20}  {item.question.question}  ->  {item.answer!r}")


async def calibrate(settings: AssistantSettings) -> int:
    client = DistilserveClient(
        settings.distilserve_url,
        timeout_s=settings.timeout_s,
        api_key=settings.api_key,
        retry=RetryPolicy(max_retries=settings.max_retries),
    )
    async with client:
        assistant = await Assistant.build(
            client, settings.docs_root, max_words=settings.passage_words, top_k=settings.top_k
        )
        calibration = await score(assistant, "calibration")
        test = await score(assistant, "test")
    threshold, accuracy = choose_threshold(calibration)
    answerable = [item for item in calibration if item.question.answerable]
    right = sum(item.correct_if_answered for item in answerable)
    print(f"calibration split: {len(calibration)} questions ({len(answerable)} answerable)")
    print(f"  answers right with no threshold: {right}/{len(answerable)}")
    report(calibration, threshold)
    print(f"chosen threshold: {threshold:.4f} (calibration accuracy {accuracy:.3f}; "
          f"with no threshold {accuracy_at(calibration, 0.0):.3f})")  # fmt: skip
    print(
        f"test split at that threshold: accuracy {accuracy_at(test, threshold):.3f} on {len(test)} questions"
    )
    report(test, threshold)
    return 0


def main() -> int:
    settings = AssistantSettings(_cli_parse_args=sys.argv[1:])  # type: ignore[call-arg]
    return asyncio.run(calibrate(settings))


if __name__ == "__main__":
    raise SystemExit(main())
