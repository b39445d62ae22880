"""uvicorn's httptools protocol with what it lacks against idle, slow and too many connections.

uvicorn times out only idle keep-alive connections: a socket that sends nothing, or half a
header, holds its descriptor forever, and enough of them exhaust the process's descriptors
(then nothing, liveness included, is answered). This subclass adds, per connection:

- a header-read timeout: the request line and headers must arrive within ``header_timeout_s``
  of the connection opening (or of a keep-alive request's first byte); otherwise a 408 (or, if
  nothing arrived, a silent close);
- a connection limit: past ``max_connections`` open connections, a request is answered 503
  ``over_capacity`` at once, before any of its body is read, and its connection closed, so
  descriptors free up; ``/health/live`` is still answered, so an overloaded server is not
  restarted for being alive;
- JSON in the one error shape for HTTP syntax errors, instead of uvicorn's text/plain.

The body-read timeout is the ASGI side's (``distilserve.server.middleware.BodyLimitMiddleware``): by then
the request is routed and counted, and its answer goes through the metrics.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from distilserve.server.errors import error_body

# Answered even over the connection limit: a liveness probe must not fail because of load.
ALWAYS_ANSWERED = frozenset({"/health/live"})


def _raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for the protocol level."""
    body = orjson.dumps(error_body(status, message, code))
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Set by ``guarded_protocol``: one subclass per server, holding that server's settings."""

    header_timeout_s: float = 10.0
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._reading_headers = False

    # Header-read timeout ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        if self._header_timer is None:  # a keep-alive connection's next request
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._reading_headers:
            message = f"request headers did not arrive within {self.header_timeout_s:g} s"
            self.transport.write(_raw_error(408, "Request Timeout", message, "header_timeout"))
        # A connection that sent nothing is closed without an answer: there is no request to answer.
        self.transport.close()

    # Connection limit ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._reading_headers = False
        if len(self.connections) <= self.max_connections:
            super().on_headers_complete()
            return
        # uvicorn starts the request with ``self.app``: for this one request, the refusal.
        app = self.app
        self.app = self._over_capacity(app)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _over_capacity(self, app: Any) -> Any:
        limit = self.max_connections

        async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
            if scope.get("path") in ALWAYS_ANSWERED:
                await app(scope, receive, send)
                return
            message = f"server is at its limit of {limit} connections; retry later"
            body = orjson.dumps(error_body(503, message, "over_capacity"))
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return refuse

    # HTTP syntax errors -------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_error(400, "Bad Request", msg, "invalid_http"))
        self.transport.close()


def guarded_protocol(*, header_timeout_s: float, max_connections: int) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for one server (uvicorn instantiates it per connection)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )
