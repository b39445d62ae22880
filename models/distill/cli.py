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
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, JsonValue
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

# Where the record of a run is written, beside its weights (defined with the steps that write it).

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
    task: Literal["text-classification", "question-answering", "rerank"] = Field(
        "text-classification",
        description=(
            "text-classification: one label per text (TSV/JSON rows); question-answering: extractive "
            "spans, from SQuAD v1.1 JSON files; rerank: a cross-encoder scoring (question, passage) "
            "pairs, trained on lists of SQuAD paragraphs (the positive and hard negatives)"
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
    negatives: int = Field(
        7,
        ge=1,
        description=(
            "rerank: hard negatives per question, the BM25 best other paragraphs of its article "
            "(a list is the positive and these)"
        ),
    )
    corpus_negatives: int = Field(
        0,
        ge=0,
        description=(
            "rerank: how many of --negatives are the BM25 best paragraphs of the whole train file, "
            "other articles included, as a retriever over the corpus finds them (the rest come from "
            "the question's article)"
        ),
    )
    rerank_loss: Literal["listwise", "bce"] = Field(
        "listwise",
        description=(
            "rerank finetune mode: listwise (softmax cross-entropy over each list, the positive the "
            "target) or bce (each pair a binary label)"
        ),
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description=(
            "forward passes in fp32, or under bfloat16 autocast (weights, optimizer and losses stay fp32; "
            "faster where the CPU has AVX512-BF16 or AMX, or on a GPU)"
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
    validation_rows: int | None = Field(
        None,
        ge=1,
        description=(
            "hold out this many seeded training rows as the validation set that --eval-every scores and "
            "the kept checkpoint is chosen on, so that tuning never sees the dev set (instead of --dev-file; "
            "the same seed holds out the same rows in the teacher's and the student's runs)"
        ),
    )
    augment_copies: int = Field(
        0,
        ge=0,
        description=(
            "classification distill mode: add up to N perturbed copies of each training text (masked and "
            "swapped words, n-gram spans) to the transfer set, labelled by the teacher alone"
        ),
    )
    max_dev_samples: int | None = Field(
        None, ge=1, description="score on a seeded random subset of the dev rows"
    )
    eval_every: int = Field(
        0, ge=0, description="also score the dev set every N steps (0: after each epoch only)"
    )
    best_metric: Literal["accuracy", "agreement", "f1", "exact_match", "mrr"] | None = Field(
        None,
        description=(
            "what picks the checkpoint kept: dev accuracy, or agreement with the teacher's dev "
            "predictions (fidelity; also what an unlabelled dev file gives); for question answering, "
            "dev F1 or exact match; for rerank, mrr or accuracy (the positive ranked first) over the "
            "dev lists (default: accuracy, f1 for question answering, mrr for rerank)"
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


def check_options(settings: Settings) -> None:
    """Refuse option combinations that no task accepts, before any file or model is read."""
    if settings.task == "question-answering":
        if settings.validation_rows is not None or settings.augment_copies:
            raise ValueError("--validation-rows and --augment-copies are for text classification")
        return
    if settings.task == "rerank":
        if settings.augment_copies:
            raise ValueError("--augment-copies is for text classification")
        if settings.corpus_negatives > settings.negatives:
            raise ValueError(
                f"--corpus-negatives {settings.corpus_negatives} is more than the list's "
                f"--negatives {settings.negatives}: they are part of them"
            )
        if settings.validation_rows is not None and settings.dev_file is not None:
            raise ValueError(
                "--validation-rows holds out training questions instead of --dev-file: give one of them"
            )
        return
    if settings.validation_rows is not None and settings.dev_file is not None:
        raise ValueError("--validation-rows holds out training rows instead of --dev-file: give one of them")
    if settings.augment_copies and settings.mode != "distill":
        raise ValueError("--augment-copies needs --mode distill: augmented texts are labelled by the teacher")


def train_from_settings(settings: Settings) -> dict[str, Any]:
    """Run one fine-tuning or distillation job; returns the record saved as training.json."""
    check_options(settings)
    if settings.task == "rerank":
        from distilserve.models.distill.rerank import train_reranker

        return train_reranker(settings)
    if settings.task == "question-answering":
        from distilserve.models.distill.question_answering import train_question_answering

        return train_question_answering(settings)
    from distilserve.models.distill.classification import train_classifier

    return train_classifier(settings)


def run(settings: Settings) -> int:
    """Entry point of ``distilserve distill``: 0 on success, 2 for bad input or options."""
    from distilserve.models.distill.data import DataError

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
