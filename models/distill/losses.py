"""Distillation losses.

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))
         + beta * CE(z_s, labels)
         + cosine * (1 - cos(h_s, h_t))            (averaged over real tokens)

Question answering uses the same loss with the start and end logits as two rows per window
(``span_rows``): the KL and the cross-entropy then average the start and the end terms, which is
what transformers' ``*ForQuestionAnswering`` does with its start and end cross-entropies.

The T^2 factor (Hinton et al. 2015) keeps the soft-target gradients on the same scale as the
hard-label ones whatever the temperature, since the gradient of the softened KL shrinks as 1/T^2.
The cosine term is DistilBERT's: it aligns the direction of the student's last hidden states
with the teacher's. Every term is a mean over the batch, so loss values do not depend on the
batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def soft_target_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, averaged over the rows."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
    # log_target: the teacher side in log space avoids log(0) for confident teachers.
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2


def hidden_cosine_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``1 - cos(h_s, h_t)`` per token, averaged over the real (unpadded) tokens."""
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states differ in shape: student {tuple(student_hidden.shape)}, "
            f"teacher {tuple(teacher_hidden.shape)} (the cosine loss needs the teacher's width)"
        )
    cosine = F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)
    mask = attention_mask.to(cosine.dtype)
    return ((1.0 - cosine) * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass(frozen=True)
class DistillWeights:
    temperature: float = 2.0
    alpha: float = 0.5
    beta: float = 0.5
    cosine: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if min(self.alpha, self.beta, self.cosine) < 0:
            raise ValueError("alpha, beta and the cosine weight must not be negative")
        if self.alpha == self.beta == self.cosine == 0:
            raise ValueError("alpha, beta and the cosine weight are all 0: nothing to train on")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    weights: DistillWeights,
    *,
    student_hidden: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted total, and each term's value for the progress bar and the logs."""
    parts: dict[str, torch.Tensor] = {}
    total = student_logits.new_zeros(())
    if weights.alpha > 0:
        parts["kd"] = soft_target_kl(student_logits, teacher_logits, weights.temperature)
        total = total + weights.alpha * parts["kd"]
    if weights.beta > 0:
        if labels is None:
            raise ValueError("beta > 0 needs labels; the training file has none (set beta to 0)")
        parts["ce"] = F.cross_entropy(student_logits, labels)
        total = total + weights.beta * parts["ce"]
    if weights.cosine > 0:
        if student_hidden is None or teacher_hidden is None or attention_mask is None:
            raise ValueError("the cosine loss needs student and teacher hidden states and the attention mask")
        parts["cos"] = hidden_cosine_loss(student_hidden, teacher_hidden, attention_mask)
        total = total + weights.cosine * parts["cos"]
    return total, {name: float(value.detach()) for name, value in parts.items()}


def span_rows(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """``(batch, tokens)`` start and end tensors as ``(2 * batch, tokens)`` rows: start, end, start, ...

    Also for the positions: ``(batch,)`` starts and ends give ``(2 * batch,)`` targets, in the
    same order as the logit rows.
    """
    return torch.stack([start, end], dim=1).reshape(-1, *start.shape[1:])


def listwise_softmax_ce(scores: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over each list of scores, the positive at index 0 the target.

    ``scores`` is ``(lists, list_size)``: one relevance logit per (question, passage) pair, the
    positive passage first. The loss is ``-log softmax(scores)[0]``, averaged over the lists: a
    pair's score only matters relative to the other passages of its list, which is what a
    reranker is used for.
    """
    targets = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores, targets)


def pointwise_bce(scores: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on each pair of the lists: 1 for the positive (index 0), 0 for the others."""
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(scores, labels)
