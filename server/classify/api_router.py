"""Classification routes: thin, they parse, delegate to ``ClassifyService`` and render."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from server.auth import require_api_key
from server.classify.protocol import ClassifyRequest, ClassifyResponse, LabelScoreOut, PredictRequest
from server.classify.serving import ClassifyService
from server.common_protocol import ERROR_RESPONSES
from server.inference import serve
from server.responses import OrjsonResponse

router = APIRouter(
    tags=["classification"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)


def _service(request: Request) -> ClassifyService:
    return ClassifyService(request.app.state.distilserve)


@router.post("/v1/classify", response_model=ClassifyResponse, summary="Classify one text or a batch")
async def classify(body: ClassifyRequest, request: Request) -> OrjsonResponse:
    service = _service(request)
    return OrjsonResponse(await serve(request, "/v1/classify", lambda ctx: service.classify(body, ctx)))


@router.post(
    "/predict",
    response_model=list[LabelScoreOut] | list[list[LabelScoreOut]],
    summary="Classify (Text Embeddings Inference shape)",
)
async def predict(body: PredictRequest, request: Request) -> OrjsonResponse:
    service = _service(request)
    return OrjsonResponse(await serve(request, "/predict", lambda ctx: service.predict(body, ctx)))
