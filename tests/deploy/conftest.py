"""Deploy fixtures: a classification bundle to serve (the shipped one, or a tiny one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# The sentiment bundle shipped in the repository, when it is there (see model-zoo/).
ZOO_SENTIMENT = REPO_ROOT / "model-zoo" / "sst2-minilm-l3-int8"


@pytest.fixture(scope="session")
def classify_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An int8 classification bundle: model-zoo's sentiment model, else a tiny one built here."""
    if (ZOO_SENTIMENT / "distilserve.json").is_file():
        return ZOO_SENTIMENT
    from distilserve.models.export import ExportOptions, export_bundle
    from tests.tiny_models import build_checkpoint

    root = tmp_path_factory.mktemp("deploy-bundle")
    checkpoint = build_checkpoint(root / "checkpoint", "distilbert", "text-classification")
    output = root / "sentiment-int8"
    export_bundle(
        ExportOptions(source=str(checkpoint), output=output, task="text-classification", quantize="int8")
    )
    return output
