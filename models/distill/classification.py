"""``distilserve distill`` for text classification: a classifier fine-tuned on labelled texts
(TSV or JSON rows), or a student distilled from one on its soft targets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from distilserve.models.distill.cli import Settings

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128


def _has_named_labels(config: Any) -> bool:
    id2label = getattr(config, "id2label", None) or {}
    return bool(id2label) and any(name != f"LABEL_{index}" for index, name in id2label.items())


def _is_classifier(config: Any) -> bool:
    return has_architecture(config, "ForSequenceClassification")


def train_classifier(settings: Settings) -> dict[str, Any]:
    """Run one fine-tuning or distillation job of a classifier; returns its record."""
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    from distilserve.models.distill.augment import AugmentOptions, augment_texts
    from distilserve.models.distill.data import (
        concatenate,
        encode,
        infer_label_names,
        label_ids,
        read_examples,
    )
    from distilserve.models.distill.student import (
        build_student,
        num_layers,
    )
    from distilserve.models.distill.trainer import (
        DistillObjective,
        FinetuneObjective,
        Objective,
    )

    start = start_run(settings)
    device, tokenizer, pad_token_id = start.device, start.tokenizer, start.pad_token_id
    teacher_dir = settings.teacher
    max_length = settings.max_length or DEFAULT_MAX_LENGTH
    train_examples = read_examples(
        settings.train_file, text_column=settings.text_column, label_column=settings.label_column
    )
    dev_examples = None
    if settings.validation_rows is not None:
        # Split before subsampling, so the held-out rows depend on the seed alone.
        train_examples, dev_examples = train_examples.split(settings.validation_rows, settings.seed)
    train_examples = train_examples.subsample(settings.max_train_samples, settings.seed)
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
    augmented_rows = 0
    dev_reference = None
    teacher_dev_accuracy = None
    if settings.mode == "distill":
        # Options are checked before the (long) teacher pass, not after it.
        layers = student_layers(settings, teacher_layers)
        weights = distill_weights(settings)
        if weights.beta > 0 and train_set.labels is None:
            raise ValueError("the training file has no labels: distill with --beta 0 (soft targets only)")
        teacher.to(device).eval()
        if settings.augment_copies:
            texts = augment_texts(
                train_examples.texts,
                AugmentOptions(
                    copies=settings.augment_copies, mask_token=tokenizer.mask_token, seed=settings.seed
                ),
            )
            augmented_rows = len(texts)
            train_set = concatenate(train_set, encode(tokenizer, texts, None, max_length))
        logits = teacher_logits(teacher, teacher_dir, train_set, settings, pad_token_id, device, "train")
        if augmented_rows and train_set.labels is not None:
            # The copies' hard labels are the teacher's: a perturbation may have changed the meaning.
            originals = len(train_set) - augmented_rows
            train_set.labels[originals:] = [int(label) for label in logits[originals:].argmax(axis=-1)]
        if dev_set is not None:
            dev_logits = teacher_logits(teacher, teacher_dir, dev_set, settings, pad_token_id, device, "dev")
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
        model, layers = finetuned_model(settings, teacher, teacher_layers)
        objective = FinetuneObjective()

    record: dict[str, Any] = {
        **model_record(settings, teacher_layers, layers, model),
        "labels": names,
        "train": {
            "file": str(settings.train_file),
            "rows": len(train_set),
            "augmented_rows": augmented_rows,
            "tokens": train_set.num_tokens,
        },
        "dev": None
        if dev_set is None
        else {
            "file": str(settings.dev_file or settings.train_file),
            "held_out_from_train": settings.validation_rows is not None,
            "rows": len(dev_set),
            "teacher_accuracy": teacher_dev_accuracy,
        },
        **environment_record(settings, device),
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
            default_metric="accuracy",
            started=start.started,
            dev_set=dev_set,
            dev_reference=dev_reference,
        )
    )
