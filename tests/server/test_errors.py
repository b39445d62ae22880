"""Bad input never reaches a 500: each gets a 4xx JSON error in one shape, and the server goes on."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from distilserve.server.errors import error_body
from tests.server.conftest import running_app

LONG_TEXT = "word " * 400  # far beyond the tiny models' 128 tokens
CONTEXT = "The hotel opened in 1921 near the airport in Paris."

# (route, JSON body or raw bytes, expected status, expected code, expected param)
BAD_INPUTS: list[tuple[str, Any, int, str | None, str | None]] = [
    ("/v1/classify", {"input": ""}, 422, "invalid_input", "input"),
    ("/v1/classify", {"input": "   \n\t"}, 422, "invalid_input", "input"),
    ("/v1/classify", {"input": ["fine", ""]}, 422, "invalid_input", "input[1]"),
    ("/v1/classify", {"input": []}, 422, "invalid_request", "input"),
    ("/v1/classify", {"input": 42}, 422, "invalid_request", "input"),
    ("/v1/classify", {"input": ["ok", 3]}, 422, "invalid_request", "input[1]"),
    ("/v1/classify", {"input": None}, 422, "invalid_request", None),
    ("/v1/classify", {}, 422, "invalid_request", "input"),
    ("/v1/classify", {"input": "x", "top_k": 0}, 422, "invalid_request", "top_k"),
    ("/v1/classify", {"input": "x", "top_k": "two"}, 422, "invalid_request", "top_k"),
    ("/v1/classify", {"input": "x", "unknown_option": 1}, 422, "invalid_request", "unknown_option"),
    ("/v1/classify", {"input": ["x"] * 9}, 413, "too_many_items", "input"),
    ("/v1/classify", {"input": "y" * 2001}, 413, "item_too_large", "input"),
    ("/v1/classify", {"input": LONG_TEXT, "truncate": False}, 422, "input_too_long", "input"),
    ("/predict", {"inputs": LONG_TEXT}, 422, "input_too_long", "inputs"),  # TEI: truncate defaults to false
    ("/v1/classify", b'{"input": "unterminated', 422, "invalid_request", None),
    ("/v1/classify", b"", 422, "invalid_request", None),
    ("/v1/classify", b"[1, 2, 3]", 422, "invalid_request", None),
    ("/v1/classify", b'{"input": "caf\xe9"}', 422, "invalid_request", None),  # Latin-1, not UTF-8
    ("/v1/classify", b"[" * 10_000 + b"]" * 10_000, 422, "invalid_request", None),
    ("/v1/classify", {"input": "x", "truncate": 0}, 422, "invalid_request", "truncate"),
    ("/v1/classify", {"input": "x", "truncate": "yes"}, 422, "invalid_request", "truncate"),
    ("/v1/classify", {"input": "x", "truncate": ""}, 422, "invalid_request", "truncate"),
    ("/v1/classify", {"input": "x", "raw_scores": 1}, 422, "invalid_request", "raw_scores"),
    ("/v1/classify", {"input": "x", "top_k": "2"}, 422, "invalid_request", "top_k"),
    ("/v1/classify", {"input": "x", "top_k": 2.5}, 422, "invalid_request", "top_k"),
    ("/predict", {"inputs": "x", "truncate": "true"}, 422, "invalid_request", "truncate"),
    ("/embed", {"inputs": "x", "normalize": "false"}, 422, "invalid_request", "normalize"),
    ("/v1/embeddings", {"input": "x", "dimensions": "8"}, 422, "invalid_request", "dimensions"),
    (
        "/v1/answer",
        {"inputs": {"question": "Q?", "context": CONTEXT}, "parameters": {"handle_impossible_answer": 1}},
        422,
        "invalid_request",
        "parameters.handle_impossible_answer",
    ),
    ("/v1/classify", {"model": "nope", "input": "x"}, 404, "model_not_found", "model"),
    ("/v1/classify", {"model": "encoder", "input": "x"}, 400, "wrong_task", "model"),
    ("/v1/embeddings", {"model": "sentiment", "input": "x"}, 400, "wrong_task", "model"),
    ("/v1/embeddings", {"input": [1, 2, 3]}, 422, "invalid_request", "input"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 422, "invalid_request", "encoding_format"),
    ("/v1/embeddings", {"input": "x", "dimensions": 0}, 422, "invalid_request", "dimensions"),
    ("/embed", {"inputs": LONG_TEXT}, 422, "input_too_long", "inputs"),
    ("/v1/answer", {"inputs": {"question": "", "context": CONTEXT}}, 422, "invalid_input", "inputs.question"),
    (
        "/v1/answer",
        {"inputs": {"question": "Where?", "context": " "}},
        422,
        "invalid_input",
        "inputs.context",
    ),
    ("/v1/answer", {"inputs": []}, 422, "invalid_request", "inputs"),
    ("/v1/classify", {"input": "x", "top_k": 2.5}, 422, "invalid_request", "top_k"),
    ("/v1/answer", {"inputs": {"question": "Where?"}}, 422, "invalid_request", "inputs.context"),
    ("/v1/answer", {"inputs": "Where is it?"}, 422, "invalid_request", None),
    (
        "/v1/answer",
        {"inputs": {"question": "Where?", "context": CONTEXT}, "parameters": {"top_k": -1}},
        422,
        "invalid_request",
        "parameters.top_k",
    ),
]


@pytest.fixture(scope="module")
async def strict_client(model_args: list[str]) -> Any:
    async with running_app(model_args, max_items_per_request=8, max_chars_per_item=2000) as pair:
        yield pair


@pytest.mark.parametrize(("route", "body", "status", "code", "param"), BAD_INPUTS)
async def test_bad_input_gets_its_4xx_json_error(
    strict_client: tuple[FastAPI, httpx.AsyncClient],
    route: str,
    body: Any,
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    _, client = strict_client
    if isinstance(body, bytes):
        response = await client.post(route, content=body, headers={"content-type": "application/json"})
    else:
        response = await client.post(route, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    assert error["type"] in {"invalid_request_error", "not_found_error"}
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    # And the server is still fine.
    assert (await client.post("/v1/classify", json={"input": "still serving"})).status_code == 200


async def test_the_too_long_error_states_the_count_and_the_limit(
    strict_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = strict_client
    response = await client.post("/v1/classify", json={"input": LONG_TEXT, "truncate": False})
    message = response.json()["error"]["message"]
    assert re.search(r"input has \d{3,} tokens", message) and "limit of 128" in message


async def test_truncation_is_per_request(strict_client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = strict_client
    response = await client.post("/v1/classify", json={"input": LONG_TEXT, "truncate": True})
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 128


async def test_unknown_routes_and_methods_are_json_errors(
    strict_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = strict_client
    missing = await client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    wrong_method = await client.get("/v1/classify")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"]


async def test_a_body_over_the_limit_is_a_413(model_args: list[str]) -> None:
    async with running_app(model_args, max_body_bytes=4096) as (_, client):
        response = await client.post("/v1/classify", json={"input": "z" * 5000})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"

        # Streamed without a Content-Length, the limit still holds.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b'{"input": "' + b"z" * 1000 + b'"}'

        streamed = await client.post(
            "/v1/classify", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413


async def test_the_model_is_required_when_a_task_has_two(tiny_bundles: Any) -> None:
    args = [
        f"one={tiny_bundles[('distilbert', 'text-classification')]}",
        f"two={tiny_bundles[('bert', 'text-classification')]}",
    ]
    async with running_app(args) as (_, client):
        response = await client.post("/v1/classify", json={"input": "x"})
        assert response.status_code == 400 and response.json()["error"]["code"] == "model_required"
        named = await client.post("/v1/classify", json={"input": "x", "model": "two"})
        assert named.status_code == 200 and named.json()["model"] == "two"


async def test_the_api_key_guards_inference_but_not_health_or_metrics(model_args: list[str]) -> None:
    async with running_app(model_args, api_key="s3cret") as (_, client):
        missing = await client.post("/v1/classify", json={"input": "x"})
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        wrong = await client.post(
            "/v1/classify", json={"input": "x"}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        right = await client.post(
            "/v1/classify", json={"input": "x"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert right.status_code == 200
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


# A lone surrogate, as JSON carries it: the escape is valid JSON but decodes to no character.
SURROGATE = "abc \\ud800 def"
QA = '"inputs": {{"question": {question}, "context": {context}}}'
SURROGATE_FIELDS: list[tuple[str, str, str]] = [
    ("/v1/classify", f'{{"input": "{SURROGATE}"}}', "input"),
    ("/v1/classify", f'{{"input": ["fine", "{SURROGATE}"]}}', "input[1]"),
    ("/v1/classify", f'{{"input": "x", "model": "{SURROGATE}"}}', "model"),
    ("/predict", f'{{"inputs": "{SURROGATE}"}}', "inputs"),
    ("/predict", f'{{"inputs": "x", "model": "{SURROGATE}"}}', "model"),
    ("/v1/embeddings", f'{{"input": "{SURROGATE}"}}', "input"),
    ("/v1/embeddings", f'{{"input": ["{SURROGATE}"]}}', "input[0]"),
    ("/v1/embeddings", f'{{"input": "x", "model": "{SURROGATE}"}}', "model"),
    ("/v1/embeddings", f'{{"input": "x", "user": "{SURROGATE}"}}', "user"),
    ("/embed", f'{{"inputs": "{SURROGATE}"}}', "inputs"),
    ("/embed", f'{{"inputs": "x", "model": "{SURROGATE}"}}', "model"),
    ("/v1/answer", "{" + QA.format(question=f'"{SURROGATE}"', context='"ctx"') + "}", "inputs.question"),
    ("/v1/answer", "{" + QA.format(question='"q"', context=f'"{SURROGATE}"') + "}", "inputs.context"),
    ("/v1/answer", f'{{"inputs": {{"question": "q", "context": "c"}}, "model": "{SURROGATE}"}}', "model"),
]


@pytest.mark.parametrize(("route", "body", "param"), SURROGATE_FIELDS)
async def test_a_lone_surrogate_in_any_text_field_is_a_422_naming_it(
    strict_client: tuple[FastAPI, httpx.AsyncClient], route: str, body: str, param: str
) -> None:
    _, client = strict_client
    response = await client.post(route, content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert "surrogate" in error["message"] and error["code"] == "invalid_request"


async def test_a_lone_surrogate_in_a_key_is_a_422(strict_client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = strict_client
    body = f'{{"input": "x", "{SURROGATE}": 1}}'.encode()
    response = await client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_an_error_quoting_a_lone_surrogate_can_still_be_written() -> None:
    # Errors quote what clients sent; orjson refuses to write a string that is not valid UTF-8.
    body = orjson.loads(orjson.dumps(error_body(422, "key '\ud800' is unknown", param="\ud800")))
    assert body["error"]["message"] == "key '\\ud800' is unknown"
    assert body["error"]["param"] == "\\ud800"


async def test_the_key_is_checked_before_the_body_is_parsed(model_args: list[str]) -> None:
    bodies = [b'{"input": "unterminated', b"\xff\xfe not utf-8", b"", b'{"input": "fine"}']
    async with running_app(model_args, api_key="s3cret") as (_, client):
        for body in bodies:
            for authorization in (None, "Bearer nope", "Bearer ", "Basic s3cret"):
                headers = {"content-type": "application/json"}
                if authorization is not None:
                    headers["authorization"] = authorization
                for route in ("/v1/classify", "/v1/embeddings", "/v1/answer", "/predict", "/embed"):
                    response = await client.post(route, content=body, headers=headers)
                    assert response.status_code == 401, (route, body, authorization, response.text)
                    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("docs_access", "api_key", "without_key", "with_key"),
    [
        ("protected", "s3cret", 401, 200),
        ("protected", None, 200, 200),
        ("open", "s3cret", 200, 200),
        ("off", "s3cret", 404, 404),
        ("off", None, 404, 404),
    ],
)
async def test_the_api_documents_follow_docs_access(
    model_args: list[str], docs_access: str, api_key: str | None, without_key: int, with_key: int
) -> None:
    async with running_app(model_args, api_key=api_key, docs_access=docs_access) as (_, client):
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert (await client.get(path)).status_code == without_key, path
            keyed = await client.get(path, headers={"Authorization": "Bearer s3cret"})
            assert keyed.status_code == with_key, path
        if with_key == 200:
            document = (await client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"})).json()
            assert "/v1/classify" in document["paths"] and "/openapi.json" not in document["paths"]


async def test_an_integer_with_a_zero_fraction_is_an_integer(
    strict_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    # JSON Schema's "integer" (what the document says) includes 2.0; strings and booleans stay refused.
    _, client = strict_client
    response = await client.post("/v1/classify", json={"input": "x", "top_k": 2.0})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["labels"]) == 2
