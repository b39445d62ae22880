"""The committed SST-2 sentiment bundle: it loads from a fresh clone and classifies with real weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, shared_data_dir
from tests.models.distill.shipped import documented_card

BUNDLE = REPO_ROOT / "model-zoo" / "sst2-minilm-l3-int8"
# How far the dev accuracy measured here may be from the one eval.json (and MODEL_CARD.md)
# records, in points: one dev sentence is 0.11 points, and another CPU's int8 kernels may round
# a borderline sentence the other way.
MAX_DEV_ACCURACY_DRIFT = 0.3


def recorded_accuracy(name: str) -> float:
    """A model's SST-2 dev accuracy (percent) in the bundle's eval.json (`distilserve eval --output`)."""
    evaluation = json.loads((BUNDLE / "eval.json").read_text(encoding="utf-8"))
    assert evaluation["dataset"] == "sst2" and evaluation["examples"] == 872
    scores = {model["name"]: model["metrics"]["accuracy"] for model in evaluation["models"]}
    return float(scores[name])


def test_shipped_bundle_loads_and_classifies() -> None:
    from distilserve.models import load_model

    model = load_model(BUNDLE)  # verifies every file's sha256 against the manifest
    assert model.manifest.task == "text-classification"
    assert model.manifest.labels == {0: "negative", 1: "positive"}
    results = model.predict(
        [
            "a warm , funny and beautifully acted film .",
            "a tedious , joyless mess that wastes its cast .",
        ]
    )
    assert [scores[0].label for scores in results] == ["positive", "negative"]
    assert all(scores[0].score > 0.8 for scores in results)


def test_shipped_bundle_is_documented_and_small() -> None:
    card = documented_card(BUNDLE, ("Apache-2.0", "sst2_train.tsv", "scripts/build_sentiment_model.sh"))
    # The card's claim: the student keeps at least 97% of the teacher's accuracy, int8 vs fp32.
    assert recorded_accuracy("bundle") >= 0.97 * recorded_accuracy("teacher-fp32")
    assert f"{recorded_accuracy('bundle'):.2f}" in card


@pytest.mark.slow
def test_shipped_bundle_dev_accuracy() -> None:
    from distilserve.models import load_model
    from distilserve.models.distill.data import read_examples

    dev_file: Path = shared_data_dir() / "sst2_dev.tsv"
    if not dev_file.is_file():
        pytest.skip(f"{dev_file} is not there")
    examples = read_examples(dev_file)
    assert examples.labels is not None
    predictions = [scores[0].index for scores in load_model(BUNDLE).predict(examples.texts)]
    accuracy = 100 * sum(p == g for p, g in zip(predictions, examples.labels, strict=True)) / len(predictions)
    assert abs(accuracy - recorded_accuracy("bundle")) <= MAX_DEV_ACCURACY_DRIFT, accuracy
