"""Question-answering request and response schemas (the Hugging Face inference API's shape)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from distilserve.server.common_protocol import Text


class QuestionContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: Text
    context: Text


class AnswerParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: StrictInt = Field(1, ge=1, le=100, description="answers per input, best first")
    doc_stride: StrictInt | None = Field(
        None,
        ge=1,
        description="overlap, in tokens, between windows of a long context (default min(128, len/2))",
    )
    max_answer_len: StrictInt = Field(15, ge=1, le=512, description="longest answer, in tokens")
    max_question_len: StrictInt = Field(64, ge=1, le=512, description="question tokens kept")
    handle_impossible_answer: StrictBool = Field(
        False, description="allow an empty answer when no span beats it"
    )
    align_to_words: StrictBool = Field(True, description="widen answers to whole words")


class AnswerRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "inputs": {
                    "question": "Where do I live?",
                    "context": "My name is Wolfgang and I live in Berlin.",
                },
                "parameters": {"top_k": 1},
            }
        },
    )

    model: Text | None = Field(None, description="model name; optional when one QA model is served")
    inputs: QuestionContext | list[QuestionContext] = Field(description="one question and context, or a list")
    parameters: AnswerParameters = Field(default_factory=lambda: AnswerParameters())


class AnswerOut(BaseModel):
    answer: str
    score: float
    start: int = Field(description="character offset of the answer in the context")
    end: int
