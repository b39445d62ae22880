"""Classification routes: thin, they parse, delegate to ``ClassifyService`` and render."""

from __future__ import annotations

from fastapi import APIRouter, Request

from distilserve.server.admission import with_cancellation
from distilserve.server.classify.protocol import (
    ClassifyRequest,
    ClassifyResponse,
    LabelScoreOut,
    PredictRequest,
)
from distilserve.server.classify.serving import ClassifyService
from distilserve.server.common_protocol import ERROR_RESPONSES
from distilserve.server.responses import OrjsonResponse
from distilserve.server.routing import InferenceRoute
from distilserve.server.services import ContextDep, ServerTask, ServicesDep

router = APIRouter(tags=["classification"], route_class=InferenceRoute, responses=ERROR_RESPONSES)


@router.post("/v1/classify", response_model=ClassifyResponse, summary="Classify one text or a batch")
@with_cancellation
async def classify(
    body: ClassifyRequest, request: Request, services: ServicesDep, context: ContextDep
) -> OrjsonResponse:
    return OrjsonResponse(await services.service(ClassifyService).classify(body, context))


@router.post(
    "/predict",
    response_model=list[LabelScoreOut] | list[list[LabelScoreOut]],
    summary="Classify (Text Embeddings Inference shape; Hugging Face Inference API shape with parameters)",
)
@with_cancellation
async def predict(
    body: PredictRequest, request: Request, services: ServicesDep, context: ContextDep
) -> OrjsonResponse:
    return OrjsonResponse(await services.service(ClassifyService).predict(body, context))


SERVER_TASK = ServerTask(router=router, service=ClassifyService)
