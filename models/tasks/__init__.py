"""Task processors, one module per task, all behind ``TaskProcessor``."""

from __future__ import annotations

from typing import Any

from distilserve.models.bundle import Manifest, Task
from distilserve.models.tasks.base import Prepared, TaskProcessor
from distilserve.models.tasks.classify import ClassifyParams, ClassifyProcessor, LabelScore
from distilserve.models.tasks.embed import EmbedParams, EmbedProcessor
from distilserve.models.tasks.qa import Answer, QAInput, QAParams, QuestionAnsweringProcessor
from distilserve.models.tokenization import ThreadSafeTokenizer

PROCESSORS: dict[Task, type[TaskProcessor[Any, Any, Any]]] = {
    "text-classification": ClassifyProcessor,
    "question-answering": QuestionAnsweringProcessor,
    "feature-extraction": EmbedProcessor,
}


def processor_for(manifest: Manifest, tokenizer: ThreadSafeTokenizer) -> TaskProcessor[Any, Any, Any]:
    return PROCESSORS[manifest.task](manifest, tokenizer)


__all__ = [
    "PROCESSORS",
    "Answer",
    "ClassifyParams",
    "ClassifyProcessor",
    "EmbedParams",
    "EmbedProcessor",
    "LabelScore",
    "Prepared",
    "QAInput",
    "QAParams",
    "QuestionAnsweringProcessor",
    "TaskProcessor",
    "processor_for",
]
