"""Schemas shared by several capabilities."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr
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


def _refuse_blank(value: str) -> str:
    """A model has nothing to read in an empty or whitespace text (``str.strip``'s whitespace,
    which is what ``NOT_WHITESPACE`` in the schema's pattern says too)."""
    if not value.strip():
        raise PydanticCustomError("blank_text", "text is empty or only whitespace")
    return value


def _whole_number(value: object) -> object:
    """JSON Schema's integer is a number without a fraction, so ``2.0`` is one (``"2"`` and
    ``true`` are not, and stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Every integer a client sends is strict (no strings, no booleans), as the document's "integer".
# Its bounds go inside, before this validator (``Annotated[StrictInt, Field(ge=1), WholeNumber]``):
# bounds put on the outside are neither checked on the converted value nor written as "minimum".
WholeNumber = BeforeValidator(_whole_number)
PositiveInteger = Annotated[StrictInt, Field(ge=1), WholeNumber]
# Labels a classification answer may ask for: more than any classifier served has (a larger
# top_k would return them all, so a bound costs no one anything, and 1e308 is refused).
MAX_TOP_K = 1000
TopK = Annotated[StrictInt, Field(ge=1, le=MAX_TOP_K), WholeNumber]
# Widest embedding a request may ask for; the served model's own width (/info) is checked after.
MAX_DIMENSIONS = 8192
Dimensions = Annotated[StrictInt, Field(ge=1, le=MAX_DIMENSIONS), WholeNumber]

# Every string a client sends: strictly a string, and valid Unicode.
Text = Annotated[StrictStr, AfterValidator(_refuse_lone_surrogates)]

# A text a model reads (input, question, context): with a non-whitespace character, as the
# document's pattern says, so an empty text is refused by the schema it breaks.
# Python's whitespace (str.isspace), written out: a JSON schema pattern's ``\S`` is ECMAScript's,
# which counts U+001C-U+001F and U+0085 as text and U+FEFF as space, the opposite of Python's.
NOT_WHITESPACE = (
    "[^\\t\\n\\u000b\\f\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000]"
)
InputText = Annotated[
    Text, AfterValidator(_refuse_blank), Field(json_schema_extra={"pattern": NOT_WHITESPACE})
]

# One text or a non-empty list of texts: the ``input``/``inputs`` of every text route.
TextOrTexts = Annotated[InputText | Annotated[list[InputText], Field(min_length=1)], Field()]


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
                    "message": "input[1]: text is empty or only whitespace",
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
