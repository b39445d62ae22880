"""Question-answering route: thin, it parses, delegates to ``AnswerService`` and renders."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.admission import with_cancellation
from server.common_protocol import ERROR_RESPONSES
from server.qa.protocol import AnswerOut, AnswerRequest
from server.responses import OrjsonResponse
from server.routing import InferenceRoute
from server.services import ContextDep, ServicesDep

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
    return OrjsonResponse(await services.answer.answer(body, context))
