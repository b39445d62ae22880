"""Schemas shared by several capabilities."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr
from pydantic_core import PydanticCustomError


def _refuse_lone_surrogates(value: str) -> str:
    """JSON's ``\\ud800`` escape decodes to a lone surrogate, which is no character: the
    tokenizer and the UTF-8 encoder both refuse it. Refused here, the error names the field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            "invalid_unicode",
            "text holds a lone surrogate (U+{code}) at character {index}, which is not valid Unicode",
            {"code": f"{ord(value[exc.start]):04X}", "index": exc.start},
        ) from None
    return value


# Every string a client sends: strictly a string, and valid Unicode.
Text = Annotated[StrictStr, AfterValidator(_refuse_lone_surrogates)]

# One text or a non-empty list of texts: the ``input``/``inputs`` of every text route.
TextOrTexts = Annotated[Text | Annotated[list[Text], Field(min_length=1)], Field()]


class Usage(BaseModel):
    """Token counts, as OpenAI reports them (special tokens included)."""

    prompt_tokens: int
    total_tokens: int


class ErrorDetail(BaseModel):
    """The one definition of the error shape: ``distilserve.server.errors`` and the middleware render it."""

    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "error": {
                    "message": "input[1]: input text is empty",
                    "type": "invalid_request_error",
                    "code": "invalid_input",
                    "param": "input[1]",
                }
            }
        }
    )

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "the model serves another task (wrong_task), or several fit and none is named (model_required)",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "too many items, or an item too large",
        422: "invalid input: malformed JSON or UTF-8, wrong types, empty text, too long with truncation off",
        429: "queue full; retry after the Retry-After header",
        503: "not ready, or shutting down",
        504: "deadline (X-Request-Timeout) exceeded",
    }.items()
}
