"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and breaks disconnect detection).

- ``ArrivalMiddleware``, the outermost, notes when a request arrived: its deadline starts there,
  not when its handler runs after the body was read and parsed.

- ``BodyLimitMiddleware`` answers 413 for bodies over the limit, by Content-Length or while
  streaming, and 408 for a body that does not arrive within its read timeout, before any of it
  is parsed.
- ``DeadlineMiddleware`` answers 504 instead of a success whose deadline passed after the last
  check in the pipeline (building and serialising the response, and waiting for the event loop
  under load, happen after it): a client never gets a 200 later than it asked.
- ``ObservingMiddleware`` starts every request's ``RequestTrace`` (its id, its stage timings)
  and reports its arrival and answer to the app's observer (metrics, traces), and writes the
  ``X-Request-Id`` and timing headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distilserve.server import clock
from distilserve.server.errors import error_body
from distilserve.server.observer import REQUEST_ID, TRACE, Observer, RequestTrace

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

    def __init__(self, app: ASGIApp, observer: Observer) -> None:
        self.app = app
        self.observer = observer

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
                        self.observer.timed_out(scope.get("state", {}).get(TRACE), model)
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


class ObservingMiddleware:
    """Every request's arrival and answer, to the app's observer (``distilserve.server.observer``).

    It makes the request's ``RequestTrace`` (its id: ``X-Request-Id`` echoed, or generated), puts
    it in the request's state, where admission and the pipeline find it, and sets the id for the
    request's log lines. On the answer it adds ``X-Request-Id`` to every response, and TEI's timing
    headers to those of the inference routes (``timed_paths``): milliseconds from arrival to the
    answer (``X-Total-Time``), tokenizing, queued before the first batch and from the first batch
    to the last row (``X-Queue-Time`` + ``X-Inference-Time`` <= ``X-Total-Time``).
    """

    def __init__(
        self,
        app: ASGIApp,
        observer: Observer,
        *,
        timed_paths: frozenset[str] = frozenset(),
        access_log: bool = False,
    ) -> None:
        self.app = app
        self.observer = observer
        self.timed_paths = timed_paths
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        trace = RequestTrace(_request_id(scope["headers"]), arrived)
        scope.setdefault("state", {})[TRACE] = trace
        token = REQUEST_ID.set(trace.request_id)
        self.observer.request_arrived(trace, scope)
        timed = scope["path"] in self.timed_paths
        status = 500

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [*message.get("headers", ()), (b"x-request-id", trace.request_id.encode())]
                if timed:
                    headers.extend(timing_headers(trace, time.perf_counter()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            ended = time.perf_counter()
            route: Any = scope.get("route")
            # Label by route template, never by raw path: unknown paths would grow label sets forever.
            route_label = getattr(route, "path", None) or "unmatched"
            self.observer.answered(trace, route_label, status, ended)
            if self.access_log:
                logger.info(
                    "request",
                    extra={
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "route": route_label,
                        "model": trace.model,
                        "status": status,
                        "duration_ms": round((ended - arrived) * 1000, 3),
                        "tokens": trace.tokens,
                    },
                )
            REQUEST_ID.reset(token)


TIMING_HEADERS = {
    "x-total-time": "milliseconds from the request's arrival to its answer",
    "x-tokenization-time": "milliseconds spent tokenizing the request",
    "x-queue-time": "milliseconds the request's rows waited for their first batch",
    "x-inference-time": "milliseconds from the request's first batch to its last row computed",
    "x-request-id": "the request's X-Request-Id, or one generated for it",
}


def _milliseconds(seconds: float) -> bytes:
    # Floored to the microsecond, so that the parts never add up to more than the total.
    return b"%d.%03d" % divmod(int(seconds * 1_000_000), 1000)


def timing_headers(trace: RequestTrace, now: float) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-total-time", _milliseconds(now - trace.arrived)),
        (b"x-tokenization-time", _milliseconds(trace.tokenization_s)),
        (b"x-queue-time", _milliseconds(trace.queue_s)),
        (b"x-inference-time", _milliseconds(trace.inference_s)),
    ]


MAX_REQUEST_ID_LENGTH = 128


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-Id`` when it is a sane token (visible ASCII, at most 128), else new."""
    for name, value in headers:
        if name == b"x-request-id":
            if 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(0x21 <= byte <= 0x7E for byte in value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex
