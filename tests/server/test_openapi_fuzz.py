"""Schemathesis over the OpenAPI document: generated requests, valid and invalid, to every route.

The app runs in-process (ASGI) over the tiny bundles. Every built-in response check runs on
every answer: no 5xx, each status, content type and header listed for its route, each body
matching its schema, invalid data refused and valid data accepted.

Hypothesis drives schemathesis's strategies directly (schemathesis's pytest plugin reads a
private pytest attribute that pytest 9 removed). Generation is derandomized, so a failure replays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS, CheckFunction, is_check_class, load_all_checks
from schemathesis.core.failures import FailureGroup
from schemathesis.python import asgi
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import positive_data_acceptance

from distilserve.models.bundle import load_manifest
from distilserve.models.tasks.qa import PIPELINE_MAX_SEQ_LEN
from distilserve.server.app import build_app
from tests.server.conftest import make_settings
from tests.tiny_models import Arch

# Cases per operation and generation mode; over the API's operations, a few hundred in all.
CASES_PER_OPERATION = 25


def every_check() -> list[CheckFunction]:
    """Every built-in per-response check but the response-time one: a test never rests on timing."""
    load_all_checks()
    return [
        check
        for check in CHECKS.get_all()
        if not is_check_class(check) and check.__name__ != "max_response_time"
    ]


@pytest.fixture
def served_args(model_args: list[str], tiny_rerank_bundles: dict[tuple[Arch, Any], Path]) -> list[str]:
    """The server fixtures' models, with a reranker: every task's routes have a model."""
    return [*model_args, f"reranker={tiny_rerank_bundles[('bert', 'int8')]}"]


@pytest.fixture
def api_schema(served_args: list[str]) -> Iterator[BaseSchema]:
    server_settings = make_settings(served_args)
    app = build_app(server_settings, server_settings.model_specs)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()  # the models' batchers, started by the first request


def operation_inputs(operation: Any) -> bool:
    """Whether an operation takes anything a client could get wrong (a body or a parameter)."""
    has_body = bool(operation.get_request_payload_content_types())
    return has_body or any(True for _ in operation.iter_parameters())


def past_a_model_bound(case: schemathesis.Case, bounds: dict[tuple[str, str], int]) -> bool:
    """Whether the request exceeds a bound that depends on the model serving it: QA's doc_stride
    (the reader's window, from its max_length) and embeddings' dimensions (the encoder's width).
    One document for every model cannot state these as bounds (the descriptions do), and the
    422 naming the field is the right answer, so "valid data is accepted" does not apply."""
    body = case.body if isinstance(case.body, dict) else {}
    for (path, field), bound in bounds.items():
        holder = body.get("parameters") if field.startswith("parameters.") else body
        value = holder.get(field.rpartition(".")[2]) if isinstance(holder, dict) else None
        if case.operation.path == path and isinstance(value, int | float) and value > bound:
            return True
    return False


def test_generated_requests_meet_the_openapi_document(api_schema: BaseSchema, served_args: list[str]) -> None:
    checks = every_check()
    bundles = dict(arg.split("=", 1) for arg in served_args)
    window = min(load_manifest(Path(bundles["reader"])).max_length, PIPELINE_MAX_SEQ_LEN)
    width = load_manifest(Path(bundles["encoder"])).hidden_size
    assert width is not None
    bounds = {
        ("/v1/answer", "parameters.doc_stride"): window,
        ("/v1/embeddings", "dimensions"): width,
        ("/embed", "dimensions"): width,
    }
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation in operations:
        for mode in schemathesis.GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=CASES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                excluded = [positive_data_acceptance] if past_a_model_bound(case, bounds) else []
                response = case.call_and_validate(checks=checks, excluded_checks=excluded)
                statuses[response.status_code] += 1

            try:
                run()
            except FailureGroup as failure:  # every operation runs; all their failures are shown
                failures.append(f"{operation.label} ({mode.value}): {failure}")
            except Unsatisfiable:
                # An operation with no body, parameter or header (GET /health/live) has nothing
                # to make invalid; every other operation must yield negative cases.
                if mode is not schemathesis.GenerationMode.NEGATIVE or operation_inputs(operation):
                    raise
    assert not failures, "\n\n".join(failures)
    assert sum(statuses.values()) >= 200, statuses
    assert not any(status >= 500 for status in statuses), statuses
