"""The clients chatbot builders already use, unchanged, against the live default server.

Slow: the default server exports all-MiniLM-L6-v2 on first use. ``huggingface_hub``'s
``InferenceClient`` is pointed at each route's URL (as at a dedicated Inference Endpoint or a
TEI deployment); LangChain's ``OpenAIEmbeddings`` at ``/v1`` as at any OpenAI-compatible server.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from distilserve.models import load_model
from distilserve.models.export.default_model import DEFAULT_BUNDLE_NAME
from distilserve.server.app import build_app
from distilserve.server.main import default_model_specs
from distilserve.server.settings import ServerSettings
from tests.server.conftest import LiveServer

pytestmark = pytest.mark.slow

CONTEXT = (
    "distilserve is a low-latency inference server for distilled transformer models. "
    "Its Docker image runs as user 10001 and listens on port 8080."
)


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, ServerSettings]]:
    settings = ServerSettings(cache_dir=tmp_path_factory.mktemp("cache"))
    with LiveServer(build_app(settings, default_model_specs(settings))) as server:
        yield server, settings


def test_inference_client_text_classification(default_server: tuple[LiveServer, ServerSettings]) -> None:
    from huggingface_hub import InferenceClient

    server, _ = default_server
    client = InferenceClient(model=f"{server.url}/predict")
    best_first = client.text_classification("A gripping, beautifully acted and genuinely funny film.")
    assert [item.label for item in best_first] == ["positive", "negative"]
    assert best_first[0].score > 0.5 and sum(item.score for item in best_first) == pytest.approx(
        1.0, abs=1e-5
    )
    top_one = client.text_classification("Dull, lifeless and far too long.", top_k=1)
    assert [item.label for item in top_one] == ["negative"]
    sigmoid = client.text_classification("Dull, lifeless and far too long.", function_to_apply="sigmoid")
    assert all(0.0 < item.score < 1.0 for item in sigmoid)
    assert sum(item.score for item in sigmoid) != pytest.approx(1.0, abs=1e-3)  # not a softmax


def test_inference_client_question_answering(default_server: tuple[LiveServer, ServerSettings]) -> None:
    from huggingface_hub import InferenceClient

    server, _ = default_server
    client = InferenceClient(model=f"{server.url}/v1/answer")
    answer = client.question_answering(question="Which port does the image listen on?", context=CONTEXT)
    assert not isinstance(answer, list)
    # The span is the reader's to choose ("8080" or "port 8080" are both right); the client
    # contract is that answer, start and end agree with the context.
    assert "8080" in answer.answer.split()
    assert CONTEXT[answer.start : answer.end] == answer.answer
    assert 0.0 < answer.score <= 1.0
    several = client.question_answering(
        question="Which port does the image listen on?", context=CONTEXT, top_k=2
    )
    assert isinstance(several, list) and len(several) == 2
    assert several[0].score >= several[1].score


def test_inference_client_feature_extraction(default_server: tuple[LiveServer, ServerSettings]) -> None:
    from huggingface_hub import InferenceClient

    server, settings = default_server
    client = InferenceClient(model=f"{server.url}/embed")
    text = "How do I reset my password?"
    vectors = client.feature_extraction(text)
    spec = {spec.name: spec for spec in default_model_specs(settings)}[DEFAULT_BUNDLE_NAME]
    expected = load_model(spec.bundle_dir, engine=server.engine_of(spec.name)).predict([text])[0]
    assert vectors.shape == (1, expected.shape[0])
    np.testing.assert_allclose(vectors[0], expected, atol=1e-5)


def test_langchain_openai_embeddings(default_server: tuple[LiveServer, ServerSettings]) -> None:
    from langchain_openai import OpenAIEmbeddings

    server, settings = default_server
    # check_embedding_ctx_length=False sends the texts as they are: otherwise LangChain tokenizes
    # them with tiktoken (OpenAI's tokenizer, whose files it would download) into token ids.
    embeddings = OpenAIEmbeddings(
        model=DEFAULT_BUNDLE_NAME,
        base_url=f"{server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    texts = ["How do I reset my password?", "I forgot my password", "The weather is lovely today"]
    documents = np.array(embeddings.embed_documents(texts), dtype=np.float32)
    query = np.array(embeddings.embed_query("password reset"), dtype=np.float32)
    bundle = {spec.name: spec for spec in default_model_specs(settings)}[DEFAULT_BUNDLE_NAME].bundle_dir
    expected = np.stack(load_model(bundle, engine=server.engine_of(DEFAULT_BUNDLE_NAME)).predict(texts))
    np.testing.assert_allclose(documents, expected, atol=1e-5)
    similarities = documents @ query
    assert similarities[:2].min() > similarities[2] + 0.2
