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
- JSON in the one error shape for HTTP syntax errors, instead of uvicorn's text/plain, and a 400
  for a body cut short by the client's half-close (uvicorn closes without a word);
- a lingering close: an answer that closes the connection while the client is still sending
  its body (a 413 for a 10 MB body) shuts the write side, then reads and drops what still comes
  for up to ``LINGER_S``; closing at once with unread data makes the kernel send a reset, which
  can destroy the answer before the client reads it;
- answers that need no application, written in the callback that parsed the headers, with no
  ASGI task, middleware or routing: ``/health/live``, and the 429 for an inference route while
  admission is full. What to answer is the gate's decision (``distilserve.server.gate.Gate``),
  the same object the routes ask; this class only writes it.

The body-read timeout is the ASGI side's (``distilserve.server.middleware.BodyLimitMiddleware``): by then
the request is routed and counted, and its answer goes through the metrics.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import orjson
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from distilserve.server import clock
from distilserve.server.errors import error_body
from distilserve.server.gate import LIVE_PATH, Gate, live_response, raw_response
from distilserve.server.middleware import ARRIVED_AT

# Answered even over the connection limit: a liveness probe must not fail because of load.
ALWAYS_ANSWERED = frozenset({LIVE_PATH})
# How long a closing connection keeps reading (and dropping) a body the answer made unneeded.
LINGER_S = 2.0


class LingeringTransport:
    """The connection's transport, as uvicorn sees it, with a ``close`` that lingers while the
    request's body is still coming (``GuardedHttpToolsProtocol.body_unfinished``)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        transport = self._transport
        protocol = self._protocol
        if transport.is_closing() or protocol.lingering or not protocol.body_unfinished():
            transport.close()
            return
        protocol.lingering = True
        if transport.can_write_eof():
            transport.write_eof()  # the answer is flushed first, then FIN
        transport.resume_reading()
        protocol.loop.call_later(LINGER_S, transport.close)


def _raw_error(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for the protocol level."""
    return raw_response(status, orjson.dumps(error_body(status, message, code)), None, keep_alive=False)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Set by ``guarded_protocol``: one subclass per server, holding that server's settings."""

    header_timeout_s: float = 10.0
    max_connections: int = 1000
    gate: Gate | None = None  # the app's; None for an app that build_app did not build

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._reading_headers = False
        # A request answered by the protocol: its body (if any) is read and dropped, then the
        # connection is kept (or closed, as the request asked).
        self._answered_early = False
        self._keep_alive_after = False
        # Set by LingeringTransport.close: everything that still arrives is dropped unparsed.
        self.lingering = False

    # Header-read timeout ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._arm_header_timer()

    def body_unfinished(self) -> bool:
        """A request whose body has not all arrived (its answer may already be sent)."""
        return self.cycle is not None and self.cycle.more_body and self.parser is not None

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # the rest of a body nobody will read
        super().data_received(data)

    def eof_received(self) -> None:
        """The client half-closed: a body cut short is a 400 (if nothing was answered yet);
        then, as uvicorn does, the connection closes."""
        cycle = self.cycle
        if not self.lingering and cycle is not None and cycle.more_body and not cycle.response_complete:
            self.transport.write(
                _raw_error(
                    400,
                    "the request body ended (the client closed its side) before it was complete",
                    "incomplete_body",
                )
            )
            cycle.response_complete = True  # whatever the app answers later is not sent
            cycle.disconnected = True
            cycle.message_event.set()

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
            self.transport.write(_raw_error(408, message, "header_timeout"))
        # A connection that sent nothing is closed without an answer: there is no request to answer.
        self.transport.close()

    # Connection limit ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._reading_headers = False
        if self._answer_early():
            return
        if len(self.connections) <= self.max_connections:
            super().on_headers_complete()
            self._note_arrival()
            return
        # uvicorn starts the request with ``self.app``: for this one request, the refusal.
        app = self.app
        self.app = self._over_capacity(app)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _note_arrival(self) -> None:
        """The request's arrival, for its deadline, when its headers are parsed: the ASGI task
        uvicorn just created runs only when the loop gets to it, which under load is later
        (``ArrivalMiddleware`` keeps this time rather than its own)."""
        scope = getattr(self, "scope", None)
        if isinstance(scope, dict):
            scope.setdefault("state", {})[ARRIVED_AT] = clock.now()

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

    # Answers without the application ------------------------------------------------------

    def _answer_early(self) -> bool:
        """Answer ``/health/live``, or refuse over admission, right here; False to go on as usual."""
        if self.cycle is not None and not self.cycle.response_complete:
            return False  # a pipelined request: its answer must wait for the one before it
        method = self.parser.get_method()
        if method not in (b"GET", b"POST"):
            return False
        try:
            path = httptools.parse_url(self.url).path
        except httptools.HttpParserInvalidURLError:
            return False  # uvicorn's own handling answers it
        # A client that waits for "100 Continue" may never send its body: close after answering.
        keep_alive = self.parser.should_keep_alive() and not self.expect_100_continue
        gate = self.gate
        if path == LIVE_PATH.encode() and method == b"GET":
            if gate is None:
                answer = live_response(keep_alive=keep_alive)
            else:
                answer = gate.live_bytes(keep_alive=keep_alive)
        elif gate is not None and gate.refuses(
            path.decode("ascii", "replace"), method.decode("ascii"), self.headers
        ):
            answer = gate.refusal_bytes(keep_alive=keep_alive)
        else:
            return False
        self.transport.write(answer)
        self._answered_early = True
        self._keep_alive_after = keep_alive
        # The rest of the body gets the header timeout to arrive, then the connection is closed.
        self._arm_header_timer()
        return True

    def on_body(self, body: bytes) -> None:
        if not self._answered_early:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._answered_early:
            super().on_message_complete()
            return
        self._answered_early = False
        self._disarm_header_timer()
        if not self._keep_alive_after:
            self.transport.close()
        elif self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # HTTP syntax errors -------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_error(400, msg, "invalid_http"))
        self.transport.close()


def guarded_protocol(
    *, header_timeout_s: float, max_connections: int, gate: Gate | None = None
) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for one server (uvicorn instantiates it per connection)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "max_connections": max_connections,
            "gate": gate,
        },
    )
