"""Route classes: what a route checks after routing and before FastAPI reads and parses its body.

FastAPI reads, parses and validates the body before it solves a route's dependencies, so a key
checked as a dependency comes after the body's errors (malformed JSON got a 422, not a 401) and
after its cost. ``KeyedRoute`` checks the API key first.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from server.auth import check_api_key
from server.services import get_services

RouteHandler = Callable[[Request], Coroutine[Any, Any, Response]]


class KeyedRoute(APIRoute):
    """A route that needs the API key (when one is configured), checked before the body is read."""

    def get_route_handler(self) -> RouteHandler:
        handler = super().get_route_handler()

        async def keyed(request: Request) -> Response:
            check_api_key(request, get_services(request).settings.api_key)
            return await handler(request)

        return keyed
