"""Embedding request and response schemas (OpenAI's and TEI's shapes)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from distilserve.server.common_protocol import Dimensions, Text, TextOrTexts, Usage


def _reject_token_ids(value: object) -> object:
    """OpenAI also accepts token-id arrays; they belong to OpenAI's tokenizer, not this model's."""
    if isinstance(value, list) and value and all(isinstance(part, int | list) for part in value):
        raise ValueError("token-id input is not supported by this server; send the text instead")
    return value


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",  # OpenAI clients send fields such as `user`
        json_schema_extra={
            "example": {"model": "all-minilm-l6-v2", "input": ["How do I reset my password?"]}
        },
    )

    model: Text | None = Field(None, description="model name; optional when one embedding model is served")
    input: TextOrTexts = Field(description="one text or a list of texts")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes, what the openai client asks for by default"
    )
    dimensions: Dimensions | None = Field(
        None,
        description=(
            "keep the first N dimensions (renormalised); at most 8192, and at most the model's (/info "
            "hidden_size: more is a 422 invalid_dimensions)"
        ),
    )
    user: Text | None = None

    _no_token_ids = field_validator("input", mode="before")(_reject_token_ids)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class EmbedRequest(BaseModel):
    """TEI's ``/embed``."""

    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"example": {"inputs": "What is Deep Learning?"}}
    )

    inputs: TextOrTexts
    normalize: StrictBool = True
    truncate: StrictBool = False
    dimensions: Dimensions | None = Field(
        None, description="keep the first N dimensions (at most 8192, and at most the model's)"
    )
    model: Text | None = None

    _no_token_ids = field_validator("inputs", mode="before")(_reject_token_ids)
