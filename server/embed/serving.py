"""Embedding logic: pooling happens model-side; here, dimensions, normalisation and encodings."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from models.bundle import Task
from models.tasks import EmbedParams
from models.tasks.embed import l2_normalize
from server.embed.protocol import EmbeddingRequest, EmbedRequest
from server.errors import ApiError
from server.inference import RequestContext, ServerState
from server.registry import ServedModel

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
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def _embed(
        self, model: str | None, texts: list[str], params: EmbedParams, context: RequestContext, param: str
    ) -> tuple[ServedModel, list[np.ndarray], int]:
        self.state.check_items(texts, param)
        served = self.state.registry.resolve(model, TASK)
        outcome = await self.state.run_items(served, texts, params, context, param=param)
        return served, outcome.results, outcome.tokens

    async def embeddings(self, request: EmbeddingRequest, context: RequestContext) -> dict[str, Any]:
        texts = [request.input] if isinstance(request.input, str) else request.input
        served, vectors, tokens = await self._embed(request.model, texts, EmbedParams(), context, "input")
        matrix = shorten(vectors, request.dimensions, served.runtime.manifest.normalize, served)
        data: list[dict[str, Any]] = []
        for index, vector in enumerate(matrix):
            encoded: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                if request.encoding_format == "base64"
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": served.name, "usage": usage}

    async def embed(self, request: EmbedRequest, context: RequestContext) -> np.ndarray:
        texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
        params = EmbedParams(normalize=request.normalize, truncate=request.truncate)
        served, vectors, _ = await self._embed(request.model, texts, params, context, "inputs")
        return shorten(vectors, request.dimensions, request.normalize, served)
