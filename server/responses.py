"""JSON responses serialised with orjson (numpy arrays included, without a Python-list detour).

Routes answer with protocol objects (``server.*.protocol``), built on the hot path with
``model_construct`` (no validation: the values come from the model, already typed). orjson
does not know pydantic models, so ``_protocol_fields`` hands it each one's fields; numpy
arrays inside them stay arrays until orjson writes them.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import JSONResponse


def _protocol_fields(value: object) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        # model_construct and validation both store exactly the fields here (extras and private
        # attributes live elsewhere), defaults included.
        return value.__dict__
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class OrjsonResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(
            content,
            default=_protocol_fields,
            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
        )
