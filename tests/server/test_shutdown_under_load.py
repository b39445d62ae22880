"""SIGTERM to a real `distilserve serve` process while clients keep it busy.

Clients run closed loops on keep-alive connections. The first SIGTERM starts the drain: a prober,
on fresh connections, sees ``/health/ready`` turn 503 while the clients' requests go on being
answered. Then the clients stop, as they would once a load balancer takes the server out of
rotation, a last wave of large requests is admitted (the server's own metrics say so), and a
second SIGTERM ends the drain: those requests are in flight, or just answered, while the
listener closes. Every request a client sent gets a 200 or a 503 ``shutting_down``: no 500, no
reset, no connection closed without an answer. The steps wait on counters and the server's
answers, never on sleeps; a bug shows as a wait that ends at WAIT_S.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.processes import Process, clean_env, free_port, http_get
from tests.server.conftest import WAIT_S

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 6
LAST_WAVE = 4
# A last-wave request: enough rows that it is usually still being computed as the listener closes.
LARGE_INPUT = [
    f"the film number {index} was wonderful from start to finish and i loved it" for index in range(32)
]


class Outcomes:
    """Every request's outcome, as the clients saw it: a status (with 503's code) or an error's name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()
        self.answered = [0] * CLIENTS

    def record(self, client: int | None, outcome: str) -> None:
        with self.lock:
            self.seen[outcome] += 1
            if client is not None and outcome == "200":
                self.answered[client] += 1

    def each_answered(self, at_least: list[int]) -> bool:
        with self.lock:
            return all(done >= need for done, need in zip(self.answered, at_least, strict=True))


def outcome_of(send: httpx.Client, body: object) -> str:
    try:
        response = send.post("/v1/classify", json=body)
    except httpx.HTTPError as exc:  # a reset, or a connection closed with no answer
        return type(exc).__name__
    if response.status_code == 503:
        return f"503 {response.json()['error']['code']}"
    return str(response.status_code)


def poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


CLASSIFY_ANSWERED = 'distilserve_requests_total{model="sentiment",route="/v1/classify"'
INFLIGHT = "distilserve_inflight_requests "


def classify_admitted(url: str) -> float:
    """Classify requests the server has admitted so far: answered, or in flight (its /metrics)."""
    _, text = http_get(f"{url}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith((CLASSIFY_ANSWERED, INFLIGHT))
    )


@pytest.fixture
def server(model_args: list[str], tmp_path: Path) -> Iterator[tuple[Process, str]]:
    port = free_port()
    argv = [sys.executable, "-m", "distilserve", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--model", model_args[0], "--no-warmup", "--log-format", "text"]
    # A drain that only the second SIGTERM ends; a grace period no request here comes near.
    argv += ["--drain-s", str(10 * WAIT_S), "--graceful-shutdown-s", str(WAIT_S)]
    process = Process(argv, tmp_path / "serve.log", env=clean_env(PYTHONPATH=str(REPO_ROOT)))
    url = f"http://127.0.0.1:{port}"
    with process:
        process.wait_until(f"{url}/health/ready", timeout_s=120)
        yield process, url


@pytest.mark.slow
def test_sigterm_under_load_drains_then_answers_every_admitted_request(server: tuple[Process, str]) -> None:
    process, url = server
    assert process.process is not None
    outcomes = Outcomes()
    stop = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=WAIT_S) as send:
            while not stop.is_set():
                outcomes.record(index, outcome_of(send, {"input": [f"client {index} finds it charming"] * 4}))

    clients = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        poll(lambda: outcomes.each_answered([1] * CLIENTS), "every client answered once")
        process.process.send_signal(signal.SIGTERM)
        poll(lambda: http_get(f"{url}/health/ready") == (503, b'{"status":"draining"}'), "ready turns 503")
        assert http_get(f"{url}/health/live")[0] == 200
        # Still serving through the drain: every client gets more answers after ready turned 503.
        with outcomes.lock:
            after_flip = [done + 3 for done in outcomes.answered]
        poll(lambda: outcomes.each_answered(after_flip), "every client answered during the drain")
    finally:
        stop.set()
        for thread in clients:
            thread.join(WAIT_S)

    # The last wave: admitted (in flight or answered, by the server's count) before the drain ends.
    admitted_before = classify_admitted(url)

    def last_request() -> None:
        with httpx.Client(base_url=url, timeout=WAIT_S) as send:
            outcomes.record(None, outcome_of(send, {"input": LARGE_INPUT}))

    last_wave = [threading.Thread(target=last_request) for _ in range(LAST_WAVE)]
    for thread in last_wave:
        thread.start()
    poll(lambda: classify_admitted(url) - admitted_before >= LAST_WAVE, "the last wave admitted")
    process.process.send_signal(signal.SIGTERM)  # ends the drain: the listener closes now
    for thread in last_wave:
        thread.join(WAIT_S)
    returncode = process.process.wait(WAIT_S)

    log = process.log_tail(100_000)
    # uvicorn re-raises the signal it handled once it has shut down: a SIGTERM exit, as a
    # supervisor expects (143 from a shell), after the clean stop the log records.
    assert returncode == -signal.SIGTERM, log
    assert "server stopped" in log, log
    assert set(outcomes.seen) <= {"200", "503 shutting_down"}, outcomes.seen
    assert sum(outcomes.seen.values()) >= 4 * CLIENTS + LAST_WAVE
    assert "unhandled error" not in log and "Traceback" not in log, log
