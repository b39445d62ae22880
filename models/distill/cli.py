"""``distilserve distill``: fine-tune a teacher, or distill a teacher into a smaller student.

    # 1. the teacher: a base checkpoint fine-tuned on labelled data (plain cross-entropy)
    distilserve distill BASE_CHECKPOINT --mode finetune --train-file train.tsv --dev-file dev.tsv \\
        --labels negative positive --output runs/teacher
    # 2. the student: every other teacher layer, trained on the teacher's soft targets
    distilserve distill runs/teacher --train-file train.tsv --dev-file dev.tsv --output runs/student

Both write a Hugging Face checkpoint (config with id2label/label2id, weights, tokenizer files)
that ``distilserve export`` takes as it is, plus ``training.json``: the settings, the data, the
dev scores and the timings of the run. Where the ``distilserve`` script is not installed (a bare
checkout), ``python -m distilserve distill`` takes the same options.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, JsonValue
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

TRAINING_RECORD = "training.json"
POSITIONAL: dict[str, JsonValue] = {"cli_positional": True}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILSERVE_DISTILL_", extra="ignore")

    teacher: Path = Field(
        description=(
            "checkpoint folder to start from: in distill mode the fine-tuned teacher (a sequence "
            "classification checkpoint); in finetune mode the base model to fine-tune"
        ),
        json_schema_extra=POSITIONAL,
    )
    task: Literal["text-classification", "question-answering"] = Field(
        "text-classification",
        description=(
            "text-classification: one label per text (TSV/JSON rows); question-answering: extractive "
            "spans, from SQuAD v1.1 JSON files"
        ),
    )
    mode: Literal["distill", "finetune"] = Field(
        "distill",
        description="distill: a student learns the teacher's soft targets; finetune: cross-entropy on labels",
    )
    train_file: Path = Field(description="training data: a .tsv with a header row, or a .json/.jsonl file")
    dev_file: Path | None = Field(
        None, description="labelled dev data, scored after each epoch; the best checkpoint is kept"
    )
    output: Path = Field(description="folder for the trained checkpoint (Hugging Face format)")
    overwrite: bool = Field(False, description="replace the output folder if it exists")
    text_column: str | None = Field(
        None,
        description="text column or field; default: the first of sentence, text, sentence1, content, review",
    )
    label_column: str = Field("label", description="label column or field (class ids or class names)")
    labels: list[str] | None = Field(
        None,
        description=(
            "class names in class-id order, for finetune mode (e.g. negative positive); default: "
            "the checkpoint's own labels, else the names found in the training file"
        ),
    )
    student_layers: list[int] | None = Field(
        None,
        description=(
            "teacher layers the student keeps, e.g. 0 2 4; default in distill mode: every other "
            "layer; in finetune mode: all layers (a list there fine-tunes a truncated model)"
        ),
    )
    temperature: float = Field(2.0, gt=0, description="softmax temperature T of the soft targets")
    alpha: float = Field(0.5, ge=0, description="weight of the soft-target loss T^2 * KL(teacher || student)")
    beta: float = Field(0.5, ge=0, description="weight of the cross-entropy on the labels (distill mode)")
    cosine_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the cosine loss between last hidden states (runs the teacher each step)",
    )
    epochs: int = Field(2, ge=1, description="passes over the training data")
    batch_size: int = Field(32, ge=1, description="training batch size")
    lr: float = Field(5e-5, gt=0, description="peak learning rate (AdamW, linear warm-up then linear decay)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="fraction of the steps spent warming up")
    max_length: int | None = Field(
        None,
        ge=8,
        description=(
            "tokens per training sequence (default 128 for classification, truncated; 384 for question "
            "answering, where longer contexts are cut into overlapping windows)"
        ),
    )
    doc_stride: int = Field(
        128, ge=1, description="question answering: tokens shared by consecutive windows of a long context"
    )
    exclude_ids_file: Path | None = Field(
        None,
        description=(
            "question answering: a file of question ids (one a line) left out of training, e.g. "
            "squad_v1.1_train_ambiguous_ids.txt"
        ),
    )
    max_train_samples: int | None = Field(
        None, ge=1, description="train on a seeded random subset of this many rows"
    )
    max_dev_samples: int | None = Field(
        None, ge=1, description="score on a seeded random subset of the dev rows"
    )
    eval_every: int = Field(
        0, ge=0, description="also score the dev set every N steps (0: after each epoch only)"
    )
    best_metric: Literal["accuracy", "agreement", "f1", "exact_match"] | None = Field(
        None,
        description=(
            "what picks the checkpoint kept: dev accuracy, or agreement with the teacher's dev "
            "predictions (fidelity; also what an unlabelled dev file gives); for question answering, "
            "dev F1 or exact match (default: accuracy, f1 for question answering)"
        ),
    )
    freeze_embeddings: bool = Field(
        False, description="keep the word embeddings fixed (faster steps; rare words keep pretrained vectors)"
    )
    seed: int = Field(42, description="seed for subsampling, batch order, dropout and initialisation")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the GPU when one is present")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default, one per core)")
    cache_dir: Path = Field(
        Path(".distilserve/cache/distill"), description="where teacher logits are cached between runs"
    )
    checkpoint_every: int = Field(
        500,
        ge=0,
        description=(
            "save the resumable training state every N steps and at each epoch's end, in OUTPUT.state/ "
            "(0: never)"
        ),
    )
    resume: bool = Field(
        False, description="continue from the training state in OUTPUT.state/ (same data and options)"
    )
    progress: bool = Field(True, description="show progress bars")
    log_level: str = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field("text", description="log line format")


def _has_named_labels(config: Any) -> bool:
    id2label = getattr(config, "id2label", None) or {}
    return bool(id2label) and any(name != f"LABEL_{index}" for index, name in id2label.items())


def _is_classifier(config: Any) -> bool:
    return any(
        name.endswith("ForSequenceClassification") for name in (getattr(config, "architectures", None) or [])
    )


def _write_checkpoint(model: Any, tokenizer: Any, output: Path, record: dict[str, Any]) -> None:
    """Save weights, config and tokenizer into ``output`` all at once (never half-written)."""
    from models.bundle import atomic_bundle_dir

    with atomic_bundle_dir(output, overwrite=True) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / TRAINING_RECORD).write_text(
            json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8"
        )


def _teacher_logits(
    teacher: Any,
    teacher_dir: Path,
    data: Any,
    settings: Settings,
    pad_token_id: int,
    device: Any,
    what: str,
    logits_of: Any = None,
) -> Any:
    """Teacher logits for every row, computed once and cached on disk by content.

    ``logits_of`` picks the logits from the model's output (default: a classifier's).
    """
    import numpy as np

    from models.distill.data import (
        checkpoint_fingerprint,
        data_fingerprint,
        fingerprint,
        load_cached_logits,
        save_cached_logits,
    )
    from models.distill.trainer import classification_logits, predict_logits

    key = fingerprint(checkpoint_fingerprint(teacher_dir), data_fingerprint(data))
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
    import shutil

    (output / TRAINING_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    shutil.rmtree(state_dir(settings), ignore_errors=True)


def train_from_settings(settings: Settings) -> dict[str, Any]:
    """Run one fine-tuning or distillation job; returns the record saved as training.json."""
    if settings.task == "question-answering":
        from models.distill.question_answering import train_question_answering

        return train_question_answering(settings)
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from models.distill.data import encode, infer_label_names, label_ids, read_examples
    from models.distill.losses import DistillWeights
    from models.distill.student import (
        build_student,
        count_parameters,
        default_student_layers,
        num_layers,
        validate_layers,
    )
    from models.distill.trainer import (
        DistillObjective,
        FinetuneObjective,
        Objective,
        TrainOptions,
        resolve_device,
        seed_everything,
        train,
    )

    run_started = time.perf_counter()
    output = settings.output
    check_output(settings)
    max_length = settings.max_length or 128
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    seed_everything(settings.seed)
    teacher_dir = settings.teacher
    if not (teacher_dir / "config.json").is_file():
        raise ValueError(f"{teacher_dir} is not a Hugging Face checkpoint folder (no config.json)")

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_examples = read_examples(
        settings.train_file, text_column=settings.text_column, label_column=settings.label_column
    )
    train_examples = train_examples.subsample(settings.max_train_samples, settings.seed)
    dev_examples = None
    if settings.dev_file is not None:
        dev_examples = read_examples(
            settings.dev_file, text_column=settings.text_column, label_column=settings.label_column
        ).subsample(settings.max_dev_samples, settings.seed)

    teacher_config = transformers.AutoConfig.from_pretrained(teacher_dir)
    if settings.mode == "distill":
        if not _is_classifier(teacher_config):
            raise ValueError(
                f"{teacher_dir} is not a sequence classification checkpoint; fine-tune it first "
                "(--mode finetune) to make the teacher"
            )
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
        names = [teacher.config.id2label[index] for index in range(teacher.config.num_labels)]
        if settings.labels is not None and list(settings.labels) != names:
            raise ValueError(f"--labels {settings.labels} differ from the teacher's labels {names}")
    else:
        if settings.labels is not None:
            names = list(settings.labels)
        elif _is_classifier(teacher_config) and _has_named_labels(teacher_config):
            names = [teacher_config.id2label[index] for index in range(teacher_config.num_labels)]
        else:
            names = infer_label_names(train_examples)
        teacher = AutoModelForSequenceClassification.from_pretrained(
            teacher_dir,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: index for index, name in enumerate(names)},
            # A classifier with another label set gets a new head; the encoder is what we keep.
            ignore_mismatched_sizes=True,
        )
    label2id = {name: index for index, name in enumerate(names)}
    train_set = encode(
        tokenizer, train_examples.texts, label_ids(train_examples, label2id, len(names)), max_length
    )
    dev_set = None
    if dev_examples is not None:
        dev_set = encode(
            tokenizer, dev_examples.texts, label_ids(dev_examples, label2id, len(names)), max_length
        )

    teacher_layers = num_layers(teacher.config)
    objective: Objective
    dev_reference = None
    teacher_dev_accuracy = None
    if settings.mode == "distill":
        layers = settings.student_layers or default_student_layers(teacher_layers)
        # Options are checked before the (long) teacher pass, not after it.
        weights = DistillWeights(
            temperature=settings.temperature,
            alpha=settings.alpha,
            beta=settings.beta,
            cosine=settings.cosine_weight,
        )
        if weights.beta > 0 and train_set.labels is None:
            raise ValueError("the training file has no labels: distill with --beta 0 (soft targets only)")
        validate_layers(layers, teacher_layers)
        teacher.to(device).eval()
        logits = _teacher_logits(teacher, teacher_dir, train_set, settings, pad_token_id, device, "train")
        if dev_set is not None:
            dev_logits = _teacher_logits(teacher, teacher_dir, dev_set, settings, pad_token_id, device, "dev")
            dev_reference = dev_logits.argmax(axis=-1)
            if dev_set.labels is not None:
                teacher_dev_accuracy = float(np.mean(dev_reference == np.asarray(dev_set.labels)))
        model = build_student(teacher, layers)
        objective = DistillObjective(
            torch.as_tensor(logits, device=device), weights, teacher if weights.cosine > 0 else None
        )
        if weights.cosine == 0:
            del teacher  # its logits are all the loss needs; free the memory
    else:
        if train_set.labels is None:
            raise ValueError(f"{settings.train_file} has no {settings.label_column!r} labels to fine-tune on")
        layers = settings.student_layers or list(range(teacher_layers))
        model = teacher if len(layers) == teacher_layers else build_student(teacher, layers)
        objective = FinetuneObjective()
    if settings.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)

    record: dict[str, Any] = {
        "mode": settings.mode,
        "teacher": str(teacher_dir),
        "teacher_layers": teacher_layers,
        "student_layers": layers,
        "labels": names,
        "parameters": count_parameters(model),
        "train": {"file": str(settings.train_file), "rows": len(train_set), "tokens": train_set.num_tokens},
        "dev": None
        if dev_set is None
        else {"file": str(settings.dev_file), "rows": len(dev_set), "teacher_accuracy": teacher_dev_accuracy},
        "settings": settings.model_dump(mode="json"),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    logger.info(
        "training",
        extra={
            "mode": settings.mode,
            "layers": layers,
            "parameters": record["parameters"],
            "train_rows": len(train_set),
            "device": str(device),
            "teacher_dev_accuracy": teacher_dev_accuracy,
        },
    )

    def save(best: Any) -> None:
        record["best"] = None if best is None else vars(best)
        _write_checkpoint(model, tokenizer, output, record)

    options = TrainOptions(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_ratio=settings.warmup_ratio,
        eval_every=settings.eval_every,
        best_metric=settings.best_metric or "accuracy",
        seed=settings.seed,
        progress=settings.progress,
        checkpoint_dir=state_dir(settings),
        checkpoint_every=settings.checkpoint_every,
        resume=settings.resume,
    )
    result = train(
        model,
        train_set,
        objective,
        options,
        pad_token_id=pad_token_id,
        device=device,
        dev_set=dev_set,
        dev_reference=dev_reference,
        on_best=save,
    )
    if dev_set is not None and result.best is None:
        # Never better than the untrained model (a broken run): still leave a checkpoint.
        save(None)
    record["result"] = result.to_dict()
    record["wall_seconds"] = round(time.perf_counter() - run_started, 1)
    finish_record(output, record, settings)
    return record


def run(settings: Settings) -> int:
    """Entry point of ``distilserve distill``: 0 on success, 2 for bad input or options."""
    from models.distill.data import DataError

    try:
        record = train_from_settings(settings)
    except (DataError, ValueError) as exc:
        print(f"distilserve distill: {exc}", file=sys.stderr)
        return 2
    best = record.get("best") or {}
    summary = {
        "output": str(settings.output),
        "mode": record["mode"],
        "student_layers": record["student_layers"],
        "parameters": record["parameters"],
        "dev_accuracy": best.get("accuracy"),
        "dev_metrics": best.get("metrics") or None,
        "teacher_agreement": best.get("agreement"),
        "teacher_dev_accuracy": (record.get("dev") or {}).get("teacher_accuracy"),
        "train_seconds": round(record["result"]["train_seconds"], 1),
        "wall_seconds": record["wall_seconds"],
    }
    print(json.dumps(summary))
    return 0
