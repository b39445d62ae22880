"""Memory (issue 25): the budget in /metrics, a request that could never fit is a 413 JSON
error, a success that became late after the pipeline's last check is a 504, and every numeric
parameter has a bound in the schema."""

from __future__ import annotations

from typing import Any

import pytest

from distilserve.models.memory import BatchMemoryEstimate
from distilserve.server import clock
from distilserve.server.responses import OrjsonResponse
from tests.server.conftest import metric, running_app, state_of
from tests.server.test_deadlines_and_shedding import MovableClock


async def test_metrics_export_the_rss_and_the_budget(model_args: list[str]) -> None:
    async with running_app(model_args, memory_budget_mb=4096) as (app, client):
        text = (await client.get("/metrics")).text
        rss = metric(app, "distilserve_memory_resident_bytes")
        budget = metric(app, "distilserve_memory_budget_bytes")
        limit = metric(app, "distilserve_batch_memory_limit_bytes", model="sentiment")
    assert "distilserve_memory_resident_bytes" in text and "distilserve_memory_budget_bytes" in text
    assert rss > 10 * 2**20
    assert budget == 4096 * 2**20
    # Each model's share: 80% of the budget less what the process holds, split among the models.
    assert 0 < limit < budget


async def test_a_request_that_could_never_fit_the_memory_budget_is_a_413(model_args: list[str]) -> None:
    async with running_app(model_args) as (app, client):
        batcher = state_of(app).registry.models["sentiment"].batcher
        estimate = BatchMemoryEstimate(hidden_size=32)
        batcher.use_memory_limit(estimate.row_bytes(6), estimate)  # a row of 6 tokens fits, no more
        fits = await client.post("/v1/classify", json={"input": "ok"})
        too_big = await client.post(
            "/v1/classify", json={"input": "a much longer text than six tokens, by far"}
        )
    assert fits.status_code == 200, fits.text
    assert too_big.status_code == 413
    error = too_big.json()["error"]
    assert error["code"] == "memory_budget_exceeded" and error["param"] == "input"
    assert "memory budget" in error["message"]


@pytest.fixture
def movable_clock(monkeypatch: pytest.MonkeyPatch) -> MovableClock:
    moved = MovableClock()
    monkeypatch.setattr(clock, "now", moved)
    return moved


async def test_a_success_late_after_the_last_pipeline_check_is_a_504_not_a_late_200(
    model_args: list[str], movable_clock: MovableClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The time after post-processing (the response built and serialised, the loop busy with 31
    # other clients) is where the late 200s of issue 25 spent their lateness.
    real_render = OrjsonResponse.render

    def slow_render(self: OrjsonResponse, content: Any) -> bytes:
        body = real_render(self, content)
        if not (isinstance(content, dict) and "error" in content):  # a success, not an error body
            movable_clock.advance(10.0)  # serialising the answer took 10 s
        return body

    monkeypatch.setattr(OrjsonResponse, "render", slow_render)
    async with running_app(model_args) as (app, client):
        late = await client.post("/v1/classify", json={"input": "x"}, headers={"X-Request-Timeout": "5"})
        on_time = await client.post("/v1/classify", json={"input": "x"}, headers={"X-Request-Timeout": "60"})
        timed_out = metric(app, "distilserve_timed_out_requests_total", model="sentiment")
        answered = metric(
            app, "distilserve_requests_total", model="sentiment", route="/v1/classify", status="504"
        )
    assert late.status_code == 504, late.text
    assert late.json()["error"]["code"] == "deadline_exceeded"
    assert on_time.status_code == 200  # 10 s is within its 60 s
    assert timed_out == 1 and answered == 1


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/classify", {"input": "x", "top_k": 1e308}, "top_k"),
        ("/v1/classify", {"input": "x", "top_k": 10**30}, "top_k"),
        ("/v1/classify", {"input": "x", "top_k": 1001}, "top_k"),
        ("/predict", {"inputs": "x", "top_k": 10**30}, "top_k"),
        ("/predict", {"inputs": "x", "parameters": {"top_k": 1e308}}, "parameters.top_k"),
        ("/v1/embeddings", {"input": "x", "dimensions": 10**30}, "dimensions"),
        ("/embed", {"inputs": "x", "dimensions": 8193}, "dimensions"),
        (
            "/v1/answer",
            {"inputs": {"question": "q", "context": "c"}, "parameters": {"max_question_len": 513}},
            "parameters.max_question_len",
        ),
    ],
)
async def test_every_numeric_parameter_is_bounded(
    model_args: list[str], path: str, body: dict[str, Any], param: str
) -> None:
    async with running_app(model_args) as (_, client):
        response = await client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


async def test_the_bounds_are_in_the_schema(model_args: list[str]) -> None:
    async with running_app(model_args) as (_, client):
        schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]

    def maximum(schema: str, field: str) -> int:
        prop = schemas[schema]["properties"][field]
        options = prop.get("anyOf", [prop])
        return next(option["maximum"] for option in options if "maximum" in option)

    assert maximum("ClassifyRequest", "top_k") == 1000
    assert maximum("PredictRequest", "top_k") == 1000
    assert maximum("InferenceParameters", "top_k") == 1000
    assert maximum("EmbeddingRequest", "dimensions") == 8192
    assert maximum("EmbedRequest", "dimensions") == 8192
    assert maximum("AnswerParameters", "max_question_len") == 512


async def test_a_question_longer_than_max_question_len_is_refused_as_documented(
    model_args: list[str],
) -> None:
    body = {"inputs": {"question": "why " * 20, "context": "because."}, "parameters": {"max_question_len": 4}}
    async with running_app(model_args) as (_, client):
        response = await client.post("/v1/answer", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"
    assert "max_question_len" in response.json()["error"]["message"]
