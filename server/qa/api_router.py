"""Question-answering route: thin, it parses, delegates to ``AnswerService`` and renders."""

from __future__ import annotations

from fastapi import APIRouter, Request

from distilserve.server.admission import with_cancellation
from distilserve.server.common_protocol import ERROR_RESPONSES
from distilserve.server.qa.protocol import AnswerOut, AnswerRequest
from distilserve.server.qa.serving import AnswerService
from distilserve.server.responses import OrjsonResponse
from distilserve.server.routing import InferenceRoute
from distilserve.server.services import ContextDep, ServerTask, ServicesDep

router = APIRouter(tags=["question answering"], route_class=InferenceRoute, responses=ERROR_RESPONSES)


@router.post(
    "/v1/answer",
    response_model=AnswerOut | list[AnswerOut] | list[AnswerOut | list[AnswerOut]],
    summary="Answer questions from a context (Hugging Face inference shape)",
)
@with_cancellation
async def answer(
    body: AnswerRequest, request: Request, services: ServicesDep, context: ContextDep
) -> OrjsonResponse:
    return OrjsonResponse(await services.service(AnswerService).answer(body, context))


SERVER_TASK = ServerTask(router=router, service=AnswerService)
