"""Each task's endpoints, end to end over the tiny bundles, against the library's own results."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from distilserve.models import load_model
from distilserve.models.tasks import ClassifyParams, EmbedParams, QAInput, QAParams
from tests.server.conftest import BundleMap, metric, running_app, state_of

TEXTS = ["the film was wonderful", "The service was awful, slow and boring from start to finish.", "Ok."]
CONTEXT = (
    "The hotel opened in 1921 near the airport in Paris. Its restaurant was charming, "
    "and the soundtrack of the film was recorded in the ballroom after 45 minutes of rain."
)


@pytest.fixture(scope="module")
def library(tiny_bundles: BundleMap) -> dict[str, Path]:
    return {
        "sentiment": tiny_bundles[("distilbert", "text-classification")],
        "reader": tiny_bundles[("bert", "question-answering")],
        "encoder": tiny_bundles[("bert", "feature-extraction")],
    }


async def test_classify_equals_the_library(
    app_client: tuple[FastAPI, httpx.AsyncClient], library: dict[str, Path]
) -> None:
    _, client = app_client
    response = await client.post("/v1/classify", json={"input": TEXTS, "top_k": None})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = load_model(library["sentiment"]).predict(TEXTS, ClassifyParams(top_k=None))
    assert body["model"] == "sentiment"
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    for item, labels in zip(body["data"], expected, strict=True):
        assert item["label"] == labels[0].label
        assert [entry["label"] for entry in item["labels"]] == [entry.label for entry in labels]
        assert [entry["score"] for entry in item["labels"]] == pytest.approx(
            [e.score for e in labels], abs=1e-6
        )
    assert body["usage"]["prompt_tokens"] > len(TEXTS)


async def test_classify_single_text_top_k_and_raw_scores(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = app_client
    response = await client.post("/v1/classify", json={"input": TEXTS[0], "top_k": 2, "raw_scores": True})
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    assert len(item["labels"]) == 2
    assert item["labels"][0]["score"] >= item["labels"][1]["score"]


async def test_tei_predict_shapes(
    app_client: tuple[FastAPI, httpx.AsyncClient], library: dict[str, Path]
) -> None:
    _, client = app_client
    single = await client.post("/predict", json={"inputs": TEXTS[0]})
    assert single.status_code == 200, single.text
    labels = single.json()
    assert isinstance(labels, list) and set(labels[0]) == {"label", "score"}
    assert len(labels) == 3  # TEI returns every label
    assert sum(entry["score"] for entry in labels) == pytest.approx(1.0, abs=1e-5)
    batch = await client.post("/predict", json={"inputs": TEXTS})
    assert batch.status_code == 200
    assert len(batch.json()) == len(TEXTS) and batch.json()[0] == labels


async def test_predict_with_parameters_answers_in_the_inference_api_shape(
    app_client: tuple[FastAPI, httpx.AsyncClient], library: dict[str, Path]
) -> None:
    """huggingface_hub's InferenceClient sends ``parameters`` and reads ``[[...]]`` for one text."""
    _, client = app_client
    tei = (await client.post("/predict", json={"inputs": TEXTS[0]})).json()
    nested = await client.post("/predict", json={"inputs": TEXTS[0], "parameters": {}})
    assert nested.status_code == 200, nested.text
    assert nested.json() == [tei]
    top_one = (await client.post("/predict", json={"inputs": TEXTS[0], "parameters": {"top_k": 1}})).json()
    assert top_one == [tei[:1]]
    logits = load_model(library["sentiment"]).predict(TEXTS[:1], ClassifyParams(top_k=None, raw_scores=True))[
        0
    ]
    body = {"inputs": TEXTS[0], "parameters": {"function_to_apply": "sigmoid"}}
    sigmoid = (await client.post("/predict", json=body)).json()[0]
    assert [entry["label"] for entry in sigmoid] == [entry.label for entry in logits]
    np.testing.assert_allclose(
        [entry["score"] for entry in sigmoid], [1 / (1 + np.exp(-entry.score)) for entry in logits], rtol=1e-5
    )
    body = {"inputs": TEXTS[0], "parameters": {"function_to_apply": "none"}}
    raw = (await client.post("/predict", json=body)).json()[0]
    np.testing.assert_allclose(
        [entry["score"] for entry in raw], [entry.score for entry in logits], rtol=1e-5
    )
    unknown = await client.post(
        "/predict", json={"inputs": TEXTS[0], "parameters": {"function_to_apply": "x"}}
    )
    assert unknown.status_code == 422


async def test_answer_equals_the_library(
    app_client: tuple[FastAPI, httpx.AsyncClient], library: dict[str, Path]
) -> None:
    _, client = app_client
    question = "Where did the hotel open?"
    single = await client.post("/v1/answer", json={"inputs": {"question": question, "context": CONTEXT}})
    assert single.status_code == 200, single.text
    (expected,) = load_model(library["reader"]).predict([QAInput(question, CONTEXT)], QAParams())
    answer = single.json()
    assert answer["answer"] == expected[0].answer
    assert (answer["start"], answer["end"]) == (expected[0].start, expected[0].end)
    assert answer["score"] == pytest.approx(expected[0].score, rel=1e-5)
    assert CONTEXT[answer["start"] : answer["end"]] == answer["answer"]

    several = await client.post(
        "/v1/answer",
        json={
            "inputs": [
                {"question": question, "context": CONTEXT},
                {"question": "What was charming?", "context": CONTEXT},
            ],
            "parameters": {"top_k": 3, "doc_stride": 16},
        },
    )
    assert several.status_code == 200, several.text
    results = several.json()
    assert len(results) == 2 and all(isinstance(answers, list) for answers in results)
    library_results = load_model(library["reader"]).predict(
        [QAInput(question, CONTEXT), QAInput("What was charming?", CONTEXT)], QAParams(top_k=3, doc_stride=16)
    )
    for served, expected_answers in zip(results, library_results, strict=True):
        assert [a["answer"] for a in served] == [a.answer for a in expected_answers]


