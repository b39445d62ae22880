"""``distilserve eval``: score bundles (and their fp32 and PyTorch sources) on SST-2, SQuAD, STS-B.

numpy only on the bundle path: torch is imported when a PyTorch source is scored, never before.
"""

from distilserve.models.evaluation.metrics import (
    accuracy,
    exact_match,
    f1,
    normalize_answer,
    pearson,
    rankdata,
    spearman,
    squad_scores,
)

__all__ = [
    "accuracy",
    "exact_match",
    "f1",
    "normalize_answer",
    "pearson",
    "rankdata",
    "spearman",
    "squad_scores",
]
