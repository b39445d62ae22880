"""Loading the source checkpoint of an export: config, fast tokenizer, PyTorch model, and what
follows from them (the task, the length limit, pooling, the classifier's problem type).

Every failure is an ``ExportError`` that names the source and says what to change. torch and
transformers are imported inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

from distilserve.models.bundle import Pooling, ProblemType, Task
from distilserve.models.errors import ExportError
from distilserve.models.export.source import (
    SentenceTransformersInfo,
    Source,
    infer_task,
    resolve_source,
    sentence_transformers_info,
)
from distilserve.models.tasks import TASK_SPECS, task_spec

if TYPE_CHECKING:
    from distilserve.models.export.exporter import ExportOptions

# Tokenizers report this (or larger) as model_max_length when they have no real limit.
NO_TOKENIZER_LIMIT = 1_000_000
# RoBERTa-family position embeddings start after the padding index, so two positions are unusable.
POSITION_OFFSET_MODELS = frozenset({"roberta", "xlm-roberta", "camembert", "longformer"})


@dataclass
class Checkpoint:
    """The loaded source: config, fast tokenizer and PyTorch model, plus derived settings."""

    source: Source
    task: Task
    config: Any
    tokenizer: Any
    model: Any
    max_length: int
    pooling: Pooling | None
    normalize: bool
    problem_type: ProblemType | None


def load_checkpoint(options: ExportOptions) -> Checkpoint:
    source = resolve_source(options.source, options.revision)
    config = _load_config(source)
    st_info = sentence_transformers_info(source)
    task = options.task or infer_task(
        getattr(config, "architectures", None), sentence_transformers=st_info is not None
    )
    if task not in TASK_SPECS:
        raise ExportError(f"unsupported task {task!r}; choose one of {', '.join(get_args(Task))}")
    spec = task_spec(task)
    if spec.check_config is not None:
        problem = spec.check_config(config)
        if problem is not None:
            raise ExportError(f"{source.ref}: {problem}")
    _check_exportable(config.model_type, task)
    tokenizer = _load_tokenizer(source)
    max_length = _max_length(options.max_length, config, tokenizer, st_info)
    pooling: Pooling | None = None
    normalize = False
    if spec.pooling:
        pooling = options.pooling or (st_info.pooling if st_info else "mean")
        normalize = (
            options.normalize if options.normalize is not None else bool(st_info and st_info.normalize)
        )
    model = _load_model(source, task)
    return Checkpoint(
        source=source,
        task=task,
        config=config,
        tokenizer=tokenizer,
        model=model,
        max_length=max_length,
        pooling=pooling,
        normalize=normalize,
        problem_type=_problem_type(config, task),
    )


def _load_config(source: Source) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.ref, revision=source.revision)
    except (OSError, ValueError, KeyError) as exc:
        where = "folder" if source.is_local else "Hugging Face Hub repository"
        raise ExportError(f"{source.ref}: cannot load the model config from this {where} ({exc})") from exc


def _check_exportable(model_type: str, task: Task) -> None:
    exported_as = task_spec(task).optimum_task
    # Importing the ONNX exporter registers its model configs with the TasksManager.
    import optimum.exporters.onnx.model_configs  # noqa: F401
    from optimum.exporters.tasks import TasksManager

    try:
        supported = TasksManager.get_supported_tasks_for_model_type(
            model_type, "onnx", library_name="transformers"
        )
    except KeyError as exc:
        raise ExportError(
            f"unsupported architecture: model type {model_type!r} has no ONNX export in Optimum"
        ) from exc
    if exported_as not in supported:
        raise ExportError(
            f"unsupported architecture: Optimum cannot export a {model_type!r} model for {task} "
            f"(it supports {', '.join(sorted(supported))})"
        )


def _load_tokenizer(source: Source) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.ref, revision=source.revision, use_fast=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{source.ref}: cannot load the tokenizer ({exc})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(
            f"{source.ref}: the tokenizer has no fast (tokenizers) version; the runtime needs tokenizer.json"
        )
    return tokenizer


def _load_model(source: Source, task: Task) -> Any:
    import transformers

    factory = getattr(transformers, task_spec(task).hf_auto_class)
    try:
        model, info = factory.from_pretrained(source.ref, revision=source.revision, output_loading_info=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{source.ref}: cannot load the model weights for {task} ({exc})") from exc
    # A head missing from the checkpoint would be initialized at random and served as if trained.
    # The pooler is the exception: feature-extraction graphs do not output it.
    missing = [key for key in info.get("missing_keys", []) if "pooler" not in key]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ExportError(
            f"{source.ref}: the checkpoint has no weights for {shown}; they would be random. "
            f"Is --task {task} right for this checkpoint?"
        )
    model.eval()
    return model


def _max_length(
    requested: int | None, config: Any, tokenizer: Any, st_info: SentenceTransformersInfo | None
) -> int:
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and config.model_type in POSITION_OFFSET_MODELS:
        positions -= 2
    if requested is not None:
        if positions is not None and requested > positions:
            raise ExportError(f"--max-length {requested} is more than the model's {positions} positions")
        return requested
    limits = [int(positions)] if positions else []
    if st_info is not None and st_info.max_seq_length:
        # sentence-transformers truncates at max_seq_length, and the model was trained that way.
        limits.append(st_info.max_seq_length)
    else:
        model_max_length = getattr(tokenizer, "model_max_length", None)
        if model_max_length and model_max_length < NO_TOKENIZER_LIMIT:
            limits.append(int(model_max_length))
    if not limits:
        raise ExportError("the model sets no length limit (max_position_embeddings); pass --max-length")
    return min(limits)


def _problem_type(config: Any, task: Task) -> ProblemType | None:
    if not task_spec(task).labels:
        return None
    problem_type = getattr(config, "problem_type", None)
    if problem_type is not None:
        if problem_type not in get_args(ProblemType):
            raise ExportError(f"unsupported problem_type {problem_type!r} in config.json")
        return problem_type  # type: ignore[no-any-return]
    # Same rule as the transformers pipeline: one output is scored with a sigmoid, so it is left
    # unset rather than called regression (which the runtime would leave unscored).
    return "single_label_classification" if config.num_labels > 1 else None
