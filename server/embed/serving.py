"""Embedding logic: pooling happens model-side; here, dimensions, normalisation and encodings."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from distilserve.models.bundle import Task
from distilserve.models.tasks import EmbedParams
from distilserve.models.tasks.embed import l2_normalize
from distilserve.server.admission import RequestContext
from distilserve.server.common_protocol import Usage
from distilserve.server.embed.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbedRequest
from distilserve.server.errors import ApiError
from distilserve.server.pipeline import InferencePipeline
from distilserve.server.registry import ServedModel

TASK: Task = "feature-extraction"


def shorten(
    vectors: list[np.ndarray], dimensions: int | None, normalized: bool, served: ServedModel
) -> np.ndarray:
    """Stack vectors, keeping the first ``dimensions`` (renormalised when the output is normalised)."""
    matrix = np.stack(vectors).astype(np.float32, copy=False)
    if dimensions is None:
        return matrix
    width = matrix.shape[1]
    if dimensions > width:
        raise ApiError(
            422,
            f"dimensions={dimensions} is more than model {served.name!r} has ({width})",
            code="invalid_dimensions",
            param="dimensions",
        )
    matrix = matrix[:, :dimensions]
    return l2_normalize(matrix) if normalized else matrix


class EmbedService:
    def __init__(self, pipeline: InferencePipeline) -> None:
        self.pipeline = pipeline

    async def embeddings(self, request: EmbeddingRequest, context: RequestContext) -> EmbeddingResponse:
        texts = [request.input] if isinstance(request.input, str) else request.input
        served, outcome = await self.pipeline.run_texts(
            request.model, TASK, texts, EmbedParams(), context, param="input"
        )
        matrix = shorten(outcome.results, request.dimensions, served.runtime.manifest.normalize, served)
        data = []
        for index, vector in enumerate(matrix):
            # A float vector stays a numpy row (constructed, not validated): orjson writes it as is.
            encoded: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                if request.encoding_format == "base64"
                else vector
            )
            data.append(EmbeddingData.model_construct(index=index, embedding=encoded))
        usage = Usage.model_construct(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens)
        return EmbeddingResponse.model_construct(data=data, model=served.name, usage=usage)

    async def embed(self, request: EmbedRequest, context: RequestContext) -> np.ndarray:
        texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
        params = EmbedParams(normalize=request.normalize, truncate=request.truncate)
        served, outcome = await self.pipeline.run_texts(
            request.model, TASK, texts, params, context, param="inputs"
        )
        return shorten(outcome.results, request.dimensions, request.normalize, served)
