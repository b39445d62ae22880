"""What happens around a request's work on the HTTP side: admission, deadline, disconnects.

- ``Admission`` counts requests in flight, says when there are ``max_queue_requests`` of them
  (the gate, ``distilserve.server.gate``, refuses the next with 429, at the protocol or before the
  body is read, so a refusal is cheap), and turns ``X-Request-Timeout`` (or the default) into
  the request's deadline, counted from the request's arrival
  (``distilserve.server.middleware.ArrivalMiddleware``).
- ``with_cancellation`` wraps a route handler, as vLLM's decorator of that name does: the
  handler runs beside a watch on the connection; if the client leaves first, the handler is
  cancelled, so its queued rows are dropped before they are computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, Protocol, TypeVar, runtime_checkable

from fastapi import Request

from distilserve.server import clock
from distilserve.server.errors import ApiError
from distilserve.server.middleware import ARRIVED_AT
from distilserve.server.observer import TRACE, Observer, RequestTrace
from distilserve.server.settings import ServerSettings

P = ParamSpec("P")
T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout"
RETRY_AFTER_S = "1"


class ClientDisconnectedError(Exception):
    """The client closed the connection before its answer was ready."""


@dataclass(slots=True)
class RequestContext:
    """What one HTTP request carries through the serving layer (the access log reads it too)."""

    deadline: float  # on clock.now()
    model: str = ""
    tokens: int = 0
    trace: RequestTrace | None = None  # its stage timings and spans (distilserve.server.observer)

    def check_deadline(self, stage: str) -> None:
        """At a hand-off (before tokenization, before queueing, after post-processing): 504 once
        the deadline has passed, so no work starts, and no answer leaves, after it."""
        if clock.now() >= self.deadline:
            raise ApiError(504, f"request deadline exceeded {stage}", code="deadline_exceeded")


class Admission:
    """One per app: requests in flight, and the deadline each one gets."""

    def __init__(self, settings: ServerSettings, observer: Observer) -> None:
        self.max_requests = settings.max_queue_requests
        self.default_timeout_s = settings.request_timeout_s
        self.max_timeout_s = settings.max_request_timeout_s
        self.observer = observer
        self.inflight = 0

    @property
    def full(self) -> bool:
        """Whether a request arriving now is refused (the gate asks)."""
        return self.inflight >= self.max_requests

    def count_refusal(self, model: str = "", trace: RequestTrace | None = None) -> None:
        self.observer.refused(trace, model, "queue_requests")

    @contextlib.contextmanager
    def holding(self, trace: RequestTrace | None = None, started: float | None = None) -> Iterator[None]:
        """Count a request as in flight while the block runs. Whether it may enter is the gate's
        decision (``distilserve.server.gate.Gate.admit``); ``started`` is when it asked."""
        self.inflight += 1
        self.observer.inflight_changed(self.inflight)
        self.observer.admitted(
            trace, time.perf_counter() if started is None else started, time.perf_counter()
        )
        try:
            yield
        finally:
            self.inflight -= 1
            self.observer.inflight_changed(self.inflight)

    def context_for(self, request: Request) -> RequestContext:
        """A context whose deadline is the request's arrival plus X-Request-Timeout (seconds) or the
        default. The arrival is ``ArrivalMiddleware``'s note (now, for an app built without it)."""
        timeout = self.default_timeout_s
        header = request.headers.get(TIMEOUT_HEADER)
        if header is not None:
            try:
                timeout = float(header)
            except ValueError:
                timeout = math.nan
            if not math.isfinite(timeout) or timeout <= 0:
                raise ApiError(
                    422,
                    f"X-Request-Timeout must be a positive number of seconds, got {header!r}",
                    code="invalid_timeout",
                    param="X-Request-Timeout",
                )
            timeout = min(timeout, self.max_timeout_s)
        state = request.scope.get("state", {})
        arrived = state.get(ARRIVED_AT)
        return RequestContext(
            deadline=(clock.now() if arrived is None else arrived) + timeout, trace=state.get(TRACE)
        )


@runtime_checkable
class HasAdmission(Protocol):
    @property
    def admission(self) -> Admission: ...


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away. The body has been read, so the next message is the end."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _argument(kwargs: dict[str, object], name: str, kind: type[T]) -> T:
    value = kwargs.get(name)
    if not isinstance(value, kind):
        raise TypeError(f"a @with_cancellation route takes `{name}: {kind.__name__}` as a parameter")
    return value


def with_cancellation(handler: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run a route under its deadline, and cancel it when the client disconnects.

    The route takes ``request: Request``, ``services`` (anything with an ``admission``) and
    ``context: RequestContext`` among its parameters; FastAPI passes them by keyword. The
    signature FastAPI inspects stays the handler's (``functools.wraps``).
    """

    @functools.wraps(handler)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        request = _argument(kwargs, "request", Request)
        admission = _argument(kwargs, "services", HasAdmission).admission  # type: ignore[type-abstract]
        context = _argument(kwargs, "context", RequestContext)
        work = asyncio.ensure_future(handler(*args, **kwargs))
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            watcher.cancel()
            raise
        if work.done():
            watcher.cancel()
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        admission.observer.cancelled(context.trace, context.model)
        raise ClientDisconnectedError(request.url.path)

    return guarded
