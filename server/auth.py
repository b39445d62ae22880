"""Optional API-key authentication: ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from server.errors import ApiError


def check_api_key(request: Request) -> None:
    """Raise 401 unless the request carries the configured key (no key configured: open)."""
    api_key = request.app.state.distilserve.settings.api_key
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = api_key.get_secret_value().encode()
    # compare_digest's time does not depend on where the strings differ, so the key cannot be
    # guessed byte by byte from response times.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise ApiError(
            401,
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_api_key(request: Request) -> None:
    check_api_key(request)


async def require_api_key_for_metrics(request: Request) -> None:
    if request.app.state.distilserve.settings.protect_metrics:
        check_api_key(request)
