"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and breaks disconnect detection).

- ``ArrivalMiddleware``, the outermost, notes when a request arrived: its deadline starts there,
  not when its handler runs after the body was read and parsed.

- ``BodyLimitMiddleware`` answers 413 for bodies over the limit, by Content-Length or while
  streaming, and 408 for a body that does not arrive within its read timeout, before any of it
  is parsed.
- ``DeadlineMiddleware`` answers 504 instead of a success whose deadline passed after the last
  check in the pipeline (building and serialising the response, and waiting for the event loop
  under load, happen after it): a client never gets a 200 later than it asked.
- ``RequestMetricsMiddleware`` counts every answer by model, route and status, and times it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distilserve.server import clock
from distilserve.server.errors import error_body
from distilserve.server.metrics import ServerMetrics

logger = logging.getLogger("distilserve.access")

# The key, in the request's state (``scope["state"]``), of its arrival time on ``clock.now()``.
ARRIVED_AT = "arrived_at"


class ArrivalMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # The server's protocol notes the arrival when the headers are parsed (earlier, under
            # load, than this task runs); without it (another server, a test transport), now.
            scope.setdefault("state", {}).setdefault(ARRIVED_AT, clock.now())
        await self.app(scope, receive, send)


async def _send_error(send: Send, status: int, message: str, code: str) -> None:
    """An error answered before the body was read: the connection is closed after it, since the
    rest of the body (if it ever comes) would otherwise be read as the next request."""
    body = orjson.dumps(error_body(status, message, code))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """The body's size (413) and the time it may take to arrive (408), before any of it is parsed."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, read_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        message_text = f"request body is larger than the limit of {limit} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await _send_error(send, 413, message_text, "body_too_large")
                    return
        received = 0
        rejected = False
        body_complete = False
        loop = asyncio.get_running_loop()
        read_by = loop.time() + self.read_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, rejected, body_complete
            if body_complete:
                # Only the disconnect is left to wait for, and that may take as long as the work.
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(read_by - loop.time(), 0.0))
            except TimeoutError:
                rejected = True
                timeout_text = f"request body did not arrive within {self.read_timeout_s:g} s"
                await _send_error(send, 408, timeout_text, "body_timeout")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
                if received > limit and not rejected:
                    rejected = True
                    await _send_error(send, 413, message_text, "body_too_large")
                    # The app sees the client leave, so it stops; its own answer is dropped below.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


class DeadlineMiddleware:
    """The last deadline check, as the response starts: a success that is already late is
    replaced by the same 504 the pipeline answers (``deadline_exceeded``) and its body dropped."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def checked_send(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the late success's body
            if message["type"] == "http.response.start" and int(message["status"]) < 300:
                context = scope.get("state", {}).get("context")
                deadline = getattr(context, "deadline", None)
                if deadline is not None and clock.now() >= deadline:
                    replaced = True
                    model = getattr(context, "model", "") or ""
                    if model:
                        self.metrics.timed_out.labels(model).inc()
                    body = orjson.dumps(
                        error_body(
                            504, "request deadline exceeded before the answer was sent", "deadline_exceeded"
                        )
                    )
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 504,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
            await send(message)

        await self.app(scope, receive, checked_send)


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServerMetrics, *, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route: Any = scope.get("route")
        # Label by route template, never by raw path: unknown paths would grow label sets forever.
        route_label = getattr(route, "path", None) or "unmatched"
        context = scope.get("state", {}).get("context")
        model = getattr(context, "model", "") or ""
        self.metrics.requests.labels(model, route_label, str(status)).inc()
        self.metrics.request_latency.labels(model, route_label).observe(elapsed)
        if self.access_log:
            logger.info(
                "request",
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "route": route_label,
                    "model": model,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "tokens": getattr(context, "tokens", 0),
                },
            )
