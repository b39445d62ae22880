"""Classification logic: protocol requests in, model items out, and back."""

from __future__ import annotations

import math

from distilserve.models.bundle import Task
from distilserve.models.tasks import ClassifyParams, LabelScore
from distilserve.server.admission import RequestContext
from distilserve.server.classify.protocol import (
    Classification,
    ClassifyRequest,
    ClassifyResponse,
    LabelScoreOut,
    PredictRequest,
)
from distilserve.server.common_protocol import Usage
from distilserve.server.pipeline import InferencePipeline

TASK: Task = "text-classification"


def _label_scores(labels: list[LabelScore]) -> list[LabelScoreOut]:
    return [LabelScoreOut.model_construct(label=entry.label, score=entry.score) for entry in labels]


class ClassifyService:
    def __init__(self, pipeline: InferencePipeline) -> None:
        self.pipeline = pipeline

    async def classify(self, request: ClassifyRequest, context: RequestContext) -> ClassifyResponse:
        texts = [request.input] if isinstance(request.input, str) else request.input
        params = ClassifyParams(top_k=request.top_k, raw_scores=request.raw_scores, truncate=request.truncate)
        served, outcome = await self.pipeline.run_texts(
            request.model, TASK, texts, params, context, param="input"
        )
        data = [
            Classification.model_construct(
                index=index, label=labels[0].label, score=labels[0].score, labels=_label_scores(labels)
            )
            for index, labels in enumerate(outcome.results)
        ]
        usage = Usage.model_construct(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens)
        return ClassifyResponse.model_construct(model=served.name, data=data, usage=usage)

    async def predict(
        self, request: PredictRequest, context: RequestContext
    ) -> list[LabelScoreOut] | list[list[LabelScoreOut]]:
        texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
        inference_api = request.parameters
        top_k, raw_scores = request.top_k, request.raw_scores
        if inference_api is not None:
            top_k = inference_api.top_k if inference_api.top_k is not None else top_k
            raw_scores = inference_api.function_to_apply in ("none", "sigmoid")
        params = ClassifyParams(top_k=top_k, raw_scores=raw_scores, truncate=request.truncate)
        _, outcome = await self.pipeline.run_texts(
            request.model, TASK, texts, params, context, param="inputs"
        )
        if inference_api is not None and inference_api.function_to_apply == "sigmoid":
            # A sigmoid keeps the logits' order, so the top_k already chosen stay the top_k.
            results = [
                [
                    LabelScoreOut.model_construct(label=entry.label, score=_sigmoid(entry.score))
                    for entry in labels
                ]
                for labels in outcome.results
            ]
        else:
            results = [_label_scores(labels) for labels in outcome.results]
        if inference_api is not None:
            return results  # the Inference API nests even a single input's labels
        return results[0] if isinstance(request.inputs, str) else results


def _sigmoid(logit: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * logit))  # 1 / (1 + e^-x), without overflow for large |x|
