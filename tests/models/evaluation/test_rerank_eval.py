"""``distilserve eval --dataset squad-rerank``: the ranking metrics, retrieval, and a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distilserve.models.evaluation.cli import Settings, evaluate, format_report, run
from distilserve.models.evaluation.metrics import mrr_at_k, recall_at_k
from distilserve.models.evaluation.rerank import (
    positive_ranks,
    ranking_metrics,
    read_retrieval_set,
    rerank,
    top_k_by_cosine,
)
from tests.models.distill.test_rerank import toy_rerank_squad


def test_recall_and_mrr_of_hand_made_ranks() -> None:
    ranks = [1, 2, 5, 11, None]
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 5)
    assert recall_at_k(ranks, 5) == pytest.approx(3 / 5)
    # Rank 11 is past the cut-off and an absent passage counts 0.
    assert mrr_at_k(ranks, 10) == pytest.approx((1 + 1 / 2 + 1 / 5) / 5)
    assert mrr_at_k([11], 20) == pytest.approx(1 / 11)
    assert ranking_metrics([1, 3]) == pytest.approx(
        {"recall@1": 50.0, "recall@5": 100.0, "mrr@10": 100 * (1 + 1 / 3) / 2}
    )
    with pytest.raises(ValueError):
        mrr_at_k([], 10)


def test_retrieval_and_reranking_orders() -> None:
    passages = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = np.array([[2.0, 0.1], [0.0, 3.0]])
    candidates = top_k_by_cosine(queries, passages, k=2)
    assert candidates.tolist() == [[0, 2], [1, 2]]
    assert positive_ranks(candidates, [2, 0]) == [2, None]
    reordered = rerank(candidates, np.array([[0.1, 0.9], [0.5, 0.5]]))
    # Ties keep the retrieval order.
    assert reordered.tolist() == [[2, 0], [1, 2]]
    assert positive_ranks(reordered, [2, 0]) == [1, None]


def test_the_pool_is_every_distinct_paragraph_and_a_limit_is_a_seeded_sample(tmp_path: Path) -> None:
    path = toy_rerank_squad(tmp_path / "dev.json", articles=3, seed=4)
    raw = json.loads(path.read_text())
    contexts = [p["context"] for article in raw["data"] for p in article["paragraphs"]]
    data = read_retrieval_set(path)
    assert data.paragraphs == contexts and len(data) == 36
    assert data.paragraphs[data.positives[5]] == contexts[1]  # questions 4-7 ask about paragraph 1
    sample = read_retrieval_set(path, limit=5, seed=1)
    assert len(sample) == 5 and sample == read_retrieval_set(path, limit=5, seed=1)
    assert sample.questions != data.questions[:5]
    assert all(sample.paragraphs[p] in contexts for p in sample.positives)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rerank-data")
    toy_rerank_squad(folder / "squad_v1.1_dev.json", articles=4, seed=3)
    return folder


def test_squad_rerank_scores_every_reranker_beside_the_embeddings(
    data_dir: Path,
    tiny_rerank_bundles: dict[Any, Path],
    tiny_rerank_checkpoints: dict[Any, Path],
    tiny_bundles: dict[Any, Path],
    tmp_path: Path,
    capsys: Any,
) -> None:
    settings = Settings(
        bundle=tiny_rerank_bundles[("bert", "int8")],
        dataset="squad-rerank",
        fp32_bundle=tiny_rerank_bundles[("bert", "none")],
        source=str(tiny_rerank_checkpoints["bert"]),
        retriever=str(tiny_bundles[("bert", "feature-extraction")]),
        data_dir=data_dir,
        candidates=5,
        speed_rounds=1,
        output=tmp_path / "eval.json",
    )
    report = evaluate(settings)
    names = [entry.name for entry in report.models]
    assert names == ["embeddings", "bundle", "fp32 bundle", "PyTorch source"]
    assert report.examples == 48 and report.primary_metric == "mrr@10"
    embeddings = report.models[0]
    for entry in report.models:
        assert set(entry.metrics) == {"recall@1", "recall@5", "mrr@10"}
        assert 0 <= entry.metrics["recall@1"] <= entry.metrics["recall@5"] <= 100
        # Reranking reorders the same 5 candidates: recall@5 cannot change.
        assert entry.metrics["recall@5"] == embeddings.metrics["recall@5"]
    for entry in report.models[1:]:
        assert entry.pairs_per_second is not None and entry.pairs_per_second > 0
    # The fp32 export and its PyTorch source rank alike.
    assert abs(report.deltas_vs_fp32["PyTorch source"]) < 1.0
    assert run(settings) == 0
    assert "| embeddings |" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["models"][1]["pairs_per_second"] > 0
    assert "mrr@10" in format_report(report)[2]


def test_squad_rerank_refuses_a_bundle_of_another_task(
    data_dir: Path, tiny_bundles: dict[Any, Path], capsys: Any
) -> None:
    settings = Settings(
        bundle=tiny_bundles[("bert", "feature-extraction")], dataset="squad-rerank", data_dir=data_dir
    )
    assert run(settings) == 2
    assert "squad-rerank needs rerank" in capsys.readouterr().err
