"""The steps every training run shares, whatever its task: the output folder, the teacher-logit
cache, the record of the run (``training.json``), the loop with its best-checkpoint saving, and
the resumable state beside the output.

The task modules (``classification.py``, ``question_answering.py``, ``rerank.py``) build the data, the model
and the objective; ``fit`` runs them through ``trainer.train`` and writes the result.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from distilserve.models.distill.cli import Settings
    from distilserve.models.distill.data import EncodedSet, TrainingRows
    from distilserve.models.distill.losses import DistillWeights
    from distilserve.models.distill.trainer import Evaluator, Objective

logger = logging.getLogger(__name__)

TRAINING_RECORD = "training.json"


def write_checkpoint(model: Any, tokenizer: Any, output: Path, record: dict[str, Any]) -> None:
    """Save weights, config and tokenizer into ``output`` all at once (never half-written)."""
    from distilserve.models.bundle import atomic_bundle_dir

    with atomic_bundle_dir(output, overwrite=True) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / TRAINING_RECORD).write_text(
            json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8"
        )


def teacher_logits(
    teacher: Any,
    teacher_dir: Path,
    data: Any,
    settings: Settings,
    pad_token_id: int,
    device: Any,
    what: str,
    logits_of: Callable[[Any], torch.Tensor] | None = None,
) -> Any:
    """Teacher logits for every row, computed once and cached on disk by content.

    ``logits_of`` picks the logits from the model's output (default: a classifier's).
    """
    import numpy as np

    from distilserve.models.distill.data import (
        checkpoint_fingerprint,
        data_fingerprint,
        fingerprint,
        load_cached_logits,
        save_cached_logits,
    )
    from distilserve.models.distill.trainer import classification_logits, predict_logits

    bf16 = settings.precision == "bf16"
    # bf16 logits are other numbers: their own cache entry (fp32 keys are unchanged).
    key = fingerprint(
        checkpoint_fingerprint(teacher_dir), data_fingerprint(data), *(["bf16"] if bf16 else [])
    )
    path = settings.cache_dir / f"teacher-logits-{key}.npy"
    cached = load_cached_logits(path, len(data))
    if cached is not None:
        logger.info("teacher logits from cache", extra={"data": what, "rows": len(data), "path": str(path)})
        return cached
    started = time.perf_counter()
    logits = predict_logits(
        teacher,
        data,
        pad_token_id=pad_token_id,
        device=device,
        batch_size=128,
        progress=settings.progress,
        description=f"teacher logits ({what})",
        logits_of=logits_of or classification_logits,
        bf16=bf16,
    )
    save_cached_logits(path, logits)
    logger.info(
        "teacher logits computed",
        extra={
            "data": what,
            "rows": len(data),
            "seconds": round(time.perf_counter() - started, 1),
            "path": str(path),
        },
    )
    return np.asarray(logits)


def has_architecture(config: Any, suffix: str) -> bool:
    """Whether a checkpoint's config names a model class ending in ``suffix`` (its head)."""
    return any(name.endswith(suffix) for name in (getattr(config, "architectures", None) or []))


def check_output(settings: Settings) -> None:
    """Refuse to overwrite a finished run by accident; a resumed run writes where it wrote."""
    output = settings.output
    if output.exists() and any(output.iterdir()) and not (settings.overwrite or settings.resume):
        raise ValueError(f"{output} exists and is not empty; pass --overwrite to replace it")


def state_dir(settings: Settings) -> Path:
    """Where the resumable training state of a run lives: beside its output, not inside it
    (the output folder is replaced whole each time a better checkpoint is written)."""
    return settings.output.with_name(settings.output.name + ".state")


