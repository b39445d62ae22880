"""Evaluation metrics with numpy alone: accuracy, SQuAD v1.1 EM/F1, Spearman correlation, and
recall@k and MRR@k of rankings.

The SQuAD functions follow the official v1.1 evaluation script: answers are normalised
(lower-cased, punctuation removed, the articles a/an/the removed, whitespace collapsed), EM and
F1 are taken against each gold answer and the best one counts. Spearman is Pearson's r of the
ranks, ties getting their average rank (what ``scipy.stats.spearmanr`` computes), so that the
runtime install does not need scipy.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def accuracy(predictions: Sequence[int | None], labels: Sequence[int]) -> float:
    """Share of predictions equal to their label (a None prediction is wrong)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of no examples")
    return sum(1 for guess, gold in zip(predictions, labels, strict=True) if guess == gold) / len(labels)


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation, in the script's order."""
    lowered = text.lower()
    no_punctuation = "".join(char for char in lowered if char not in _PUNCTUATION)
    no_articles = _ARTICLES.sub(" ", no_punctuation)
    return " ".join(no_articles.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 of the normalised texts (0 when they share no token)."""
    predicted = normalize_answer(prediction).split()
    gold = normalize_answer(truth).split()
    common = Counter(predicted) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(predicted)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_over_truths(metric: Callable[[str, str], float], prediction: str, truths: Sequence[str]) -> float:
    return max(metric(prediction, truth) for truth in truths)


def squad_scores(predictions: Mapping[str, str], gold: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """``exact_match`` and ``f1`` in percent over every gold question; a missing prediction scores 0."""
    if not gold:
        raise ValueError("SQuAD scores of no questions")
    total_em = total_f1 = 0.0
    for question_id, truths in gold.items():
        if question_id not in predictions:
            continue
        prediction = predictions[question_id]
        total_em += best_over_truths(exact_match, prediction, truths)
        total_f1 += best_over_truths(f1, prediction, truths)
    return {"exact_match": 100.0 * total_em / len(gold), "f1": 100.0 * total_f1 / len(gold)}


def rankdata(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the average of the ranks they span."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError("rankdata takes a 1-D sequence")
    if np.isnan(data).any():
        raise ValueError("cannot rank NaN")
    size = data.size
    if size == 0:
        return np.empty(0, dtype=np.float64)
    order = np.argsort(data, kind="mergesort")
    ordered = data[order]
    starts_group = np.empty(size, dtype=bool)
    starts_group[0] = True
    starts_group[1:] = ordered[1:] != ordered[:-1]
    group_starts = np.flatnonzero(starts_group)
    group_ends = np.append(group_starts[1:], size)  # exclusive
    # Positions start..end-1 hold ranks start+1..end; their mean is (start + end + 1) / 2.
    group_rank = (group_starts + group_ends + 1) / 2.0
    ranks = np.empty(size, dtype=np.float64)
    ranks[order] = group_rank[np.cumsum(starts_group) - 1]
    return ranks


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson's r; NaN when either side is constant (the correlation is undefined)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pearson needs two 1-D sequences of one length, got {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError("pearson needs at least two points")
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if denominator == 0.0:
        return float("nan")
    return float((a * b).sum() / denominator)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average-tie ranks."""
    return pearson(rankdata(x), rankdata(y))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.clip(norms, 1e-12, None)  # type: ignore[no-any-return]


def recall_at_k(ranks: Sequence[int | None], k: int) -> float:
    """Share of queries whose relevant passage is ranked in the top ``k`` (1-based ranks; None:
    not retrieved at all)."""
    if not ranks:
        raise ValueError("recall of no queries")
    return sum(1 for rank in ranks if rank is not None and rank <= k) / len(ranks)


def mrr_at_k(ranks: Sequence[int | None], k: int = 10) -> float:
    """Mean reciprocal rank of the relevant passage, 0 for a query where it is below ``k`` or absent."""
    if not ranks:
        raise ValueError("MRR of no queries")
    return sum(1.0 / rank for rank in ranks if rank is not None and rank <= k) / len(ranks)
