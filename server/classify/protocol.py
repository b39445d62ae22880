"""Classification request and response schemas."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from distilserve.server.common_protocol import Text, TextOrTexts, TopK, Usage


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"input": ["A gripping, beautifully shot film.", "Dull."], "top_k": 2}},
    )

    model: Text | None = Field(
        None, description="model name; optional when one classification model is served"
    )
    input: TextOrTexts = Field(description="one text or a list of texts")
    top_k: TopK | None = Field(
        1,
        description="labels per text, best first (at most 1000; beyond the labels, all); null for all",
    )
    raw_scores: StrictBool = Field(False, description="return logits instead of probabilities")
    truncate: StrictBool = Field(
        True, description="cut texts longer than the model's limit instead of failing"
    )


class LabelScoreOut(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    index: int
    label: str = Field(description="the best label")
    score: float
    labels: list[LabelScoreOut] = Field(description="the top_k labels, best first")


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: Usage


class InferenceParameters(BaseModel):
    """The Hugging Face Inference API's text-classification ``parameters``."""

    model_config = ConfigDict(extra="forbid")

    top_k: TopK | None = Field(None, description="labels per text, best first (at most 1000); null for all")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="softmax (the default) over the logits, a sigmoid of each, or the logits"
    )


class PredictRequest(BaseModel):
    """TEI's ``/predict``: every label comes back, best first, unless ``top_k`` says otherwise.

    With ``parameters`` it is the Hugging Face Inference API's text-classification request, as
    ``huggingface_hub.InferenceClient.text_classification`` sends it, and it is answered in that
    API's shape: one list of labels per input, a single input included (``[[...]]``).
    """

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": {"inputs": "I like you."}})

    inputs: TextOrTexts
    raw_scores: StrictBool = False
    truncate: StrictBool = False
    top_k: TopK | None = Field(None, description="labels per text, best first (at most 1000); null for all")
    model: Text | None = None
    parameters: InferenceParameters | None = Field(
        None,
        description="Hugging Face Inference API parameters; their presence selects that API's answer shape",
    )
