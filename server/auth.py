"""Optional API-key authentication: ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request
from pydantic import SecretStr

from distilserve.server.errors import ApiError
from distilserve.server.services import ServicesDep


def check_api_key(request: Request, api_key: SecretStr | None) -> None:
    """Raise 401 unless the request carries the configured key (no key configured: open)."""
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


async def require_api_key_for_metrics(request: Request, services: ServicesDep) -> None:
    if services.settings.protect_metrics:
        check_api_key(request, services.settings.api_key)
