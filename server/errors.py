"""Every error leaves as JSON in one shape, the OpenAI one (which its clients parse)::

    {"error": {"message": "...", "type": "invalid_request_error",
               "code": "input_too_long", "param": "input[2]"}}

Model-side errors carry no HTTP status; this module decides them, in one place.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from distilserve.models.errors import BundleError, InputError, InputTooLongError
from distilserve.server.common_protocol import ErrorDetail, ErrorResponse
from distilserve.server.responses import OrjsonResponse

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(Exception):
    """An error with its HTTP status, raised anywhere in the server and rendered by the handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers
        super().__init__(message)


def _encodable(text: str) -> str:
    """``text`` with lone surrogates escaped: an error may quote what the client sent (a JSON key,
    a model name), and orjson cannot write a string that is not valid UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The body of an error answer, in the one shape ``ErrorResponse`` defines."""
    detail = ErrorDetail(
        message=_encodable(message),
        type=ERROR_TYPES.get(status, "server_error"),
        code=code,
        param=None if param is None else _encodable(param),
    )
    return ErrorResponse(error=detail).model_dump()


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> OrjsonResponse:
    return OrjsonResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def input_error_to_api(error: InputError) -> ApiError:
    code = "input_too_long" if isinstance(error, InputTooLongError) else "invalid_input"
    return ApiError(422, str(error), code=code, param=error.param)


# Type mismatches of one member of a union (str | list[str]) say less than any other problem.
_TYPE_MISMATCHES = {
    "string_type",
    "list_type",
    "model_type",
    "model_attributes_type",
    "dict_type",
    "int_type",
}


def _is_union_tag(part: object) -> bool:
    """Pydantic names union members in error locations ("str", "list[str]", "QuestionContext")."""
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool"} or "[" in part or part[:1].isupper()
    )


# Validation problems that are about the input's content, not the request's shape: they keep
# the code the model side gave them before the schema stated them (an empty text).
_INPUT_PROBLEMS = {"blank_text": "invalid_input"}


def _describe_validation_error(error: RequestValidationError) -> tuple[str, str | None, str]:
    """The message, the parameter (as the client wrote it) and the error code."""
    problems = list(error.errors())
    if not problems:
        return "invalid request", None, "invalid_request"
    if any(problem.get("type") == "json_invalid" for problem in problems):
        first = next(problem for problem in problems if problem.get("type") == "json_invalid")
        error_text = first.get("ctx", {}).get("error", first.get("msg"))
        return f"request body is not valid JSON: {error_text}", None, "invalid_request"
    # The most telling problem: a real constraint over a type mismatch, then the deepest location.
    best = min(problems, key=lambda p: (p.get("type") in _TYPE_MISMATCHES, -len(p.get("loc", ()))))
    # Drop the leading "body" and union tags so params read like the JSON sent: input[2], parameters.top_k.
    location = [part for part in best.get("loc", ()) if part != "body" and not _is_union_tag(part)]
    param = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location).lstrip(".")
    message = f"{param}: {best['msg']}" if param else str(best["msg"])
    return message, param or None, _INPUT_PROBLEMS.get(str(best.get("type")), "invalid_request")


def _unparsable_body(exc: StarletteHTTPException) -> str | None:
    """What was wrong with a body FastAPI could not parse, or None for any other HTTP error.

    FastAPI answers a JSON syntax error with a validation error (422 here), but bytes that are
    not UTF-8, or JSON nested deeper than the parser's recursion limit, with a bare 400 "There was
    an error parsing the body". Both are malformed JSON too, so they get its status and code."""
    cause = exc.__cause__
    if exc.status_code != 400:
        return None
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid JSON: it is not UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "request body is not valid JSON: it is nested too deeply"
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> OrjsonResponse:
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> OrjsonResponse:
        api = input_error_to_api(exc)
        return error_response(api.status, api.message, code=api.code, param=api.param)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> OrjsonResponse:
        message, param, code = _describe_validation_error(exc)
        return error_response(422, message, code=code, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> OrjsonResponse:
        unparsable = _unparsable_body(exc)
        if unparsable is not None:
            return error_response(422, unparsable, code="invalid_request")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), code=None, headers=headers)

    @app.exception_handler(BundleError)
    async def _bundle_error(request: Request, exc: BundleError) -> OrjsonResponse:
        return error_response(503, str(exc), code="model_unavailable")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> OrjsonResponse:
        logger.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, "internal server error; see the server log", code="internal_error")
