"""The distillation losses against hand computations (plain ``math``, no torch functional)."""

from __future__ import annotations

import math

import pytest
import torch

from distilserve.models.distill.losses import (
    DistillWeights,
    distillation_loss,
    hidden_cosine_loss,
    soft_target_kl,
)


def softmax(values: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(value / temperature) for value in values]
    return [value / sum(exps) for value in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


STUDENT = [[1.0, -0.5, 2.0], [0.0, 3.0, -1.0]]
TEACHER = [[2.5, 0.0, 0.5], [-1.0, 1.0, 0.0]]
LABELS = [0, 1]


def hand_kd(temperature: float) -> float:
    rows = [
        kl(softmax(teacher, temperature), softmax(student, temperature))
        for student, teacher in zip(STUDENT, TEACHER, strict=True)
    ]
    return temperature**2 * sum(rows) / len(rows)


def hand_ce() -> float:
    rows = [-math.log(softmax(student)[label]) for student, label in zip(STUDENT, LABELS, strict=True)]
    return sum(rows) / len(rows)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_target_kl_matches_hand_computation(temperature: float) -> None:
    value = soft_target_kl(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    assert float(value) == pytest.approx(hand_kd(temperature), rel=1e-5)


def test_soft_target_kl_direction_and_zero() -> None:
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert float(soft_target_kl(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-7)
    # KL(teacher || student), not the reverse: the two differ on these logits.
    reverse = (
        sum(kl(softmax(s, 2.0), softmax(t, 2.0)) for s, t in zip(STUDENT, TEACHER, strict=True))
        * 4.0
        / len(STUDENT)
    )
    assert abs(reverse - hand_kd(2.0)) > 1e-3
    assert float(soft_target_kl(student, teacher, 2.0)) == pytest.approx(hand_kd(2.0), rel=1e-5)


def test_soft_target_kl_rejects_a_non_positive_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        soft_target_kl(torch.tensor(STUDENT), torch.tensor(TEACHER), 0.0)


def test_hidden_cosine_loss_ignores_padding() -> None:
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [-5.0, 5.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: cos = 1 -> 0; token 1: cos = 1/sqrt(2) -> 1 - 0.7071; token 2 is padding.
    expected = (0.0 + (1.0 - 1.0 / math.sqrt(2.0))) / 2
    assert float(hidden_cosine_loss(student, teacher, mask)) == pytest.approx(expected, rel=1e-6)


def test_hidden_cosine_loss_needs_equal_widths() -> None:
    with pytest.raises(ValueError, match="shape"):
        hidden_cosine_loss(torch.zeros(1, 2, 4), torch.zeros(1, 2, 8), torch.ones(1, 2))


def test_distillation_loss_is_the_weighted_sum() -> None:
    student = torch.tensor(STUDENT, requires_grad=True)
    weights = DistillWeights(temperature=2.0, alpha=0.7, beta=0.3)
    total, parts = distillation_loss(student, torch.tensor(TEACHER), torch.tensor(LABELS), weights)
    assert parts["kd"] == pytest.approx(hand_kd(2.0), rel=1e-5)
    assert parts["ce"] == pytest.approx(hand_ce(), rel=1e-5)
    assert float(total.detach()) == pytest.approx(0.7 * hand_kd(2.0) + 0.3 * hand_ce(), rel=1e-5)
    total.backward()
    assert student.grad is not None and bool(student.grad.abs().sum() > 0)


def test_distillation_loss_with_the_cosine_term() -> None:
    hidden_s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 0.0]]])
    hidden_t = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 0.0]]])
    mask = torch.ones(2, 2, dtype=torch.long)
    weights = DistillWeights(temperature=1.0, alpha=1.0, beta=0.0, cosine=2.0)
    total, parts = distillation_loss(
        torch.tensor(STUDENT),
        torch.tensor(TEACHER),
        None,
        weights,
        student_hidden=hidden_s,
        teacher_hidden=hidden_t,
        attention_mask=mask,
    )
    # One orthogonal pair (loss 1) among four tokens.
    assert parts["cos"] == pytest.approx(0.25)
    assert set(parts) == {"kd", "cos"}
    assert float(total) == pytest.approx(hand_kd(1.0) + 2.0 * 0.25, rel=1e-5)


def test_distillation_loss_needs_labels_when_beta_is_positive() -> None:
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), None, DistillWeights(beta=0.5))


@pytest.mark.parametrize(
    "kwargs", [{"temperature": 0.0}, {"alpha": -1.0}, {"alpha": 0.0, "beta": 0.0, "cosine": 0.0}]
)
def test_weights_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DistillWeights(**kwargs)
