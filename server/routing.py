"""Route classes: what a route asks the gate (``distilserve.server.gate``) after routing and before
FastAPI reads and parses its body.

FastAPI reads, parses and validates the body before it solves a route's dependencies, so a key
checked as a dependency comes after the body's errors (malformed JSON got a 422, not a 401) and
after its cost, and so would admission. ``KeyedRoute`` checks the API key first;
``InferenceRoute`` then admits the request (or answers 429) before a byte of its body is read
or parsed: under overload, refusing is the cheapest answer the server gives.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from distilserve.server.middleware import TIMING_HEADERS
from distilserve.server.observer import TRACE
from distilserve.server.services import services_of

RouteHandler = Callable[[Request], Coroutine[Any, Any, Response]]


class KeyedRoute(APIRoute):
    """A route that needs the API key (when one is configured), checked before the body is read."""

    admitted = False

    def get_route_handler(self) -> RouteHandler:
        handler = super().get_route_handler()
        admitted = self.admitted

        async def guarded(request: Request) -> Response:
            gate = services_of(request).gate
            gate.check_key(request)
            if not admitted:
                return await handler(request)
            with gate.admit(trace=request.scope.get("state", {}).get(TRACE)):
                return await handler(request)

        return guarded


class InferenceRoute(KeyedRoute):
    """The key, then admission (429 over ``max_queue_requests`` in flight), before the body.

    Every answer of an inference route carries the timing headers and ``X-Request-Id``
    (``distilserve.server.middleware.ObservingMiddleware``); its OpenAPI responses say so.
    """

    admitted = True

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        responses: dict[int | str, dict[str, Any]] = dict(kwargs.pop("responses", None) or {})
        for status in {200, *responses}:
            response = dict(responses.get(status, {}))
            response["headers"] = {**TIMING_HEADERS_SCHEMA, **response.get("headers", {})}
            responses[status] = response
        super().__init__(path, endpoint, responses=responses, **kwargs)


TIMING_HEADERS_SCHEMA = {
    name: {"description": description, "schema": {"type": "string"}}
    for name, description in TIMING_HEADERS.items()
}