async def test_embeddings_float_and_base64_equal_the_library(
    app_client: tuple[FastAPI, httpx.AsyncClient], library: dict[str, Path]
) -> None:
    _, client = app_client
    expected = np.stack(load_model(library["encoder"]).predict(TEXTS, EmbedParams()))
    as_float = await client.post("/v1/embeddings", json={"model": "encoder", "input": TEXTS})
    assert as_float.status_code == 200, as_float.text
    body = as_float.json()
    assert body["object"] == "list" and body["model"] == "encoder"
    vectors = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0

    as_base64 = await client.post(
        "/v1/embeddings", json={"model": "encoder", "input": TEXTS, "encoding_format": "base64"}
    )
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in as_base64.json()["data"]]
    )
    np.testing.assert_array_equal(decoded, vectors)


async def test_embedding_dimensions_and_tei_embed(app_client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = app_client
    short = await client.post("/v1/embeddings", json={"input": "hello there", "dimensions": 8})
    assert short.status_code == 200, short.text
    assert len(short.json()["data"][0]["embedding"]) == 8
    too_many = await client.post("/v1/embeddings", json={"input": "hello there", "dimensions": 4096})
    assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "dimensions"

    tei = await client.post("/embed", json={"inputs": ["hello there", "general kenobi"]})
    assert tei.status_code == 200, tei.text
    matrix = np.array(tei.json())
    assert matrix.shape[0] == 2
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)  # TEI normalises by default
    raw = np.array((await client.post("/embed", json={"inputs": "hello there", "normalize": False})).json())
    assert abs(float(np.linalg.norm(raw[0])) - 1.0) > 1e-3


async def test_service_routes(app_client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = app_client
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    assert (await client.get("/health/ready")).status_code == 200
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert {(card["id"], card["task"]) for card in models["data"]} == {
        ("sentiment", "text-classification"),
        ("reader", "question-answering"),
        ("encoder", "feature-extraction"),
    }
    info = (await client.get("/info")).json()
    by_name = {model["name"]: model for model in info["models"]}
    assert by_name["sentiment"]["labels"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert by_name["encoder"]["max_length"] > 0
    assert info["batching"]["max_batch_size"] == 32
    assert "onnxruntime" in info["versions"]
    docs = await client.get("/docs")
    assert docs.status_code == 200
    schema = (await client.get("/openapi.json")).json()
    assert {"/v1/classify", "/predict", "/v1/answer", "/v1/embeddings", "/embed"} <= set(schema["paths"])


async def test_calibrated_batching_reports_sane_costs_and_plans_with_them(model_args: list[str]) -> None:
    """--calibrate-batching on the tiny models: finite, positive costs per model, in /info, in
    /metrics, and the overhead the planner uses is the calibrated one."""
    async with running_app(model_args, calibrate_batching=True) as (app, client):
        info = (await client.get("/info")).json()
        assert info["batching"]["calibrate_batching"] is True
        for model in info["models"]:
            batching = model["batching"]
            assert batching["calibrated"] is True, model["name"]
            assert math.isfinite(batching["fixed_cost_ms"]) and batching["fixed_cost_ms"] >= 0
            assert math.isfinite(batching["token_cost_us"]) and batching["token_cost_us"] > 0
            batcher = state_of(app).registry.models[model["name"]].batcher
            assert batcher.cost is not None
            assert batching["overhead_tokens"] == batcher.limits.batch_overhead_tokens
            assert batcher.limits.batch_overhead_tokens == batcher.cost.overhead_tokens
            assert batching["max_wait_ms"] <= 2.0
            assert metric(app, "distilserve_batch_token_cost_seconds", model=model["name"]) == pytest.approx(
                batcher.cost.per_token_s
            )
        response = await client.post("/v1/classify", json={"input": "the film was wonderful"})
        assert response.status_code == 200


async def test_uncalibrated_batching_reports_the_constants(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = app_client
    info = (await client.get("/info")).json()
    for model in info["models"]:
        assert model["batching"] == {
            "calibrated": False,
            "overhead_tokens": 32,
            "max_wait_ms": 2.0,
            "fixed_cost_ms": None,
            "token_cost_us": None,
        }


async def test_calibration_that_fits_badly_is_retried_then_leaves_the_constants(
    model_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from distilserve.server import registry as registry_module

    fits: list[str] = []
    real = registry_module.calibrate_batch_cost

    def noisy_then_real(*args: Any, **kwargs: Any) -> Any:
        fits.append("try")
        if len(fits) == 1:
            raise ValueError("timings show no fixed cost per run")
        return real(*args, **kwargs)

    monkeypatch.setattr(registry_module, "calibrate_batch_cost", noisy_then_real)
    async with running_app(model_args[:1], calibrate_batching=True) as (app, _):
        assert state_of(app).registry.models["sentiment"].batcher.cost is not None
    assert len(fits) == 2

    def always_noisy(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("timings do not grow with padded tokens")

    monkeypatch.setattr(registry_module, "calibrate_batch_cost", always_noisy)
    async with running_app(model_args[:1], calibrate_batching=True) as (app, client):
        batcher = state_of(app).registry.models["sentiment"].batcher
        assert batcher.cost is None and batcher.limits.batch_overhead_tokens == 32
        info = (await client.get("/info")).json()
        assert info["models"][0]["batching"]["calibrated"] is False
