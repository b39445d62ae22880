"""Question-answering request and response schemas (the Hugging Face inference API's shape)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from distilserve.server.common_protocol import InputText, PositiveInteger, Text, WholeNumber

# A length in tokens, at most a model's longest input.
TokenCount = Annotated[StrictInt, Field(ge=1, le=512), WholeNumber]


class QuestionContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: InputText
    context: InputText


class AnswerParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: Annotated[StrictInt, Field(ge=1, le=100), WholeNumber] = Field(
        1, description="answers per input, best first"
    )
    doc_stride: PositiveInteger | None = Field(
        None,
        description=(
            "overlap, in tokens, between windows of a long context (default min(128, len/2)); at most"
            " the window, min(384, the model's max_length in /info): larger is a 422 naming doc_stride"
        ),
    )
    max_answer_len: TokenCount = Field(15, description="longest answer, in tokens")
    max_question_len: TokenCount = Field(
        64,
        description=(
            "most tokens a question may have (1 to 512); a longer question is refused, a 422 "
            "invalid_input naming the question (transformers' pipeline truncates it instead: "
            "a cut question is a different question, so it is not answered silently)"
        ),
    )
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
    inputs: QuestionContext | Annotated[list[QuestionContext], Field(min_length=1)] = Field(
        description="one question and context, or a non-empty list"
    )
    parameters: AnswerParameters = Field(default_factory=lambda: AnswerParameters())


class AnswerOut(BaseModel):
    answer: str
    score: float
    start: int = Field(description="character offset of the answer in the context")
    end: int
