"""SIGTERM: not ready at once while still serving (the drain), then what outlasts the grace
period is answered 503 shutting_down, never a 500.

The signal is delivered by calling the server's handler, as the signal would (the server runs in
a thread, where Python delivers no signals). Steps are ordered by a held batch and polled states;
the only time that passes is the grace period itself, which nothing in the test races against.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import httpx

from tests.server.conftest import WAIT_S, LiveServer, hold_forward, state_of, wait_until


def test_sigterm_reports_not_ready_and_serves_through_the_drain(
    live_server: Callable[..., LiveServer],
) -> None:
    with live_server(drain_s=WAIT_S) as server:
        with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
            assert client.get("/health/ready").status_code == 200
            server.server.handle_exit(signal.SIGTERM, None)
            ready = client.get("/health/ready")
            assert ready.status_code == 503 and ready.json() == {"status": "draining"}
            assert client.get("/health/live").status_code == 200
            served = client.post("/v1/classify", json={"input": "still served while draining"})
            assert served.status_code == 200
        assert server.thread.is_alive()
        # A second signal ends the drain at once; the server shuts down.
        server.server.handle_exit(signal.SIGTERM, None)
        server.thread.join(WAIT_S)
        assert not server.thread.is_alive()


def test_requests_outlasting_the_grace_period_get_503_shutting_down(
    live_server: Callable[..., LiveServer],
) -> None:
    with live_server(drain_s=0, graceful_shutdown_s=2) as server:
        held = hold_forward(server.app, "sentiment")
        batcher = state_of(server.app).registry.models["sentiment"].batcher
        answers: dict[str, httpx.Response] = {}

        def post(name: str) -> None:
            with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
                answers[name] = client.post("/v1/classify", json={"input": f"the {name} request"})

        running = threading.Thread(target=post, args=("running",))
        running.start()
        held.wait_entered()  # its batch is on the model, held until released
        queued = threading.Thread(target=post, args=("queued",))
        queued.start()
        wait_until(lambda: batcher.queued_rows == 1, "the second request queued")
        server.server.handle_exit(signal.SIGTERM, None)  # no drain: shutdown starts now
        running.join(WAIT_S)
        queued.join(WAIT_S)
        held.release.set()  # the abandoned batch may finish now; its answer is not read
        server.thread.join(WAIT_S)
    for name in ("running", "queued"):
        response = answers[name]
        assert response.status_code == 503, (name, response.text)
        assert response.json()["error"]["code"] == "shutting_down"
