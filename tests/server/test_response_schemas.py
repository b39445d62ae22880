"""Every route's body against the response model its OpenAPI schema is generated from.

Routes build their protocol objects without validation (``model_construct``) on the hot path,
so this is where what is sent is checked against what is documented: the body must validate,
and validating must not drop anything (no undocumented field) or change any value.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from distilserve.server.app import ROUTERS

CONTEXT = "The hotel opened in 1921 near the airport in Paris."
PAIR = {"question": "When did the hotel open?", "context": CONTEXT}

# (method, path, JSON body): every documented route, in each of its response shapes.
CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/classify", {"input": ["a fine film", "dull"], "top_k": None}),
    ("POST", "/v1/classify", {"input": "a fine film", "raw_scores": True}),
    ("POST", "/predict", {"inputs": "a fine film"}),
    ("POST", "/predict", {"inputs": ["a fine film", "dull"], "top_k": 1}),
    ("POST", "/v1/embeddings", {"input": ["one text", "another"], "dimensions": 8}),
    ("POST", "/v1/embeddings", {"input": "one text", "encoding_format": "base64"}),
    ("POST", "/embed", {"inputs": ["one text", "another"]}),
    ("POST", "/v1/answer", {"inputs": PAIR}),
    ("POST", "/v1/answer", {"inputs": [PAIR, PAIR], "parameters": {"top_k": 2}}),
    ("POST", "/v1/answer", {"inputs": [PAIR], "parameters": {"top_k": 1}}),
    ("POST", "/rerank", {"query": "when?", "texts": [CONTEXT, "a fine film"]}),
    ("POST", "/rerank", {"query": "when?", "texts": [CONTEXT], "return_text": True, "raw_scores": True}),
    ("POST", "/v1/rerank", {"query": "when?", "documents": [CONTEXT, "a fine film"], "top_n": 1}),
    ("POST", "/v2/rerank", {"query": "when?", "documents": [CONTEXT], "return_documents": False}),
    ("GET", "/v1/models", None),
    ("GET", "/info", None),
    ("GET", "/health/live", None),
    ("GET", "/health/ready", None),
]
ERROR_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/classify", {"input": ""}),  # 422 from the model side
    ("POST", "/v1/classify", {"input": "x", "model": "nope"}),  # 404
    ("POST", "/v1/embeddings", {"input": ["x"] * 300}),  # 413
    ("POST", "/v1/answer", {"inputs": PAIR, "model": "sentiment"}),  # 400
    ("POST", "/predict", {"inputs": 3}),  # 422 from validation
    ("POST", "/rerank", {"query": "when?", "texts": ["x"] * 300}),  # 413
    ("POST", "/v1/rerank", {"query": "when?", "documents": ["x"], "top_n": -1}),  # 422
]


def api_routes() -> list[APIRoute]:
    """The routes ``build_app`` serves, from its routers (the app wraps each included router)."""
    return [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]


def route_for(method: str, path: str) -> APIRoute:
    for route in api_routes():
        if route.path == path and method in route.methods:
            return route
    raise AssertionError(f"no route {method} {path}")


def assert_matches(model: Any, body: Any) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(model)
    validated = adapter.validate_python(body)
    assert adapter.dump_python(validated, mode="json") == body


async def call(client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None) -> Any:
    return await client.request(method, path, json=body)


def test_every_documented_route_is_checked(every_task_app_client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, _ = every_task_app_client
    with_models = {
        (method, route.path)
        for route in api_routes()
        if route.include_in_schema and route.response_model is not None
        for method in route.methods
    }
    assert with_models == {(method, path) for method, path, _ in CALLS}
    # The same routes are the ones the OpenAPI document gives a JSON 200 schema.
    paths = app.openapi()["paths"]
    documented = {
        (method.upper(), path)
        for path, operations in paths.items()
        for method, operation in operations.items()
        if operation["responses"]["200"].get("content", {}).get("application/json", {}).get("schema")
    }
    assert documented == with_models


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[f"{m} {p}" for m, p, _ in CALLS])
async def test_a_body_matches_its_response_model(
    every_task_app_client: tuple[FastAPI, httpx.AsyncClient],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    _, client = every_task_app_client
    response = await call(client, method, path, body)
    assert response.status_code == 200, response.text
    assert_matches(route_for(method, path).response_model, response.json())


@pytest.mark.parametrize(
    ("method", "path", "body"), ERROR_CALLS, ids=[f"{m} {p} {b}" for m, p, b in ERROR_CALLS]
)
async def test_an_error_body_matches_its_documented_model(
    every_task_app_client: tuple[FastAPI, httpx.AsyncClient],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    _, client = every_task_app_client
    response = await call(client, method, path, body)
    documented = route_for(method, path).responses
    assert response.status_code >= 400, response.text
    # Every error status a route answers is listed in its OpenAPI responses.
    assert response.status_code in documented, response.status_code
    assert_matches(documented[response.status_code]["model"], response.json())


def test_every_inference_route_documents_every_error_status(
    every_task_app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, _ = every_task_app_client
    paths = app.openapi()["paths"]
    for path in (
        "/v1/classify",
        "/predict",
        "/v1/embeddings",
        "/embed",
        "/v1/answer",
        "/rerank",
        "/v1/rerank",
    ):
        listed = set(paths[path]["post"]["responses"])
        assert {"400", "401", "404", "413", "422", "429", "503", "504"} <= listed, path
