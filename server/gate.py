"""The one gate in front of the work: the API key, admission, and the answers that need no app.

A request meets the gate twice at most, and both places ask this one object:

- ``distilserve.server.http_protocol`` asks it in the callback that parsed the headers, with no ASGI
  task, middleware or routing: ``/health/live`` is answered there, and an inference request
  that carries the key while admission is full gets its 429 there, before its body is read.
  Under overload most requests are refused, so a refusal must cost a small fraction of an
  answer, and a liveness probe must not wait behind the requests it competes with.
- ``distilserve.server.routing`` asks it after routing and before the body is read: the key
  (a 401), then admission (a 429, or the request counts as in flight until it is answered). This
  catches what got past the protocol (requests started in the same loop turn, apps served
  without the protocol, keyless requests whose 401 the app writes).

So the key is compared in one place (``key_matches``), and the 429 is made in one place
(``queue_full``), whether it leaves as an ``ApiError`` or as the protocol's bytes.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Iterator
from http import HTTPStatus

import orjson
from fastapi import Request

from distilserve.server.admission import RETRY_AFTER_S, Admission
from distilserve.server.errors import ApiError, error_body
from distilserve.server.observer import Observer, RequestTrace
from distilserve.server.settings import ServerSettings

LIVE_PATH = "/health/live"
LIVE_BODY = orjson.dumps({"status": "ok"})  # server.service.protocol.Health, as /health/live answers it


def raw_response(status: int, body: bytes, headers: dict[str, str] | None, *, keep_alive: bool) -> bytes:
    """A whole HTTP/1.1 JSON response, as the protocol writes it without the app."""
    extra = "".join(f"{name.lower()}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}"
        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("ascii") + body


class Gate:
    """One per app: who may ask (the key), whether there is room (admission), and the answers the
    protocol gives by itself. ``admitted_paths`` are the routes admission guards (``InferenceRoute``'s)."""

    def __init__(
        self,
        settings: ServerSettings,
        admission: Admission,
        observer: Observer,
        admitted_paths: frozenset[str] = frozenset(),
    ) -> None:
        key = settings.api_key
        self._key = None if key is None else key.get_secret_value().encode()
        self.protect_metrics = settings.protect_metrics
        self.admission = admission
        self.observer = observer
        self.admitted_paths = admitted_paths
        # The protocol's 429, rendered once from ``queue_full`` rather than per refusal (under a
        # flood, refusals are most of what the server writes).
        self._refusals: dict[bool, bytes] = {}

    # The API key ----------------------------------------------------------------------------

    def key_matches(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value lets the request in (always, with no key set)."""
        if self._key is None:
            return True
        scheme, _, token = (authorization or b"").partition(b" ")
        # compare_digest's time does not depend on where the strings differ, so the key cannot be
        # guessed byte by byte from response times.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)

    def check_key(self, request: Request) -> None:
        """Raise 401 unless the request carries the key. Starlette decodes headers as latin-1."""
        header = request.headers.get("authorization")
        if not self.key_matches(None if header is None else header.encode("latin-1")):
            raise ApiError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def check_metrics_key(self, request: Request) -> None:
        if self.protect_metrics:
            self.check_key(request)

    # Admission ------------------------------------------------------------------------------

    def queue_full(self) -> ApiError:
        """The 429 of a full server, the one definition of it."""
        return ApiError(
            429,
            f"server is at capacity ({self.admission.max_requests} requests in flight); retry later",
            code="queue_full",
            headers={"Retry-After": RETRY_AFTER_S},
        )

    @contextlib.contextmanager
    def admit(self, model: str = "", trace: RequestTrace | None = None) -> Iterator[None]:
        """Count a request in flight while the block runs, or refuse it with 429 when the server is full."""
        started = time.perf_counter()
        if self.admission.full:
            self.admission.count_refusal(model, trace)
            raise self.queue_full()
        with self.admission.holding(trace, started):
            yield

    # What the protocol answers by itself --------------------------------------------------------

    def refuses(self, path: str, method: str, headers: list[tuple[bytes, bytes]]) -> bool:
        """True when this request gets the queue-full 429 without reaching the app (and is counted).

        A request without the key is left to the app, which answers its 401: the key comes
        before admission on both sides."""
        if method != "POST" or path not in self.admitted_paths or not self.admission.full:
            return False
        authorization = next((value for name, value in headers if name == b"authorization"), None)
        if not self.key_matches(authorization):
            return False
        self.admission.count_refusal()
        self.observer.answered_fast(path, 429)
        return True

    def refusal_bytes(self, *, keep_alive: bool) -> bytes:
        refusal = self._refusals.get(keep_alive)
        if refusal is None:
            error = self.queue_full()
            body = orjson.dumps(error_body(error.status, error.message, error.code, error.param))
            refusal = self._refusals[keep_alive] = raw_response(
                error.status, body, error.headers, keep_alive=keep_alive
            )
        return refusal

    def live_bytes(self, *, keep_alive: bool) -> bytes:
        """``/health/live``'s answer, counted in the metrics."""
        self.observer.answered_fast(LIVE_PATH, 200)
        return live_response(keep_alive=keep_alive)


_LIVE = {
    keep_alive: raw_response(200, LIVE_BODY, None, keep_alive=keep_alive) for keep_alive in (False, True)
}


def live_response(*, keep_alive: bool) -> bytes:
    """``/health/live``'s answer as bytes (for a protocol serving an app without a gate too)."""
    return _LIVE[keep_alive]
