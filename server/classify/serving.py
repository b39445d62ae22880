"""Classification logic: protocol requests in, model items out, and back."""

from __future__ import annotations

from typing import Any

from models.bundle import Task
from models.tasks import ClassifyParams, LabelScore
from server.classify.protocol import ClassifyRequest, PredictRequest
from server.inference import RequestContext, ServerState

TASK: Task = "text-classification"


def _label_scores(labels: list[LabelScore]) -> list[dict[str, Any]]:
    return [{"label": entry.label, "score": entry.score} for entry in labels]


class ClassifyService:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def classify(self, request: ClassifyRequest, context: RequestContext) -> dict[str, Any]:
        texts = [request.input] if isinstance(request.input, str) else request.input
        params = ClassifyParams(top_k=request.top_k, raw_scores=request.raw_scores, truncate=request.truncate)
        served, outcome = await self.state.run_texts(
            request.model, TASK, texts, params, context, param="input"
        )
        data = []
        for index, labels in enumerate(outcome.results):
            best = labels[0]
            data.append(
                {"index": index, "label": best.label, "score": best.score, "labels": _label_scores(labels)}
            )
        usage = {"prompt_tokens": outcome.tokens, "total_tokens": outcome.tokens}
        return {"object": "list", "model": served.name, "data": data, "usage": usage}

    async def predict(self, request: PredictRequest, context: RequestContext) -> list[Any]:
        single = isinstance(request.inputs, str)
        texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
        params = ClassifyParams(top_k=request.top_k, raw_scores=request.raw_scores, truncate=request.truncate)
        _, outcome = await self.state.run_texts(request.model, TASK, texts, params, context, param="inputs")
        results = [_label_scores(labels) for labels in outcome.results]
        return results[0] if single else results
