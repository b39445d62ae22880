"""Prometheus families after traffic, and the real openai client against a live uvicorn."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from distilserve.models import load_model
from distilserve.models.tasks import EmbedParams
from tests.server.conftest import BundleMap, LiveServer, gather_posts, running_app

FAMILIES = {
    "distilserve_requests": "counter",
    "distilserve_request_duration_seconds": "histogram",
    "distilserve_queue_wait_seconds": "histogram",
    "distilserve_tokenization_seconds": "histogram",
    "distilserve_inference_seconds": "histogram",
    "distilserve_queue_depth": "gauge",
    "distilserve_batch_size": "histogram",
    "distilserve_batch_tokens": "histogram",
    "distilserve_padding_ratio": "histogram",
    "distilserve_rejected_requests": "counter",
    "distilserve_timed_out_requests": "counter",
}


def samples_by_name(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


async def test_metrics_expose_every_family_with_values_that_moved(model_args: list[str]) -> None:
    async with running_app(model_args, max_queue_requests=3) as (_, client):
        # Lengths close enough to share a batch (a little padding), far from worth a batch of their own.
        bodies = [{"input": ["a short one", "a short one too"]}] * 10
        responses = await gather_posts(client, "/v1/classify", bodies)
        # Refused after tokenization: too long, with truncation off.
        await client.post("/v1/classify", json={"input": "word " * 400, "truncate": False})
        text = (await client.get("/metrics")).text
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    for name, kind in FAMILIES.items():
        assert types.get(name) == kind, name
    samples = samples_by_name(text)
    by_status = {labels["status"]: value for labels, value in samples["distilserve_requests_total"]
                 if labels["route"] == "/v1/classify"}  # fmt: skip
    assert by_status["200"] == sum(r.status_code == 200 for r in responses)
    assert by_status["422"] == 1
    assert by_status.get("429", 0) == sum(r.status_code == 429 for r in responses)
    labels_200 = next(
        labels for labels, _ in samples["distilserve_requests_total"] if labels["status"] == "200"
    )
    assert labels_200["model"] == "sentiment"

    def total(name: str, model: str = "sentiment") -> float:
        return sum(value for labels, value in samples[name] if labels.get("model") == model)

    assert total("distilserve_batch_size_count") >= 1
    assert total("distilserve_batch_size_sum") == 2 * by_status["200"]
    assert total("distilserve_batch_tokens_sum") > 0
    assert total("distilserve_padding_ratio_sum") > 0  # mixed lengths share batches
    assert total("distilserve_inference_seconds_count") >= 1
    assert total("distilserve_tokenization_seconds_count") == by_status["200"] + 1
    assert total("distilserve_queue_wait_seconds_count") == by_status["200"]
    assert [
        value for labels, value in samples["distilserve_queue_depth"] if labels["model"] == "sentiment"
    ] == [0]


def test_the_openai_client_with_its_defaults_gets_the_library_vectors(
    live_server: Callable[..., LiveServer], tiny_bundles: BundleMap
) -> None:
    from openai import OpenAI

    texts = ["How do I reset my password?", "Where is my order?"]
    expected = np.stack(
        load_model(tiny_bundles[("bert", "feature-extraction")]).predict(texts, EmbedParams())
    )
    with live_server() as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        response = client.embeddings.create(model="encoder", input=texts)  # base64 on the wire by default
        single = client.embeddings.create(model="encoder", input=texts[0], encoding_format="float")
        models = client.models.list()
    vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    np.testing.assert_allclose(np.array(single.data[0].embedding), expected[0], atol=1e-6)
    assert response.usage.prompt_tokens > 0
    assert {model.id for model in models.data} == {"sentiment", "reader", "encoder"}


def test_the_openai_client_sees_errors_as_api_errors(live_server: Callable[..., LiveServer]) -> None:
    import openai

    with live_server() as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        try:
            client.embeddings.create(model="missing", input="x")
        except openai.NotFoundError as error:
            assert "not served" in str(error)
        else:  # pragma: no cover
            raise AssertionError("expected a 404")
