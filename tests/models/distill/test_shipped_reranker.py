"""The committed SQuAD reranker: it loads from a fresh clone, ranks, and keeps its card's MRR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, shared_data_dir
from tests.models.distill.shipped import SQUAD_CARD_TERMS, documented_card

BUNDLE = REPO_ROOT / "model-zoo" / "squad-reranker"
README_QUERY = "What is the capital of France?"
README_DOCUMENTS = ["Paris is the capital of France.", "The Danube flows through Budapest."]
# The slow check's questions: a seeded sample of 200 dev questions (eval --limit 200, seed 0),
# scored when the bundle was built.
SAMPLE_QUESTIONS = 200


def recorded_metrics(name: str) -> dict[str, float]:
    """One model's figures on the 200-question sample, from ``distilserve eval --limit 200``."""
    report = json.loads((BUNDLE / "eval-sample-200.json").read_text(encoding="utf-8"))
    assert report["examples"] == SAMPLE_QUESTIONS and report["dataset"] == "squad-rerank"
    (entry,) = [entry for entry in report["models"] if entry["name"] == name]
    metrics: dict[str, float] = entry["metrics"]
    return metrics


def test_shipped_reranker_loads_and_ranks_the_readme_example() -> None:
    from distilserve.models import load_model
    from distilserve.models.tasks.rerank import RerankPair

    model = load_model(BUNDLE)  # verifies every file's sha256 against the manifest
    assert model.manifest.task == "rerank"
    scores = model.predict([RerankPair(README_QUERY, document) for document in README_DOCUMENTS])
    assert scores[0] > scores[1], scores


def test_shipped_reranker_is_documented_and_small() -> None:
    documented_card(BUNDLE, (*SQUAD_CARD_TERMS, "scripts/build_reranker_model.sh"))
    evaluation = json.loads((BUNDLE / "eval.json").read_text(encoding="utf-8"))
    assert evaluation["dataset"] == "squad-rerank" and evaluation["primary_metric"] == "mrr@10"
    names = {entry["name"] for entry in evaluation["models"]}
    assert {"embeddings", "bundle"} <= names, names


@pytest.mark.slow
def test_default_server_keeps_the_cards_mrr_on_sampled_dev_questions(tmp_path: Path) -> None:
    """Through HTTP, as a user meets it: the embedding model's top 20 of every dev paragraph for
    200 sampled questions, reranked by the default server's /rerank, scored as eval scores them."""
    from starlette.testclient import TestClient

    from distilserve.models.evaluation.cli import Settings, _retriever_scorer
    from distilserve.models.evaluation.rerank import (
        CANDIDATES,
        positive_ranks,
        ranking_metrics,
        read_retrieval_set,
        rerank,
        top_k_by_cosine,
    )
    from distilserve.server.app import build_app
    from distilserve.server.main import default_model_specs
    from distilserve.server.settings import ServerSettings

    dev_file = shared_data_dir() / "squad_v1.1_dev.json"
    if not dev_file.is_file():
        pytest.skip(f"{dev_file} is not there")
    data = read_retrieval_set(dev_file, SAMPLE_QUESTIONS, seed=0)
    retriever = _retriever_scorer(Settings(bundle=BUNDLE, dataset="squad-rerank"))
    candidates = top_k_by_cosine(
        retriever.embed(data.questions), retriever.embed(data.paragraphs), CANDIDATES
    )
    # The same candidates as when the bundle was built (another CPU may round a near tie apart).
    assert ranking_metrics(positive_ranks(candidates, data.positives)) == pytest.approx(
        recorded_metrics("embeddings"), abs=1.0
    )
    settings = ServerSettings(cache_dir=tmp_path, build_default=False)
    specs = [spec for spec in default_model_specs(settings) if spec.name == "squad-reranker"]
    assert specs, "model-zoo/squad-reranker should be served by default as squad-reranker"
    scores = np.zeros(candidates.shape, dtype=np.float64)
    with TestClient(build_app(settings, specs)) as client:
        for row, (question, indices) in enumerate(zip(data.questions, candidates, strict=True)):
            texts = [data.paragraphs[int(index)] for index in indices]
            response = client.post(
                "/rerank", json={"query": question, "texts": texts, "truncate": True, "raw_scores": True}
            )
            assert response.status_code == 200, response.text
            for result in response.json():
                scores[row, result["index"]] = result["score"]
    served = ranking_metrics(positive_ranks(rerank(candidates, scores), data.positives))
    assert served["mrr@10"] == pytest.approx(recorded_metrics("bundle")["mrr@10"], abs=1.0)
