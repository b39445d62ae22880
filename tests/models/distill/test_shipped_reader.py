"""The committed SQuAD reader: it loads from a fresh clone, answers, and keeps its card's F1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, shared_data_dir
from tests.models.distill.shipped import SQUAD_CARD_TERMS, documented_card

BUNDLE = REPO_ROOT / "model-zoo" / "squad-minilm-l3-int8"
README_QUESTION = {"question": "Where do I live?", "context": "My name is Wolfgang and I live in Berlin."}
# The slow check's questions: the first 500 of the official dev set, scored when the bundle was built.
FIRST_DEV_QUESTIONS = 500


def card_figures() -> dict[str, float]:
    """The bundle's EM and F1 on the first 500 dev questions, from ``distilserve eval --limit 500``."""
    report = json.loads((BUNDLE / "eval-first-500.json").read_text(encoding="utf-8"))
    assert report["examples"] == FIRST_DEV_QUESTIONS
    (bundle,) = [entry for entry in report["models"] if entry["name"] == "bundle"]
    metrics: dict[str, float] = bundle["metrics"]
    return metrics


def test_shipped_reader_loads_and_answers() -> None:
    from distilserve.models import load_model
    from distilserve.models.tasks import QAInput

    model = load_model(BUNDLE)  # verifies every file's sha256 against the manifest
    assert model.manifest.task == "question-answering"
    (answers,) = model.predict([QAInput(**README_QUESTION)])
    assert answers[0].answer == "Berlin"


def test_shipped_reader_is_documented_and_small() -> None:
    documented_card(BUNDLE, (*SQUAD_CARD_TERMS, "scripts/build_reader_model.sh"))
    evaluation = json.loads((BUNDLE / "eval.json").read_text(encoding="utf-8"))
    assert evaluation["dataset"] == "squad" and evaluation["examples"] == 10570
    assert {entry["name"] for entry in evaluation["models"]} == {"bundle", "fp32 bundle", "teacher-fp32"}


@pytest.mark.slow
def test_default_server_keeps_the_cards_f1_on_the_first_dev_questions(tmp_path: Path) -> None:
    """Through HTTP, as a user meets it: the default server, 500 dev questions, official scoring."""
    from starlette.testclient import TestClient

    from distilserve.models.evaluation.data import read_squad
    from distilserve.models.evaluation.metrics import squad_scores
    from distilserve.server.app import build_app
    from distilserve.server.main import default_model_specs
    from distilserve.server.settings import ServerSettings

    dev_file = shared_data_dir() / "squad_v1.1_dev.json"
    if not dev_file.is_file():
        pytest.skip(f"{dev_file} is not there")
    examples = read_squad(dev_file, FIRST_DEV_QUESTIONS)
    settings = ServerSettings(cache_dir=tmp_path, build_default=False)
    specs = [spec for spec in default_model_specs(settings) if spec.name == "squad-reader"]
    assert specs, "model-zoo/squad-minilm-l3-int8 should be served by default as squad-reader"
    predictions: dict[str, str] = {}
    with TestClient(build_app(settings, specs)) as client:
        response = client.post("/v1/answer", json={"inputs": README_QUESTION})
        assert response.status_code == 200, response.text
        assert response.json()["answer"] == "Berlin"
        for start in range(0, len(examples), 50):
            chunk = examples[start : start + 50]
            inputs = [{"question": example.question, "context": example.context} for example in chunk]
            response = client.post("/v1/answer", json={"model": "squad-reader", "inputs": inputs})
            assert response.status_code == 200, response.text
            for example, answers in zip(chunk, response.json(), strict=True):
                best = answers[0] if isinstance(answers, list) else answers
                predictions[example.id] = best["answer"]
    scores = squad_scores(predictions, {example.id: example.answers for example in examples})
    recorded = card_figures()
    assert abs(scores["f1"] - recorded["f1"]) <= 1.0, (scores, recorded)
