"""The gate on its own (``distilserve.server.gate``): one key comparison and one 429, whichever side
asks. The protocol and the routes are tested through a live server in ``test_overload.py`` and
``test_endpoints.py``; here the decisions are checked without a server, including that the bytes
the protocol writes say what the app's own 429 says."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from distilserve.server.admission import Admission
from distilserve.server.errors import ApiError, error_body
from distilserve.server.gate import Gate
from distilserve.server.observer import Observer, RequestTrace
from distilserve.server.settings import ServerSettings

PATH = "/v1/classify"


class RecordingObserver(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def refused(self, trace: RequestTrace | None, model: str, reason: str) -> None:
        self.events.append(("refused", reason))

    def answered_fast(self, path: str, status: int) -> None:
        self.events.append(("answered_fast", path, status))

    def admitted(self, trace: RequestTrace | None, started: float, ended: float) -> None:
        self.events.append(("admitted",))


def make_gate(key: str | None = None, max_requests: int = 1, **overrides: Any) -> Gate:
    settings = ServerSettings(
        api_key=None if key is None else SecretStr(key), max_queue_requests=max_requests, **overrides
    )
    observer = RecordingObserver()
    return Gate(settings, Admission(settings, observer), observer, frozenset({PATH}))


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("ascii").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["content-length"]) == len(body)
    return status_line, headers, body


def test_without_a_key_everyone_is_let_in() -> None:
    gate = make_gate()
    assert gate.key_matches(None)
    assert gate.key_matches(b"Bearer anything")


@pytest.mark.parametrize(
    ("authorization", "matches"),
    [
        (b"Bearer s3cret", True),
        (b"bearer s3cret", True),  # the scheme is case-insensitive (RFC 9110)
        (b"Bearer  s3cret ", True),  # whitespace around the token
        (b"Bearer s3cre", False),
        (b"Bearer s3cret2", False),
        (b"Basic s3cret", False),
        (b"s3cret", False),
        (b"", False),
        (None, False),
    ],
)
def test_the_key_is_compared_in_one_place(authorization: bytes | None, matches: bool) -> None:
    assert make_gate("s3cret").key_matches(authorization) is matches


def test_the_protocol_refuses_only_admitted_posts_with_the_key_while_full() -> None:
    gate = make_gate("k", max_requests=1)
    keyed = [(b"authorization", b"Bearer k")]
    assert not gate.refuses(PATH, "POST", keyed)  # not full yet
    with gate.admit():
        assert gate.admission.full
        assert not gate.refuses("/health/ready", "POST", keyed)  # not an admitted path
        assert not gate.refuses(PATH, "GET", keyed)
        # Without the key the app answers (401 before admission, on both sides).
        assert not gate.refuses(PATH, "POST", [])
        assert not gate.refuses(PATH, "POST", [(b"authorization", b"Bearer wrong")])
        assert gate.refuses(PATH, "POST", keyed)
    observer = gate.observer
    assert isinstance(observer, RecordingObserver)
    assert observer.events == [("admitted",), ("refused", "queue_requests"), ("answered_fast", PATH, 429)]


def test_the_routes_are_refused_with_the_same_429_while_full() -> None:
    gate = make_gate(max_requests=2)
    with gate.admit(), gate.admit():
        assert gate.admission.inflight == 2
        with pytest.raises(ApiError) as refused, gate.admit():
            pass
        assert gate.admission.inflight == 2
    assert gate.admission.inflight == 0
    assert refused.value.status == 429 and refused.value.code == "queue_full"
    assert refused.value.headers == {"Retry-After": "1"}


@pytest.mark.parametrize("keep_alive", [True, False])
def test_the_protocols_429_bytes_say_what_the_apps_429_says(keep_alive: bool) -> None:
    gate = make_gate(max_requests=3)
    status_line, headers, body = split_response(gate.refusal_bytes(keep_alive=keep_alive))
    error = gate.queue_full()
    assert status_line == "HTTP/1.1 429 Too Many Requests"
    assert orjson.loads(body) == error_body(429, error.message, "queue_full")
    assert "(3 requests in flight)" in error.message
    assert headers["retry-after"] == "1"
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == ("keep-alive" if keep_alive else "close")
    # Rendered once: the same bytes each time.
    assert gate.refusal_bytes(keep_alive=keep_alive) is gate.refusal_bytes(keep_alive=keep_alive)


def test_liveness_is_answered_and_counted() -> None:
    gate = make_gate()
    status_line, _, body = split_response(gate.live_bytes(keep_alive=True))
    assert status_line == "HTTP/1.1 200 OK"
    assert orjson.loads(body) == {"status": "ok"}
    observer = gate.observer
    assert isinstance(observer, RecordingObserver)
    assert observer.events == [("answered_fast", "/health/live", 200)]
