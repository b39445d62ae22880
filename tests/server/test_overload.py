"""Overload at the protocol level: while admission is full, an inference request is refused with
429 by the connection's own parser callback, before its body arrives and without the app (no
ASGI task, middleware, routing or parsing), and ``/health/live`` is answered the same way; the
admitted requests still get their answers.

Raw sockets on 127.0.0.1 against uvicorn configured as `distilserve serve` configures it; the
admitted requests are held on the model (an event), so "admission is full" is a state, not a race.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.server.conftest import WAIT_S, LiveServer, hold_forward, metric, state_of, wait_until
from tests.server.test_connections import connect, parse_response

BODY = b'{"input": "refused before this body was sent"}'


def classify_head(*, key: str | None = None, close: bool = False) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key is not None else ""
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{auth}{connection}"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


class Admitted:
    """``count`` classify requests admitted and held on the model until ``release``."""

    def __init__(self, server: LiveServer, count: int) -> None:
        self.server = server
        self.held = hold_forward(server.app, "sentiment")
        self.answers: list[httpx.Response] = []
        self.threads = [threading.Thread(target=self._post, args=(index,)) for index in range(count)]
        for thread in self.threads:
            thread.start()
        admission = state_of(server.app).admission
        wait_until(lambda: admission.inflight == count, f"{count} requests admitted")
        self.held.wait_entered()

    def _post(self, index: int) -> None:
        with httpx.Client(base_url=self.server.url, timeout=WAIT_S) as client:
            self.answers.append(client.post("/v1/classify", json={"input": f"admitted {index}"}))

    def release(self) -> list[int]:
        self.held.release.set()
        for thread in self.threads:
            thread.join(WAIT_S)
        return sorted(response.status_code for response in self.answers)


@pytest.fixture
def full_server(live_server: Callable[..., LiveServer]) -> Iterator[tuple[LiveServer, Admitted]]:
    with live_server(max_queue_requests=2) as server:
        admitted = Admitted(server, 2)
        try:
            yield server, admitted
        finally:
            admitted.held.release.set()


def test_a_full_server_refuses_before_the_body_and_keeps_the_connection(
    full_server: tuple[LiveServer, Admitted],
) -> None:
    server, admitted = full_server
    app = server.app
    seen_by_app = metric(app, "distilserve_request_duration_seconds_count", model="", route="/v1/classify")
    refusals = 50
    with connect(server) as sock:
        for _ in range(refusals):
            sock.sendall(classify_head())
            # The answer comes before a byte of the body is sent: it cannot have been read or parsed.
            status, headers, body = parse_response(read_response(sock))
            assert status == 429 and headers["retry-after"] == "1"
            assert headers["connection"] == "keep-alive"
            assert body["error"]["code"] == "queue_full"
            sock.sendall(BODY)  # dropped; the connection goes on to the next request
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = parse_response(read_response(sock))
        assert status == 200 and body == {"status": "ok"}
    assert admitted.release() == [200, 200]
    # Counted as the app's own refusals are, though none of them reached the app.
    assert metric(app, "distilserve_requests_total", model="", route="/v1/classify", status="429") == refusals
    assert metric(app, "distilserve_rejected_requests_total", model="", reason="queue_requests") == refusals
    assert (
        metric(app, "distilserve_request_duration_seconds_count", model="", route="/v1/classify")
        == seen_by_app
    )


def test_a_refusal_that_asks_to_close_is_closed(full_server: tuple[LiveServer, Admitted]) -> None:
    server, admitted = full_server
    with connect(server) as sock:
        sock.sendall(classify_head(close=True) + BODY)
        raw = b""
        while data := sock.recv(65536):  # the server closes: recv returns b""
            raw += data
    status, headers, _ = parse_response(raw)
    assert status == 429 and headers["connection"] == "close"
    assert admitted.release() == [200, 200]


def test_under_a_flood_of_refusals_every_admitted_request_is_answered(
    full_server: tuple[LiveServer, Admitted],
) -> None:
    server, admitted = full_server
    statuses: list[int] = []
    with connect(server) as first, connect(server) as second:
        for _ in range(100):
            for sock in (first, second):
                sock.sendall(classify_head() + BODY)
                statuses.append(parse_response(read_response(sock))[0])
        answers = admitted.release()
        # Room again: the next request is admitted and answered by the model.
        first.sendall(classify_head() + BODY)
        after = parse_response(read_response(first))
    assert statuses == [429] * 200
    assert answers == [200, 200]
    assert after[0] == 200 and after[2]["data"][0]["label"]


def test_with_an_api_key_a_request_without_it_gets_401_even_when_full(
    live_server: Callable[..., LiveServer],
) -> None:
    with live_server(max_queue_requests=1, api_key="sesame") as server:
        held = hold_forward(server.app, "sentiment")
        answers: list[httpx.Response] = []

        def post() -> None:
            with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
                headers = {"Authorization": "Bearer sesame"}
                answers.append(client.post("/v1/classify", json={"input": "admitted"}, headers=headers))

        thread = threading.Thread(target=post)
        thread.start()
        held.wait_entered()
        try:
            statuses = []
            for key in (None, "wrong", "sesame"):
                with connect(server) as sock:
                    sock.sendall(classify_head(key=key, close=True) + BODY)
                    statuses.append(parse_response(read_response(sock))[0])
        finally:
            held.release.set()
            thread.join(WAIT_S)
    assert statuses == [401, 401, 429]
    assert [response.status_code for response in answers] == [200]
