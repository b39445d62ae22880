"""Embedding routes: thin, they parse, delegate to ``EmbedService`` and render."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from server.auth import require_api_key
from server.common_protocol import ERROR_RESPONSES
from server.embed.protocol import EmbeddingRequest, EmbeddingResponse, EmbedRequest
from server.embed.serving import EmbedService
from server.inference import serve
from server.responses import OrjsonResponse

router = APIRouter(tags=["embeddings"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)


def _service(request: Request) -> EmbedService:
    return EmbedService(request.app.state.distilserve)


@router.post("/v1/embeddings", response_model=EmbeddingResponse, summary="Embed texts (OpenAI shape)")
async def embeddings(body: EmbeddingRequest, request: Request) -> OrjsonResponse:
    service = _service(request)
    return OrjsonResponse(await serve(request, "/v1/embeddings", lambda ctx: service.embeddings(body, ctx)))


@router.post(
    "/embed", response_model=list[list[float]], summary="Embed texts (Text Embeddings Inference shape)"
)
async def embed(body: EmbedRequest, request: Request) -> OrjsonResponse:
    service = _service(request)
    return OrjsonResponse(await serve(request, "/embed", lambda ctx: service.embed(body, ctx)))
