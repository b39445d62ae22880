"""The rerank clients retrieval code already uses, unchanged, against a live server.

A tiny int8 cross-encoder is dropped into a temporary model zoo as ``squad-reranker``, served by
default (as ``model-zoo/squad-reranker/`` is on a fresh clone) by uvicorn on loopback, and
reached by the ``cohere`` SDK (``ClientV2.rerank`` posts ``/v2/rerank``, ``Client.rerank``
``/v1/rerank``) and by LangChain's ``CohereRerank`` document compressor.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from distilserve.models import load_model
from distilserve.models.tasks import RerankPair
from distilserve.server.app import build_app
from distilserve.server.main import default_model_specs
from distilserve.server.settings import ServerSettings
from tests.server.conftest import LiveServer
from tests.tiny_models import Arch

QUERY = "what about the film?"
DOCUMENTS = [
    "The film was wonderful from start to finish.",
    "My order arrived late and the battery was awful.",
    "The soundtrack was brilliant, the plot was slow.",
    "Our hotel was charming at the airport in paris.",
    "The teacher remained patient after lunch.",
]


@pytest.fixture(scope="module")
def zoo_server(
    tiny_rerank_bundles: dict[tuple[Arch, Literal["int8", "none"]], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveServer, list[float]]]:
    zoo = tmp_path_factory.mktemp("zoo")
    shutil.copytree(tiny_rerank_bundles[("distilbert", "int8")], zoo / "squad-reranker")
    settings = ServerSettings(model_zoo=zoo, build_default=False, cache_dir=tmp_path_factory.mktemp("cache"))
    specs = default_model_specs(settings)
    assert [spec.name for spec in specs] == ["squad-reranker"]
    model = load_model(zoo / "squad-reranker")
    scores = [float(score) for score in model.predict([RerankPair(QUERY, text) for text in DOCUMENTS])]
    with LiveServer(build_app(settings, specs)) as server:
        yield server, scores


def best_first(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda index: -scores[index])


def test_a_rerank_bundle_in_the_zoo_is_served_by_default_and_shown_in_info(
    zoo_server: tuple[LiveServer, list[float]],
) -> None:
    import httpx

    server, _ = zoo_server
    info = httpx.get(f"{server.url}/info").json()
    (model,) = info["models"]
    assert (model["name"], model["task"]) == ("squad-reranker", "rerank")
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [(card["id"], card["task"]) for card in models] == [("squad-reranker", "rerank")]


def test_cohere_client_v2_rerank(zoo_server: tuple[LiveServer, list[float]]) -> None:
    import cohere

    server, scores = zoo_server
    client = cohere.ClientV2(api_key="unused", base_url=server.url)
    response = client.rerank(model="squad-reranker", query=QUERY, documents=DOCUMENTS, top_n=3)
    assert [result.index for result in response.results] == best_first(scores)[:3]
    for result in response.results:
        assert result.relevance_score == pytest.approx(scores[result.index], abs=1e-6)
    assert response.id is not None and response.id.startswith("rerank-")


def test_cohere_client_v1_rerank_with_documents(zoo_server: tuple[LiveServer, list[float]]) -> None:
    import cohere

    server, scores = zoo_server
    client = cohere.Client(api_key="unused", base_url=server.url)
    response = client.rerank(
        model="squad-reranker", query=QUERY, documents=DOCUMENTS, top_n=2, return_documents=True
    )
    assert [result.index for result in response.results] == best_first(scores)[:2]
    for result in response.results:
        assert result.document is not None and result.document.text == DOCUMENTS[result.index]


def test_langchain_cohere_rerank_compresses_documents(zoo_server: tuple[LiveServer, list[float]]) -> None:
    import cohere
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    server, scores = zoo_server
    reranker = CohereRerank(
        client=cohere.ClientV2(api_key="unused", base_url=server.url), model="squad-reranker", top_n=2
    )
    documents = [Document(page_content=text, metadata={"n": index}) for index, text in enumerate(DOCUMENTS)]
    kept = reranker.compress_documents(documents, QUERY)
    assert [document.metadata["n"] for document in kept] == best_first(scores)[:2]
    for document in kept:
        assert document.metadata["relevance_score"] == pytest.approx(scores[document.metadata["n"]], abs=1e-6)
