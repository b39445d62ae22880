"""The one training loop, shared by ``finetune`` and ``distill``.

What differs between the two modes is only the objective (plain cross-entropy on labels, or the
distillation loss against cached teacher logits); the loop itself (length-grouped batches,
AdamW with linear warm-up and decay, gradient clipping, progress bar, dev evaluation, keeping
the best checkpoint) is this module's ``train``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distilserve.models.distill.data import (
    EncodedSet,
    TrainingRows,
    collate,
    length_grouped_batches,
    sorted_batches,
)
from distilserve.models.distill.losses import DistillWeights, distillation_loss, span_rows

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Padding positions of span logits: softmax gives them exact zeros (the QA pipeline's own fill).
MASKED_LOGIT = -10000.0


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators (dropout masks, classifier initialisation)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no GPU")
    return torch.device(name)


def autocast(device: torch.device, bf16: bool) -> Any:
    """bfloat16 autocast on the device when ``bf16``, else a no-op context.

    On a CPU with AVX512-BF16 (no AMX) it made a MiniLM cross-encoder's training steps about 1.8x
    faster at 192 tokens (docs in model-zoo/squad-reranker/MODEL_CARD.md); losses are taken in fp32.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in batch.items() if name in MODEL_INPUTS}


class Objective(Protocol):
    """The loss of one batch of rows (``indices`` index the training set, for cached targets)."""

    def __call__(
        self, model: Any, batch: dict[str, torch.Tensor], indices: list[int]
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class FinetuneObjective:
    """Cross-entropy on the labels: how a teacher is made."""

    def __call__(
        self, model: Any, batch: dict[str, torch.Tensor], indices: list[int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if "labels" not in batch:
            raise ValueError("fine-tuning needs labels; the training file has none")
        logits = model(**model_inputs(batch)).logits
        loss = F.cross_entropy(logits, batch["labels"])
        return loss, {"ce": float(loss.detach())}


class DistillObjective:
    """The distillation loss against teacher logits computed once, before training.

    The cosine term needs the teacher's hidden states, which are too large to cache (tokens x
    width floats per row), so with ``weights.cosine > 0`` the teacher also runs on every batch.
    Subclasses say how a batch's logits and targets are shaped (``logits_and_targets``).
    """

    def __init__(self, teacher_logits: torch.Tensor, weights: DistillWeights, teacher: Any = None) -> None:
        if weights.cosine > 0 and teacher is None:
            raise ValueError("the cosine loss needs the teacher model")
        self.teacher_logits = teacher_logits
        self.weights = weights
        self.teacher = teacher

    def logits_and_targets(
        self, outputs: Any, batch: dict[str, torch.Tensor], cached: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Student logits, teacher logits and labels, as rows of one softmax each."""
        return outputs.logits, cached, batch.get("labels")

    def __call__(
        self, model: Any, batch: dict[str, torch.Tensor], indices: list[int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = model_inputs(batch)
        use_hidden = self.weights.cosine > 0
        outputs = model(**inputs, output_hidden_states=use_hidden)
        student_hidden = teacher_hidden = None
        if use_hidden:
            with torch.no_grad():
                teacher_hidden = self.teacher(**inputs, output_hidden_states=True).hidden_states[-1]
            student_hidden = outputs.hidden_states[-1]
        cached = self.teacher_logits[torch.as_tensor(indices, device=self.teacher_logits.device)]
        student, target, labels = self.logits_and_targets(outputs, batch, cached)
        return distillation_loss(
            student,
            target,
            labels,
            self.weights,
            student_hidden=student_hidden,
            teacher_hidden=teacher_hidden,
            attention_mask=batch["attention_mask"],
        )


def classification_logits(outputs: Any) -> torch.Tensor:
    """``(batch, labels)``: a sequence classifier's logits."""
    logits: torch.Tensor = outputs.logits
    return logits


def span_logits(outputs: Any) -> torch.Tensor:
    """``(batch, 2, tokens)``: a question-answering model's start and end logits."""
    return torch.stack([outputs.start_logits, outputs.end_logits], dim=1)


def mask_padding(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Span logits with padding tokens at ``MASKED_LOGIT``, so they weigh nothing in a softmax."""
    return logits.masked_fill(~attention_mask.bool()[:, None, :], MASKED_LOGIT)


class QuestionAnsweringFinetuneObjective:
    """Cross-entropy on the start and end tokens, averaged: how a reader is made."""

    def __call__(
        self, model: Any, batch: dict[str, torch.Tensor], indices: list[int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = model(**model_inputs(batch))
        logits = mask_padding(span_logits(outputs), batch["attention_mask"])
        targets = span_rows(batch["start_positions"], batch["end_positions"])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets)
        return loss, {"ce": float(loss.detach())}


class QuestionAnsweringDistillObjective(DistillObjective):
    """The distillation loss on start and end logits, against cached teacher span logits.

    ``teacher_logits`` is ``(rows, 2, max_length)`` with padding at ``MASKED_LOGIT``; each batch
    takes its rows cut to the batch's width. The start and end distributions are two rows of
    the same loss (``span_rows``), so T^2 * KL and the cross-entropy average over both.
    """

    def logits_and_targets(
        self, outputs: Any, batch: dict[str, torch.Tensor], cached: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mask = batch["attention_mask"]
        width = mask.shape[1]
        target = mask_padding(cached[:, :, :width], mask)
        student = mask_padding(span_logits(outputs), mask)
        labels = None
        if "start_positions" in batch:
            labels = span_rows(batch["start_positions"], batch["end_positions"])
        return student.reshape(-1, width), target.reshape(-1, width), labels


def relevance_lists(logits: torch.Tensor, list_size: int) -> torch.Tensor:
    """A cross-encoder's ``(pairs, 1)`` relevance logits as ``(lists, list_size)`` rows, in fp32
    (the pairs are list-major, ``rerank.RerankLists``)."""
    return logits.float().reshape(-1, list_size)


class RerankDistillObjective(DistillObjective):
    """The distillation loss on each list's relevance scores, against the teacher's cached list
    scores ``(lists, list_size)``: the positive (column 0) is the label of the listwise
    cross-entropy. With ``weights.cosine`` the teacher runs on every batch for the cosine between
    the last hidden states of every pair, DistilBERT's third term."""

    def __init__(
        self, teacher_logits: torch.Tensor, weights: DistillWeights, list_size: int, teacher: Any = None
    ) -> None:
        super().__init__(teacher_logits, weights, teacher)
        self.list_size = list_size

    def logits_and_targets(
        self, outputs: Any, batch: dict[str, torch.Tensor], cached: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        scores = relevance_lists(outputs.logits, self.list_size)
        positives = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return scores, cached, positives


def _pad_last_axis(rows: list[np.ndarray], fill: float) -> np.ndarray:
    """Stack rows whose last axis differs (span logits of windows of different lengths)."""
    width = max(row.shape[-1] for row in rows)
    if all(row.shape[-1] == width for row in rows):
        return np.stack(rows)
    stacked = np.full((len(rows), *rows[0].shape[:-1], width), fill, dtype=rows[0].dtype)
    for index, row in enumerate(rows):
        stacked[index, ..., : row.shape[-1]] = row
    return stacked


@torch.inference_mode()
def predict_logits(
    model: Any,
    data: EncodedSet,
    *,
    pad_token_id: int,
    device: torch.device,
    batch_size: int = 64,
    progress: bool = False,
    description: str = "predict",
    logits_of: Callable[[Any], torch.Tensor] = classification_logits,
    bf16: bool = False,
) -> np.ndarray:
    """Logits in row order, from length-sorted batches.

    ``(rows, labels)`` for a classifier; ``(rows, 2, longest row)`` for a reader
    (``logits_of=span_logits``), with every row's padding at ``MASKED_LOGIT``. ``bf16`` runs the
    model under bfloat16 autocast (``TrainOptions.bf16``).
    """
    was_training = model.training
    model.eval()
    outputs: list[np.ndarray] = [np.empty(0)] * len(data)
    for indices in tqdm(
        sorted_batches(data.lengths, batch_size),
        desc=description,
        disable=not progress,
        leave=False,
        unit="batch",
    ):
        batch = collate(data, indices, pad_token_id, device)
        with autocast(device, bf16):
            logits = logits_of(model(**model_inputs(batch)))
        for index, row, length in zip(
            indices, logits.float().cpu().numpy(), batch["attention_mask"].sum(dim=1).tolist(), strict=True
        ):
            # Each row cut to its own tokens (right padding: they come first); a batch's padding is
            # not the row's, and _pad_last_axis fills what rows lack with MASKED_LOGIT.
            outputs[index] = row[..., :length] if row.ndim == 2 else row
    model.train(was_training)
    return _pad_last_axis(outputs, MASKED_LOGIT)


@dataclass
class TrainOptions:
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    eval_every: int = 0
    eval_batch_size: int = 64
    best_metric: str = "accuracy"
    seed: int = 42
    progress: bool = True
    # Where the resumable training state goes (None: nowhere), and how often, in steps.
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0
    # Continue from the state in checkpoint_dir when there is one.
    resume: bool = False
    # Forward passes under bfloat16 autocast (weights, optimizer and losses stay fp32).
    bf16: bool = False


@dataclass
class EvalRecord:
    step: int
    epoch: float
    accuracy: float | None
    agreement: float | None
    seconds: float
    # Task metrics beyond the classifier's two (a reader's exact_match and f1).
    metrics: dict[str, float] = field(default_factory=dict)

    def score(self, metric: str = "accuracy") -> float | None:
        """What "best" means: dev accuracy, or agreement with the teacher's dev predictions.

        Either falls back to the other when it is missing (a dev file without labels has no
        accuracy; fine-tuning has no teacher to agree with). A task metric is used by name.
        """
        if metric in self.metrics:
            return self.metrics[metric]
        first, second = (
            (self.accuracy, self.agreement) if metric == "accuracy" else (self.agreement, self.accuracy)
        )
        return first if first is not None else second


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    train_samples_per_second: float
    final_loss: float
    evaluations: list[EvalRecord] = field(default_factory=list)
    best: EvalRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    model: Any,
    dev: EncodedSet,
    *,
    pad_token_id: int,
    device: torch.device,
    batch_size: int,
    reference_predictions: np.ndarray | None,
    step: int,
    epoch: float,
) -> EvalRecord:
    started = time.perf_counter()
    predictions = predict_logits(model, dev, pad_token_id=pad_token_id, device=device, batch_size=batch_size)
    predicted = predictions.argmax(axis=-1)
    accuracy = None if dev.labels is None else float(np.mean(predicted == np.asarray(dev.labels)))
    agreement = None if reference_predictions is None else float(np.mean(predicted == reference_predictions))
    return EvalRecord(step, epoch, accuracy, agreement, time.perf_counter() - started)


def _optimizer(model: Any, options: TrainOptions) -> torch.optim.Optimizer:
    # The usual BERT recipe: no weight decay on biases and LayerNorm weights.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(
            parameter
        )
    groups = [
        {"params": decay, "weight_decay": options.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=options.learning_rate)


def _linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> Any:
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# The resumable state's file inside TrainOptions.checkpoint_dir.
STATE_FILE = "training-state.pt"

Evaluator = Callable[[Any, int, float], EvalRecord]


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resumable state atomically: a run killed mid-write keeps the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_training_state(checkpoint_dir: Path | None) -> dict[str, Any] | None:
    """The state a run left in ``checkpoint_dir``, or None when there is none."""
    if checkpoint_dir is None or not (checkpoint_dir / STATE_FILE).is_file():
        return None
    # Our own file (optimizer state, RNG states, the record so far), not a downloaded one.
    state: dict[str, Any] = torch.load(checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=False)
    return state


def train(
    model: Any,
    train_set: TrainingRows,
    objective: Objective,
    options: TrainOptions,
    *,
    pad_token_id: int,
    device: torch.device,
    dev_set: EncodedSet | None = None,
    dev_reference: np.ndarray | None = None,
    evaluator: Evaluator | None = None,
    on_best: Callable[[EvalRecord | None], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place; call ``on_best`` each time the dev score improves.

    Without a dev set, ``on_best(None)`` is called once, after the last step. ``dev_reference``
    holds the teacher's dev predictions (class ids), for the student-teacher agreement.
    ``evaluator(model, step, epoch)`` replaces the classifier's dev evaluation (a reader's
    exact match and F1).

    With ``options.checkpoint_dir`` and ``checkpoint_every``, the whole training state (weights,
    optimizer, schedule, RNGs, position in the epoch, the evaluations so far) is saved every
    that many steps and at each epoch's end; with ``options.resume`` a run continues from it
    and takes the same batches, in the same order, as an uninterrupted run.
    """
    seed_everything(options.seed)
    rng = random.Random(options.seed)
    lengths = train_set.lengths
    per_epoch = math.ceil(len(train_set) / options.batch_size)
    total_steps = per_epoch * options.epochs
    optimizer = _optimizer(model, options)
    scheduler = _linear_schedule(optimizer, total_steps, options.warmup_ratio)
    model.to(device)
    model.train()

    result = TrainResult(steps=0, train_seconds=0.0, train_samples_per_second=0.0, final_loss=float("nan"))
    best_score = -math.inf
    samples = 0
    running_loss: float | None = None
    train_seconds = 0.0
    step = 0
    state_path = None if options.checkpoint_dir is None else options.checkpoint_dir / STATE_FILE
    resumed = load_training_state(options.checkpoint_dir) if options.resume else None
    if resumed is not None:
        if resumed["total_steps"] != total_steps:
            raise ValueError(
                f"the checkpoint in {options.checkpoint_dir} is of a run of {resumed['total_steps']} steps, "
                f"this one has {total_steps}: same data and options, or start afresh without --resume"
            )
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        step, samples, train_seconds = resumed["step"], resumed["samples"], resumed["train_seconds"]
        running_loss, best_score = resumed["running_loss"], resumed["best_score"]
        result.evaluations = [EvalRecord(**record) for record in resumed["evaluations"]]
        result.best = None if resumed["best"] is None else EvalRecord(**resumed["best"])
        torch.set_rng_state(resumed["torch_rng"])
        logger.info("resumed", extra={"step": step, "of": total_steps, "path": str(state_path)})

    def save_state() -> None:
        if state_path is None:
            return
        _save_state(
            state_path,
            {
                "total_steps": total_steps,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "samples": samples,
                "train_seconds": train_seconds,
                "running_loss": running_loss,
                "best_score": best_score,
                "evaluations": [asdict(record) for record in result.evaluations],
                "best": None if result.best is None else asdict(result.best),
                "torch_rng": torch.get_rng_state(),
            },
        )

    def run_eval(step: int, epoch: float) -> None:
        nonlocal best_score
        if dev_set is None and evaluator is None:
            return
        if evaluator is not None:
            record = evaluator(model, step, epoch)
        else:
            assert dev_set is not None
            record = evaluate(
                model,
                dev_set,
                pad_token_id=pad_token_id,
                device=device,
                batch_size=options.eval_batch_size,
                reference_predictions=dev_reference,
                step=step,
                epoch=epoch,
            )
        model.train()
        result.evaluations.append(record)
        score = record.score(options.best_metric)
        improved = step > 0 and score is not None and score > best_score
        logger.info(
            "dev evaluation",
            extra={
                "step": step,
                "epoch": round(epoch, 3),
                "accuracy": record.accuracy,
                "agreement": record.agreement,
                **record.metrics,
                "best": improved,
            },
        )
        if improved and score is not None:
            best_score = score
            result.best = record
            if on_best is not None:
                on_best(record)

    if resumed is None:
        # The untrained model's score: a baseline for the log (a truncated student before
        # distillation, or a base model with a random head), never saved as the best.
        run_eval(0, 0.0)
    progress = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        disable=not options.progress,
        unit="step",
        dynamic_ncols=True,
        # Redrawn ten times a second on a terminal; in a log file, one line every 30 seconds.
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
    for epoch in range(options.epochs):
        # Every epoch's batches are drawn, even those a resumed run has done, so that the
        # generator is where an uninterrupted run would have it.
        batches = length_grouped_batches(lengths, options.batch_size, rng)
        for position, indices in enumerate(batches):
            if epoch * per_epoch + position < step:
                continue
            started = time.perf_counter()
            batch = train_set.collate(indices, pad_token_id, device)
            with autocast(device, options.bf16):
                loss, parts = objective(model, batch, indices)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if options.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            train_seconds += time.perf_counter() - started
            samples += len(indices)
            value = float(loss.detach())
            running_loss = value if running_loss is None else 0.95 * running_loss + 0.05 * value
            progress.update(1)
            progress.set_postfix(
                loss=f"{running_loss:.4f}",
                **{name: f"{part:.3f}" for name, part in parts.items()},
                lr=f"{scheduler.get_last_lr()[0]:.2e}",
                samples_s=f"{samples / max(train_seconds, 1e-9):.1f}",
                refresh=False,
            )
            if options.eval_every and step % options.eval_every == 0 and step % per_epoch:
                run_eval(step, step / per_epoch)
            if options.checkpoint_every and step % options.checkpoint_every == 0 and step % per_epoch:
                save_state()
        if step == (epoch + 1) * per_epoch and not any(record.step == step for record in result.evaluations):
            run_eval(step, float(epoch + 1))
            save_state()
    progress.close()
    result.steps = step
    result.train_seconds = train_seconds
    result.train_samples_per_second = samples / max(train_seconds, 1e-9)
    result.final_loss = running_loss if running_loss is not None else float("nan")
    if dev_set is None and evaluator is None and on_best is not None:
        on_best(None)
    return result
