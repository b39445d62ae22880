"""TEI's timing headers and X-Request-Id: on every inference answer, documented, consistent."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from distilserve.server.middleware import TIMING_HEADERS
from tests.server.test_response_schemas import CALLS, ERROR_CALLS

TIMINGS = ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time")
MILLISECONDS = re.compile(r"^\d+\.\d{3}$")


def inference_paths(app: FastAPI) -> frozenset[str]:
    paths: frozenset[str] = app.state.services.gate.admitted_paths
    return paths


def timings(response: httpx.Response) -> dict[str, float]:
    for name in TIMINGS:
        assert MILLISECONDS.match(response.headers[name]), (name, response.headers.get(name))
    return {name: float(response.headers[name]) for name in TIMINGS}


async def test_every_inference_route_answers_with_consistent_timing_headers(
    every_task_app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = every_task_app_client
    calls = [(path, body) for method, path, body in CALLS if path in inference_paths(app)]
    assert {path for path, _ in calls} == inference_paths(app)  # every inference route is called
    for path, body in calls:
        response = await client.post(path, json=body, headers={"x-request-id": f"id-{path}"})
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == f"id-{path}"
        figures = timings(response)
        total = figures["x-total-time"]
        assert total > 0 and figures["x-inference-time"] > 0, (path, figures)
        assert figures["x-queue-time"] + figures["x-inference-time"] <= total, (path, figures)
        assert figures["x-tokenization-time"] <= total, (path, figures)


@pytest.mark.parametrize(("path", "body"), [(path, body) for _, path, body in ERROR_CALLS])
async def test_an_error_answer_carries_them_too(
    every_task_app_client: tuple[FastAPI, httpx.AsyncClient], path: str, body: object
) -> None:
    _, client = every_task_app_client
    response = await client.post(path, json=body)
    assert response.status_code >= 400
    figures = timings(response)
    assert figures["x-queue-time"] + figures["x-inference-time"] <= figures["x-total-time"]
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])  # generated


async def test_a_request_id_is_echoed_only_when_it_is_a_sane_token(
    every_task_app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = every_task_app_client
    for sent in ("with space", "x" * 129, ""):
        response = await client.get("/health/ready", headers={"x-request-id": sent})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"]), sent
    response = await client.get("/v1/models", headers={"x-request-id": "abc-123_4"})
    assert response.headers["x-request-id"] == "abc-123_4"
    assert "x-total-time" not in response.headers  # not an inference route


def test_the_openapi_document_lists_the_headers_on_every_inference_answer(
    every_task_app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, _ = every_task_app_client
    paths = app.openapi()["paths"]
    for path in inference_paths(app):
        for status, response in paths[path]["post"]["responses"].items():
            assert set(response.get("headers", {})) == set(TIMING_HEADERS), (path, status)
