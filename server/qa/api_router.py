"""Question-answering route: thin, it parses, delegates to ``AnswerService`` and renders."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from server.auth import require_api_key
from server.common_protocol import ERROR_RESPONSES
from server.inference import serve
from server.qa.protocol import AnswerOut, AnswerRequest
from server.qa.serving import AnswerService
from server.responses import OrjsonResponse

router = APIRouter(
    tags=["question answering"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)


@router.post(
    "/v1/answer",
    response_model=AnswerOut | list[AnswerOut] | list[AnswerOut | list[AnswerOut]],
    summary="Answer questions from a context (Hugging Face inference shape)",
)
async def answer(body: AnswerRequest, request: Request) -> OrjsonResponse:
    service = AnswerService(request.app.state.distilserve)
    return OrjsonResponse(await serve(request, "/v1/answer", lambda ctx: service.answer(body, ctx)))
