"""The default model, really served: MiniLM built on first use, driven by the openai client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distilserve.models import load_model
from distilserve.models.export.default_model import DEFAULT_BUNDLE_NAME as DEFAULT_MODEL_NAME
from distilserve.server.app import build_app
from distilserve.server.main import default_model_specs
from distilserve.server.settings import ServerSettings
from tests.server.conftest import LiveServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_settings(tmp_path_factory: pytest.TempPathFactory) -> ServerSettings:
    return ServerSettings(cache_dir=tmp_path_factory.mktemp("cache"))


def test_the_default_model_is_built_on_first_use_and_served(default_settings: ServerSettings) -> None:
    from openai import OpenAI

    specs = default_model_specs(default_settings)
    by_name = {spec.name: spec for spec in specs}
    assert DEFAULT_MODEL_NAME in by_name
    bundle: Path = by_name[DEFAULT_MODEL_NAME].bundle_dir
    assert (bundle / "distilserve.json").is_file()
    # A second start reuses the bundle instead of exporting again.
    assert default_model_specs(default_settings) == specs

    texts = ["How do I reset my password?", "I forgot my password", "The weather is lovely today"]
    with LiveServer(build_app(default_settings, specs)) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        response = client.embeddings.create(model=DEFAULT_MODEL_NAME, input=texts)
        engine = server.engine_of(DEFAULT_MODEL_NAME)
    expected = np.stack(load_model(bundle, engine=engine).predict(texts))
    vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)  # MiniLM normalises
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3
