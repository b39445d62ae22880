"""``distilserve distill --task question-answering``: a SQuAD reader, fine-tuned or distilled.

The same loop as classification (``trainer.train``); what differs is the data (SQuAD windows
with start and end token targets, ``squad.py``), the objective (cross-entropy on the start and
end tokens, or T^2 * KL on the start and end logits against the teacher's cached ones plus that
cross-entropy) and the dev score (exact match and F1 of decoded answers, as run_qa.py decodes
them), which picks the checkpoint kept.

    # the teacher: a base encoder with a new span head, fine-tuned on SQuAD train
    distilserve distill BASE --task question-answering --mode finetune \\
        --train-file squad_v1.1_train.json --dev-file squad_v1.1_dev.json --output runs/reader-teacher
    # the student: three of its layers, distilled from it
    distilserve distill runs/reader-teacher --task question-answering --student-layers 0 2 4 \\
        --train-file squad_v1.1_train.json --dev-file squad_v1.1_dev.json --output runs/reader-student
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distilserve.models.distill.cli import Settings

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 384


def train_question_answering(settings: Settings) -> dict[str, Any]:
    """Run one fine-tuning or distillation job of a reader; returns the record saved as training.json."""
    import torch
    import transformers
    from transformers import AutoModelForQuestionAnswering

    from distilserve.models.distill.run import (
        Job,
        distill_weights,
        environment_record,
        finetuned_model,
        fit,
        has_architecture,
        model_record,
        start_run,
        student_layers,
        teacher_logits,
    )
    from distilserve.models.distill.squad import (
        question_answering_features,
        read_id_list,
        read_squad_questions,
        squad_dev_scores,
        subsample_questions,
    )
    from distilserve.models.distill.student import (
        build_student,
        num_layers,
    )
    from distilserve.models.distill.trainer import (
        EvalRecord,
        Objective,
        QuestionAnsweringDistillObjective,
        QuestionAnsweringFinetuneObjective,
        predict_logits,
        span_logits,
    )

    max_length = settings.max_length or DEFAULT_MAX_LENGTH
    if settings.best_metric in ("accuracy", "agreement"):
        raise ValueError(
            "a reader's checkpoint is picked by dev f1 or exact_match, not " + settings.best_metric
        )
    start = start_run(settings)
    device, tokenizer, pad_token_id = start.device, start.tokenizer, start.pad_token_id
    teacher_dir = settings.teacher

    excluded = read_id_list(settings.exclude_ids_file) if settings.exclude_ids_file else set()
    all_train = read_squad_questions(settings.train_file, exclude_ids=excluded)
    train_questions = subsample_questions(all_train, settings.max_train_samples, settings.seed)
    dev_questions = None
    if settings.dev_file is not None:
        dev_questions = subsample_questions(
            read_squad_questions(settings.dev_file), settings.max_dev_samples, settings.seed
        )

    teacher_config = transformers.AutoConfig.from_pretrained(teacher_dir)
    if settings.mode == "distill" and not has_architecture(teacher_config, "ForQuestionAnswering"):
        raise ValueError(
            f"{teacher_dir} is not a question-answering checkpoint; fine-tune it first "
            "(--mode finetune --task question-answering) to make the teacher"
        )
    # In finetune mode a base encoder gets a new (randomly initialised) span head; the encoder is
    # what we keep.
    teacher = AutoModelForQuestionAnswering.from_pretrained(teacher_dir)

    started = time.perf_counter()
    train_set = question_answering_features(tokenizer, train_questions, max_length, settings.doc_stride)
    dev_set = None
    if dev_questions is not None:
        dev_set = question_answering_features(tokenizer, dev_questions, max_length, settings.doc_stride)
    logger.info(
        "features built",
        extra={
            "train_questions": len(train_questions),
            "train_windows": len(train_set),
            "excluded_ids": len(excluded),
            "dev_questions": 0 if dev_questions is None else len(dev_questions),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )

    def dev_record(model: Any, step: int, epoch: float) -> EvalRecord:
        assert dev_set is not None
        began = time.perf_counter()
        logits = predict_logits(
            model, dev_set, pad_token_id=pad_token_id, device=device, batch_size=64, logits_of=span_logits
        )
        scores = squad_dev_scores(dev_set, logits[:, 0], logits[:, 1])
        return EvalRecord(step, epoch, None, None, time.perf_counter() - began, metrics=scores)

    teacher_layers = num_layers(teacher.config)
    objective: Objective
    teacher_dev: dict[str, float] | None = None
    if settings.mode == "distill":
        layers = student_layers(settings, teacher_layers)
        weights = distill_weights(settings)
        teacher.to(device).eval()
        logits = teacher_logits(
            teacher, teacher_dir, train_set, settings, pad_token_id, device, "train", logits_of=span_logits
        )
        if dev_set is not None:
            dev_logits = teacher_logits(
                teacher, teacher_dir, dev_set, settings, pad_token_id, device, "dev", logits_of=span_logits
            )
            teacher_dev = squad_dev_scores(dev_set, dev_logits[:, 0], dev_logits[:, 1])
        model = build_student(teacher, layers)
        objective = QuestionAnsweringDistillObjective(
            torch.as_tensor(logits, device=device), weights, teacher if weights.cosine > 0 else None
        )
        if weights.cosine == 0:
            del teacher
    else:
        model, layers = finetuned_model(settings, teacher, teacher_layers)
        objective = QuestionAnsweringFinetuneObjective()

    record: dict[str, Any] = {
        "task": "question-answering",
        **model_record(settings, teacher_layers, layers, model),
        "train": {
            "file": str(settings.train_file),
            "questions": len(train_questions),
            "questions_after_exclusion": len(all_train),
            "excluded_ids": len(excluded),
            "windows": len(train_set),
            "tokens": train_set.num_tokens,
        },
        "dev": None
        if dev_set is None
        else {
            "file": str(settings.dev_file),
            "questions": len(dev_set.questions),
            "windows": len(dev_set),
            "teacher": teacher_dev,
        },
        **environment_record(settings, device),
    }
    logger.info(
        "training",
        extra={
            "task": "question-answering",
            "mode": settings.mode,
            "layers": layers,
            "parameters": record["parameters"],
            "train_windows": len(train_set),
            "device": str(device),
            "teacher_dev": teacher_dev,
        },
    )

    return fit(
        Job(
            settings=settings,
            model=model,
            tokenizer=tokenizer,
            train_set=train_set,
            objective=objective,
            record=record,
            device=device,
            pad_token_id=pad_token_id,
            default_metric="f1",
            started=start.started,
            evaluator=dev_record if dev_set is not None else None,
        )
    )
