"""Rerank routes: thin, they parse, delegate to ``RerankService`` and render."""

from __future__ import annotations

from fastapi import APIRouter, Request

from distilserve.server.admission import with_cancellation
from distilserve.server.common_protocol import ERROR_RESPONSES
from distilserve.server.rerank.protocol import (
    CohereRerankRequest,
    CohereRerankResponse,
    RankOut,
    RankWithTextOut,
    RerankRequest,
)
from distilserve.server.rerank.serving import RerankService
from distilserve.server.responses import OrjsonResponse
from distilserve.server.routing import InferenceRoute
from distilserve.server.services import ContextDep, ServerTask, ServicesDep

router = APIRouter(tags=["rerank"], route_class=InferenceRoute, responses=ERROR_RESPONSES)


@router.post(
    "/rerank",
    response_model=list[RankWithTextOut] | list[RankOut],
    summary="Rank texts against a query (Text Embeddings Inference shape)",
)
@with_cancellation
async def rerank(
    body: RerankRequest, request: Request, services: ServicesDep, context: ContextDep
) -> OrjsonResponse:
    return OrjsonResponse(await services.service(RerankService).rerank(body, context))


# One handler on both paths: vLLM serves the same Jina/Cohere request and answer at each.
@router.post(
    "/v1/rerank",
    response_model=CohereRerankResponse,
    summary="Rank documents against a query (Jina and Cohere shape, as vLLM serves it)",
)
@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    summary="Rank documents against a query (Cohere v2 shape, what cohere.ClientV2.rerank sends)",
)
@with_cancellation
async def cohere_rerank(
    body: CohereRerankRequest, request: Request, services: ServicesDep, context: ContextDep
) -> OrjsonResponse:
    return OrjsonResponse(await services.service(RerankService).cohere_rerank(body, context))


SERVER_TASK = ServerTask(router=router, service=RerankService)
