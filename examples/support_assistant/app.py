"""The assistant's HTTP API: ``POST /chat``.

    python -m examples.support_assistant.app [--port 8090] [--distilserve-url URL]

At start-up it embeds the documentation through distilserve (so distilserve must be ready);
each ``POST /chat`` is then one turn. distilserve's refusals that outlast the retries come
back as 503 with distilserve's own message, a bad message as 422.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from examples.support_assistant.assistant import Assistant, Reply
from examples.support_assistant.client import DistilserveError
from examples.support_assistant.settings import AssistantSettings
from examples.support_assistant.wiring import build_assistant, make_client

logger = logging.getLogger(__name__)


class ChatRequest(BaseModel):
    message: str = Field(min_length=1, max_length=2000, pattern=r"\S", description="the user's message")


class SourceOut(BaseModel):
    file: str
    section: str
    passage: str
    similarity: float = Field(description="cosine between the message and the passage")
    rerank_score: float | None = Field(description="the reranker's relevance (0-1), when one reranked")


class ChatResponse(BaseModel):
    answer: str = Field(description='the answer span, or "I don\'t know." below the threshold')
    known: bool
    confidence: float = Field(
        description="reader span probability x passage relevance (reranker score, or else similarity) "
        "** relevance_weight"
    )
    source: SourceOut = Field(description="the passage the answer comes from (or the best one read)")
    sentiment: str
    sentiment_score: float
    needs_human: bool = Field(description="strongly negative: hand the conversation to a person")


def to_response(reply: Reply) -> ChatResponse:
    return ChatResponse(
        answer=reply.answer,
        known=reply.known,
        confidence=reply.confidence,
        source=SourceOut(
            file=reply.source.source,
            section=reply.source.section,
            passage=reply.source.text,
            similarity=round(reply.similarity, 4),
            rerank_score=None if reply.rerank_score is None else round(reply.rerank_score, 4),
        ),
        sentiment=reply.sentiment.label,
        sentiment_score=round(reply.sentiment.score, 4),
        needs_human=reply.needs_human,
    )


def build_app(settings: AssistantSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with make_client(settings) as client:
            app.state.assistant = await build_assistant(client, settings)
            logger.info("knowledge base ready: %d passages", len(app.state.assistant.knowledge.passages))
            yield

    app = FastAPI(title="distilserve support assistant", lifespan=lifespan)

    @app.post("/chat", response_model=ChatResponse)
    async def chat(body: ChatRequest, request: Request) -> ChatResponse | JSONResponse:
        assistant: Assistant = request.app.state.assistant
        try:
            reply = await assistant.reply(body.message)
        except DistilserveError as exc:
            logger.warning("distilserve failed: %s", exc)
            return JSONResponse({"error": {"message": str(exc), "type": "upstream_error"}}, status_code=503)
        return to_response(reply)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> int:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per distilserve call is noise
    settings = AssistantSettings(_cli_parse_args=sys.argv[1:])
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
