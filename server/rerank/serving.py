"""Rerank logic: one (query, document) pair per model row, scored model-side, sorted here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from distilserve.models.bundle import Task
from distilserve.models.tasks import RerankPair, RerankParams
from distilserve.server.admission import RequestContext
from distilserve.server.pipeline import InferencePipeline, ItemResults
from distilserve.server.registry import ServedModel
from distilserve.server.rerank.protocol import (
    CohereRerankRequest,
    CohereRerankResponse,
    RankOut,
    RankWithTextOut,
    RerankDocument,
    RerankRequest,
    RerankResult,
    RerankResultWithDocument,
    RerankUsage,
)

TASK: Task = "rerank"


def ranking(scores: Sequence[float]) -> list[int]:
    """Indices of ``scores``, best first; equal scores keep the order they were sent in."""
    return sorted(range(len(scores)), key=lambda index: -scores[index])


class RerankService:
    def __init__(self, pipeline: InferencePipeline) -> None:
        self.pipeline = pipeline

    async def _score(
        self,
        model: str | None,
        query: str,
        documents: list[str],
        params: RerankParams,
        context: RequestContext,
        *,
        param: str,
    ) -> tuple[ServedModel, ItemResults]:
        # The item limits count the documents; the query is held to the size of one item.
        self.pipeline.check_items(documents, param)
        self.pipeline.check_items([query], "query")
        served = self.pipeline.registry.resolve(model, TASK)
        pairs = [RerankPair(query=query, document=document) for document in documents]
        return served, await self.pipeline.run_items(served, pairs, params, context, param=param)

    async def rerank(self, request: RerankRequest, context: RequestContext) -> list[RankOut]:
        params = RerankParams(
            truncate=request.truncate,
            truncation_direction="left" if request.truncation_direction.lower() == "left" else "right",
            raw_scores=request.raw_scores,
        )
        _, outcome = await self._score(
            request.model, request.query, request.texts, params, context, param="texts"
        )
        scores: list[float] = outcome.results
        if request.return_text:
            return [
                RankWithTextOut.model_construct(index=index, score=scores[index], text=request.texts[index])
                for index in ranking(scores)
            ]
        return [RankOut.model_construct(index=index, score=scores[index]) for index in ranking(scores)]

    async def cohere_rerank(
        self, request: CohereRerankRequest, context: RequestContext
    ) -> CohereRerankResponse:
        texts = [document if isinstance(document, str) else document.text for document in request.documents]
        # The hosted APIs cut long documents rather than fail: truncation is on.
        served, outcome = await self._score(
            request.model, request.query, texts, RerankParams(), context, param="documents"
        )
        scores: list[float] = outcome.results
        order = ranking(scores)
        if request.top_n:
            order = order[: request.top_n]
        results: list[RerankResult] | list[RerankResultWithDocument]
        if request.return_documents:
            results = [
                RerankResultWithDocument.model_construct(
                    index=index,
                    relevance_score=scores[index],
                    document=RerankDocument.model_construct(text=texts[index]),
                )
                for index in order
            ]
        else:
            results = [
                RerankResult.model_construct(index=index, relevance_score=scores[index]) for index in order
            ]
        usage = RerankUsage.model_construct(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens)
        return CohereRerankResponse.model_construct(
            id=f"rerank-{uuid.uuid4().hex}", model=served.name, usage=usage, results=results
        )
