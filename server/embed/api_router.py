"""Embedding routes: thin, they parse, delegate to ``EmbedService`` and render."""

from __future__ import annotations

from fastapi import APIRouter, Request

from distilserve.server.admission import with_cancellation
from distilserve.server.common_protocol import ERROR_RESPONSES
from distilserve.server.embed.protocol import EmbeddingRequest, EmbeddingResponse, EmbedRequest
from distilserve.server.embed.serving import EmbedService
from distilserve.server.responses import OrjsonResponse
from distilserve.server.routing import InferenceRoute
from distilserve.server.services import ContextDep, ServerTask, ServicesDep

router = APIRouter(tags=["embeddings"], route_class=InferenceRoute, responses=ERROR_RESPONSES)


@router.post("/v1/embeddings", response_model=EmbeddingResponse, summary="Embed texts (OpenAI shape)")
@with_cancellation
async def embeddings(
    body: EmbeddingRequest, request: Request, services: ServicesDep, context: ContextDep
) -> OrjsonResponse:
    return OrjsonResponse(await services.service(EmbedService).embeddings(body, context))


@router.post(
    "/embed", response_model=list[list[float]], summary="Embed texts (Text Embeddings Inference shape)"
)
@with_cancellation
async def embed(
    body: EmbedRequest, request: Request, services: ServicesDep, context: ContextDep
) -> OrjsonResponse:
    # A float32 matrix, written by orjson as it is: TEI's shape has no object around it.
    return OrjsonResponse(await services.service(EmbedService).embed(body, context))


SERVER_TASK = ServerTask(router=router, service=EmbedService)
