"""The terminal chat: ``python -m examples.support_assistant [--distilserve-url URL]``.

Type a question, get the answer, its source and the confidence; an empty line or Ctrl-D ends.
"""

from __future__ import annotations

import asyncio
import sys

from examples.support_assistant.assistant import Reply
from examples.support_assistant.client import DistilserveError
from examples.support_assistant.settings import AssistantSettings
from examples.support_assistant.wiring import build_assistant, make_client


def render(reply: Reply) -> str:
    lines = [f"assistant: {reply.answer}"]
    reranked = "" if reply.rerank_score is None else f", reranker {reply.rerank_score:.2f}"
    lines.append(f"  confidence {reply.confidence:.4f} · source {reply.source.citation} "
                 f"(similarity {reply.similarity:.2f}{reranked})")  # fmt: skip
    lines.append(f'  "{reply.source.text[:160]}{"…" if len(reply.source.text) > 160 else ""}"')
    if reply.needs_human:
        lines.append(f"  [flagged for a human: {reply.sentiment.label} {reply.sentiment.score:.4f}]")
    return "\n".join(lines)


async def chat(settings: AssistantSettings) -> int:
    async with make_client(settings) as client:
        try:
            assistant = await build_assistant(client, settings)
        except DistilserveError as exc:
            print(f"cannot reach distilserve at {settings.distilserve_url} ({exc}); is `make serve` running?")
            return 1
        passages = len(assistant.knowledge.passages)
        print(f"{passages} passages of documentation loaded. Ask away (an empty line ends).")
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, _read_line)
            if not line or not line.strip():
                return 0
            try:
                print(render(await assistant.reply(line)))
            except DistilserveError as exc:
                print(f"assistant: distilserve failed: {exc}")


def _read_line() -> str | None:
    try:
        return input("you: ")
    except EOFError:
        return None


def main() -> int:
    settings = AssistantSettings(_cli_parse_args=sys.argv[1:])
    return asyncio.run(chat(settings))


if __name__ == "__main__":
    raise SystemExit(main())
