"""Rerank request and response schemas: TEI's ``/rerank``, and Jina/Cohere's as vLLM serves them.

TEI's request is ``{query, texts, truncate, truncation_direction, raw_scores, return_text}`` and
its answer a list of ``{index, score, text?}``, best first. The Jina/Cohere request is
``{model, query, documents, top_n, return_documents}`` and its answer
``{id, model, usage, results: [{index, document: {text}, relevance_score}]}``; ``top_n`` 0 (vLLM's
default) or absent returns every document. Unknown fields are ignored there, as vLLM and the
hosted APIs do, because SDKs send options of their own (Cohere's ``max_tokens_per_doc``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from distilserve.server.common_protocol import InputText, Text, WholeNumber

# The most results a client may ask for; more than the documents sent returns them all.
MAX_TOP_N = 100_000

# TEI spells the direction with a capital (``"Right"``); both spellings are taken.
TruncationSide = Literal["right", "left", "Right", "Left"]

Texts = Annotated[list[InputText], Field(min_length=1)]


class RerankRequest(BaseModel):
    """TEI's ``/rerank``: scores every text against the query, best first."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {
                "query": "What is Deep Learning?",
                "texts": ["Deep Learning is not...", "Deep learning is..."],
            }
        },
    )

    query: InputText = Field(description="what the texts are ranked against; never truncated")
    texts: Texts = Field(description="the texts to rank (at most max_items_per_request, /info limits)")
    truncate: StrictBool = Field(
        False, description="cut a text that does not fit beside the query instead of failing"
    )
    truncation_direction: TruncationSide = Field(
        "right", description="which end of a text is cut: right keeps its beginning, left its end"
    )
    raw_scores: StrictBool = Field(False, description="return the logit instead of its sigmoid")
    return_text: StrictBool = Field(False, description="return each text beside its score")
    model: Text | None = Field(None, description="model name; optional when one rerank model is served")


class RankOut(BaseModel):
    index: int = Field(description="position of the text in the request")
    score: float


class RankWithTextOut(RankOut):
    text: str


class DocumentIn(BaseModel):
    """A document as an object (Cohere's v1 API and SDK accept ``{"text": ...}``)."""

    model_config = ConfigDict(extra="ignore")

    text: InputText


class CohereRerankRequest(BaseModel):
    """Jina's and Cohere's rerank request, with vLLM's defaults."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {
                "model": "squad-reranker",
                "query": "What is the capital of France?",
                "documents": ["Paris is the capital of France.", "The Danube flows through Budapest."],
                "top_n": 1,
            }
        },
    )

    model: Text | None = Field(None, description="model name; optional when one rerank model is served")
    query: InputText = Field(description="what the documents are ranked against; never truncated")
    documents: Annotated[list[InputText | DocumentIn], Field(min_length=1)] = Field(
        description="texts (or {text} objects) to rank; at most max_items_per_request (/info limits)"
    )
    top_n: Annotated[StrictInt, Field(ge=0, le=MAX_TOP_N), WholeNumber] | None = Field(
        None, description="results to return, best first; 0 or null for every document"
    )
    return_documents: StrictBool = Field(True, description="return each document's text in its result")


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float


class RerankResultWithDocument(RerankResult):
    document: RerankDocument


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CohereRerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResultWithDocument] | list[RerankResult] = Field(
        description="best first; with return_documents, each with its document"
    )
