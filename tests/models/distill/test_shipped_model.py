"""The committed SST-2 sentiment bundle: it loads from a fresh clone and classifies with real weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, shared_data_dir

BUNDLE = REPO_ROOT / "model-zoo" / "sst2-minilm-l3-int8"
# The int8 bundle's dev accuracy as recorded in its MODEL_CARD.md / eval.json, less a margin
# for a different CPU's int8 kernels.
MIN_DEV_ACCURACY = 0.85


def test_shipped_bundle_loads_and_classifies() -> None:
    from models import load_model

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
    card = (BUNDLE / "MODEL_CARD.md").read_text(encoding="utf-8")
    for required in ("Apache-2.0", "sst2_train.tsv", "scripts/build_sentiment_model.sh", "Licence"):
        assert required in card
    size = sum(path.stat().st_size for path in BUNDLE.iterdir())
    assert size < 25_000_000
    evaluation = json.loads((BUNDLE / "eval.json").read_text(encoding="utf-8"))
    assert evaluation["summary"]["student_accuracy_retained"] >= 0.97


@pytest.mark.slow
def test_shipped_bundle_dev_accuracy() -> None:
    from models import load_model
    from models.distill.data import read_examples

    dev_file: Path = shared_data_dir() / "sst2_dev.tsv"
    if not dev_file.is_file():
        pytest.skip(f"{dev_file} is not there")
    examples = read_examples(dev_file)
    assert examples.labels is not None
    predictions = [scores[0].index for scores in load_model(BUNDLE).predict(examples.texts)]
    accuracy = sum(p == g for p, g in zip(predictions, examples.labels, strict=True)) / len(predictions)
    assert accuracy >= MIN_DEV_ACCURACY, accuracy