def finish_record(output: Path, record: dict[str, Any], settings: Settings) -> None:
    """Write the final record (with the whole history) over the one saved with the best weights,
    and drop the resumable state, which a finished run no longer needs."""
    (output / TRAINING_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    shutil.rmtree(state_dir(settings), ignore_errors=True)


@dataclass(frozen=True)
class RunStart:
    """What every run sets up first: the clock, the device and the teacher's tokenizer."""

    started: float
    device: Any
    tokenizer: Any
    pad_token_id: int


def start_run(settings: Settings) -> RunStart:
    """Check the output and the teacher folder, set threads and seeds, load the tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from distilserve.models.distill.trainer import resolve_device, seed_everything

    started = time.perf_counter()
    check_output(settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    seed_everything(settings.seed)
    if not (settings.teacher / "config.json").is_file():
        raise ValueError(f"{settings.teacher} is not a Hugging Face checkpoint folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(settings.teacher)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return RunStart(started, device, tokenizer, pad_token_id)


def distill_weights(settings: Settings) -> DistillWeights:
    from distilserve.models.distill.losses import DistillWeights

    return DistillWeights(
        temperature=settings.temperature,
        alpha=settings.alpha,
        beta=settings.beta,
        cosine=settings.cosine_weight,
    )


def student_layers(settings: Settings, teacher_layers: int) -> list[int]:
    """The layers a distilled student keeps: the chosen ones, or every other layer."""
    from distilserve.models.distill.student import default_student_layers, validate_layers

    return validate_layers(settings.student_layers or default_student_layers(teacher_layers), teacher_layers)


def finetuned_model(settings: Settings, base: Any, teacher_layers: int) -> tuple[Any, list[int]]:
    """Fine-tuning trains the base model itself, or a truncated copy when layers are chosen."""
    from distilserve.models.distill.student import build_student

    layers = settings.student_layers or list(range(teacher_layers))
    return (base if len(layers) == teacher_layers else build_student(base, layers)), layers


def model_record(settings: Settings, teacher_layers: int, layers: list[int], model: Any) -> dict[str, Any]:
    """What a record says of the model: where it started, which layers, how many parameters."""
    from distilserve.models.distill.student import count_parameters

    return {
        "mode": settings.mode,
        "teacher": str(settings.teacher),
        "teacher_layers": teacher_layers,
        "student_layers": layers,
        "parameters": count_parameters(model),
    }


def environment_record(settings: Settings, device: Any) -> dict[str, Any]:
    """What a record says of every run: its settings, where it ran and with which libraries."""
    import torch
    import transformers

    return {
        "settings": settings.model_dump(mode="json"),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }


@dataclass
class Job:
    """One prepared run: what ``fit`` trains and where it writes."""

    settings: Settings
    model: Any
    tokenizer: Any
    train_set: TrainingRows
    objective: Objective
    record: dict[str, Any]
    device: Any
    pad_token_id: int
    default_metric: str
    started: float
    dev_set: EncodedSet | None = None
    dev_reference: Any = None
    evaluator: Evaluator | None = None


def fit(job: Job) -> dict[str, Any]:
    """Train, keeping the best checkpoint by the dev score; returns the final record."""
    from distilserve.models.distill.trainer import TrainOptions, train

    settings = job.settings
    if settings.freeze_embeddings:
        job.model.get_input_embeddings().weight.requires_grad_(False)

    def save(best: Any) -> None:
        job.record["best"] = None if best is None else vars(best)
        write_checkpoint(job.model, job.tokenizer, settings.output, job.record)

    options = TrainOptions(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_ratio=settings.warmup_ratio,
        eval_every=settings.eval_every,
        best_metric=settings.best_metric or job.default_metric,
        seed=settings.seed,
        progress=settings.progress,
        checkpoint_dir=state_dir(settings),
        checkpoint_every=settings.checkpoint_every,
        resume=settings.resume,
        bf16=settings.precision == "bf16",
    )
    result = train(
        job.model,
        job.train_set,
        job.objective,
        options,
        pad_token_id=job.pad_token_id,
        device=job.device,
        dev_set=job.dev_set,
        dev_reference=job.dev_reference,
        evaluator=job.evaluator,
        on_best=save,
    )
    if (job.dev_set is not None or job.evaluator is not None) and result.best is None:
        # Never better than the untrained model (a broken run): still leave a checkpoint.
        save(None)
    job.record["result"] = result.to_dict()
    job.record["wall_seconds"] = round(time.perf_counter() - job.started, 1)
    finish_record(settings.output, job.record, settings)
    return job.record
