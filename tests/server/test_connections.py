"""Connections that are idle, half-sent or too many are closed, answered, and never hold the server.

Raw sockets on 127.0.0.1 against uvicorn configured as `distilserve serve` configures it. Every
wait is bounded by a socket timeout (WAIT_S) that only a bug reaches: a server that never closes
a connection fails the test with a timeout instead of hanging it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from distilserve.server.app import build_app
from distilserve.server.main import uvicorn_config
from distilserve.server.settings import ServerSettings
from tests.server.conftest import WAIT_S, LiveServer, wait_until

CLASSIFY_HEAD = (
    b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
)


def connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection (a timeout means it never did)."""
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


@pytest.fixture(scope="module")
def timeouts_server(model_args: list[str]) -> Iterator[LiveServer]:
    settings = ServerSettings(
        model=model_args, warmup=False, header_read_timeout_s=0.2, body_read_timeout_s=0.2
    )
    with LiveServer(build_app(settings, settings.model_specs)) as server:
        yield server


def test_a_connection_that_sends_nothing_is_closed(timeouts_server: LiveServer) -> None:
    with connect(timeouts_server) as sock:
        assert read_until_closed(sock) == b""


def test_half_a_header_is_answered_408_and_closed(timeouts_server: LiveServer) -> None:
    with connect(timeouts_server) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Ty")
        status, headers, body = parse_response(read_until_closed(sock))
    assert status == 408 and headers["content-type"] == "application/json"
    assert body["error"]["code"] == "header_timeout"


def test_a_body_shorter_than_its_content_length_is_answered_408_and_closed(
    timeouts_server: LiveServer,
) -> None:
    with connect(timeouts_server) as sock:
        sock.sendall(CLASSIFY_HEAD + b'{"input": "only part of the body')
        status, headers, body = parse_response(read_until_closed(sock))
    assert status == 408 and headers["connection"] == "close"
    assert body["error"]["code"] == "body_timeout"


def test_a_request_on_time_is_answered(timeouts_server: LiveServer) -> None:
    # The timeouts cut only what is late: a whole request, sent at once, is served as before.
    payload = b'{"input": "on time"}'
    head = CLASSIFY_HEAD.replace(b"Content-Length: 100", f"Content-Length: {len(payload)}".encode())
    with connect(timeouts_server) as sock:
        sock.sendall(head.replace(b"Host: t\r\n", b"Host: t\r\nConnection: close\r\n") + payload)
        status, _, body = parse_response(read_until_closed(sock))
    assert status == 200 and body["model"] == "sentiment"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ],
)
def test_http_syntax_errors_are_json(timeouts_server: LiveServer, request_bytes: bytes) -> None:
    with connect(timeouts_server) as sock:
        sock.sendall(request_bytes)
        status, headers, body = parse_response(read_until_closed(sock))
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["error"]["code"] == "invalid_http"


def test_past_the_connection_limit_requests_get_a_503_and_liveness_still_answers(
    live_server: Callable[..., LiveServer],
) -> None:
    with live_server(max_connections=2) as server:
        idle = [connect(server), connect(server)]
        try:
            connections = server.server.server_state.connections
            wait_until(lambda: len(connections) == 2, "the server holds both idle connections")
            with connect(server) as sock:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
                status, headers, body = parse_response(read_until_closed(sock))
            assert status == 503 and headers["retry-after"] == "1"
            assert body["error"]["code"] == "over_capacity"
            with connect(server) as sock:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                status, _, body = parse_response(read_until_closed(sock))
            assert status == 200 and body == {"status": "ok"}
        finally:
            for sock in idle:
                sock.close()
        # Below the limit again, requests are served.
        wait_until(lambda: len(connections) == 0, "the idle connections are gone")
        with connect(server) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert parse_response(read_until_closed(sock))[0] == 200


def test_the_keep_alive_timeout_outlasts_a_load_balancer(model_args: list[str]) -> None:
    # Behind a balancer, the balancer must close idle connections first (AWS ALB: 60 s), or it may
    # send a request down a connection the server is closing; uvicorn's own default is 5 s.
    settings = ServerSettings(model=model_args)
    assert settings.keep_alive_timeout_s > 60
    app = build_app(settings, settings.model_specs)
    assert uvicorn_config(app, settings).timeout_keep_alive == settings.keep_alive_timeout_s


def test_a_chunked_body_cut_short_by_a_half_close_is_answered_400(timeouts_server: LiveServer) -> None:
    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with connect(timeouts_server) as sock:
        sock.sendall(head + b"100\r\nabc")  # a 256-byte chunk announced, 3 bytes sent
        sock.shutdown(socket.SHUT_WR)  # what `nc -N` does at the end of its input
        status, headers, body = parse_response(read_until_closed(sock))
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["error"]["code"] == "incomplete_body"


def test_a_10_mb_body_on_a_plain_socket_gets_its_413_before_the_close(model_args: list[str]) -> None:
    settings = ServerSettings(model=model_args, warmup=False)
    body = b"x" * (10 * 2**20)
    head = CLASSIFY_HEAD.replace(b"Content-Length: 100", f"Content-Length: {len(body)}".encode())
    with LiveServer(build_app(settings, settings.model_specs)) as server, connect(server) as sock:
        sent: list[BaseException] = []

        def send_all() -> None:
            try:
                sock.sendall(head + body)  # the whole body is on its way when the 413 is written
            except OSError as exc:  # the server may close before the last bytes; that is fine
                sent.append(exc)

        sender = threading.Thread(target=send_all)
        sender.start()
        try:
            raw = read_until_closed(sock)  # a reset would raise ConnectionResetError here
        finally:
            sender.join(WAIT_S)
    status, headers, error = parse_response(raw)
    assert status == 413 and headers["content-type"] == "application/json"
    assert error["error"]["code"] == "body_too_large"
