"""Route classes: what a route checks after routing and before FastAPI reads and parses its body.

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

from distilserve.server.auth import check_api_key
from distilserve.server.observer import TRACE
from distilserve.server.services import get_services

RouteHandler = Callable[[Request], Coroutine[Any, Any, Response]]


class KeyedRoute(APIRoute):
    """A route that needs the API key (when one is configured), checked before the body is read."""

    admitted = False

    def get_route_handler(self) -> RouteHandler:
        handler = super().get_route_handler()
        admitted = self.admitted

        async def guarded(request: Request) -> Response:
            services = get_services(request)
            check_api_key(request, services.settings.api_key)
            if not admitted:
                return await handler(request)
            with services.admission.admit(trace=request.scope.get("state", {}).get(TRACE)):
                return await handler(request)

        return guarded


class InferenceRoute(KeyedRoute):
    """The key, then admission (429 over ``max_queue_requests`` in flight), before the body."""

    admitted = True
