"""The tasks, one module each (processor and ``TaskSpec``), registered once here.

``TASK_SPECS`` is the one registration of a model-side task: the runtime picks processors from
it, the export reads its head, samples and agreement metrics from it. Adding a task is its
module, its name in ``distilserve.models.bundle.Task`` and a line below (docs/architecture.md,
"Adding a task").
"""

from __future__ import annotations

from typing import Any, get_args

from distilserve.models.bundle import Manifest, Task
from distilserve.models.tasks import classify, embed, qa, rerank
from distilserve.models.tasks.base import Prepared, TaskProcessor, TaskSpec
from distilserve.models.tasks.classify import ClassifyParams, ClassifyProcessor, LabelScore
from distilserve.models.tasks.embed import EmbedParams, EmbedProcessor
from distilserve.models.tasks.qa import Answer, QAInput, QAParams, QuestionAnsweringProcessor
from distilserve.models.tasks.rerank import RerankPair, RerankParams, RerankProcessor
from distilserve.models.tokenization import ThreadSafeTokenizer

TASK_SPECS: dict[Task, TaskSpec] = {
    spec.name: spec for spec in (classify.SPEC, qa.SPEC, embed.SPEC, rerank.SPEC)
}
if set(TASK_SPECS) != set(get_args(Task)):
    raise RuntimeError(
        f"the registered tasks {sorted(TASK_SPECS)} are not the bundle's tasks {sorted(get_args(Task))}"
    )

PROCESSORS: dict[Task, type[TaskProcessor[Any, Any, Any]]] = {
    name: spec.processor for name, spec in TASK_SPECS.items()
}


def task_spec(task: str) -> TaskSpec:
    """The declaration of ``task``; a ``KeyError`` naming the known tasks for any other name."""
    try:
        return TASK_SPECS[task]  # type: ignore[index]
    except KeyError:
        raise KeyError(f"unknown task {task!r}; the tasks are {', '.join(TASK_SPECS)}") from None


def processor_for(manifest: Manifest, tokenizer: ThreadSafeTokenizer) -> TaskProcessor[Any, Any, Any]:
    return PROCESSORS[manifest.task](manifest, tokenizer)


__all__ = [
    "PROCESSORS",
    "TASK_SPECS",
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
    "RerankPair",
    "RerankParams",
    "RerankProcessor",
    "TaskProcessor",
    "TaskSpec",
    "processor_for",
    "task_spec",
]
