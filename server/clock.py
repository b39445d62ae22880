"""The clock that request deadlines are measured on.

Deadlines are set when a request arrives (``distilserve.server.middleware.ArrivalMiddleware``)
and checked at every hand-off (``distilserve.server.pipeline``, ``distilserve.server.batching``),
all against ``now()``. Callers look it up as ``clock.now()`` at each call, so a test can move
time forward without sleeping.
"""

from __future__ import annotations

import time


def now() -> float:
    """Seconds on a monotonic clock (``time.monotonic``)."""
    return time.monotonic()
