"""The wrk load generator (``distilserve.bench.wrk``) and the server CPU accounting: counts and
bounds against a live server, the Lua literal, the result parser; never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from distilserve.bench.loadgen import BenchRequest, Bounds, ChatTurn
from distilserve.bench.proc import process_tree_cpu_s
from distilserve.bench.wrk import (
    lua_string,
    parse_output,
    summarise,
    wrk_available,
    wrk_closed_loop,
)
from tests.server.conftest import LiveServer

needs_wrk = pytest.mark.skipif(not wrk_available(), reason="wrk is not installed (apt-get install wrk)")


def classify_request(text: str = "The film was wonderful.", model: str = "sentiment") -> BenchRequest:
    body = json.dumps({"input": text, "model": model}).encode()
    return BenchRequest("/v1/classify", body, items=1, tokens=7, flops=1e6)


def test_lua_string_escapes_every_byte_that_is_not_plain_ascii() -> None:
    literal = lua_string('a"b\\c\n1é'.encode())
    assert literal == '"a\\034b\\092c\\0101\\195\\169"'
    # A digit after an escape stays a digit: escapes always have three.
    assert lua_string(b"\n9") == '"\\0109"'


def test_parse_output_reads_the_result_line_and_counts_socket_errors() -> None:
    line = (
        'distilserve-wrk-result {"duration_us": 2000000, "requests": 7, "statuses": {"200": 5, "429": 2}, '
        '"connect": 0, "read": 1, "write": 0, "timeout": 0, '
        '"p50_us": 1500, "p90_us": 2500, "p99_us": 4000, "mean_us": 1800.5, "max_us": 5000}'
    )
    output = parse_output("Running 2s test @ http://127.0.0.1:1\n" + line + "\n")
    assert output.statuses == {"200": 5, "429": 2}
    assert output.socket_errors == {"wrk_read": 1}
    assert output.latency_ms == {"p50": 1.5, "p90": 2.5, "p99": 4.0, "mean": 1.8005, "max": 5.0}
    result = summarise(
        output, [classify_request(), classify_request()], target="t", workload="w", concurrency=2, cpu_s=0.8
    )
    assert (result.sent, result.ok) == (8, 5)
    assert result.errors == {"429": 2, "wrk_read": 1}
    assert result.requests_per_s == pytest.approx(2.5)
    assert result.tokens_per_s == pytest.approx(7 * 2.5)
    assert result.client_cpu_ms_per_request == pytest.approx(100.0)
    with pytest.raises(RuntimeError, match="no result line"):
        parse_output("unable to connect\n")


def test_chat_turns_are_refused() -> None:
    turn = ChatTurn("/", b"", items=1, tokens=1)
    with pytest.raises(ValueError, match="chat turns"):
        wrk_closed_loop("http://127.0.0.1:9", [turn], 1, Bounds(1, 1))


@needs_wrk
def test_wrk_stops_at_the_request_bound_and_counts_statuses(live_server: Callable[..., LiveServer]) -> None:
    good = classify_request()
    unknown_model = classify_request(model="no-such-model")
    with live_server() as server:
        result = wrk_closed_loop(
            server.url, [good, unknown_model], 2, Bounds(max_requests=40, max_duration_s=60)
        )
    # Each connection may have one request in flight when the bound is reached.
    assert 40 <= result.sent <= 42
    assert result.ok + result.errors["404"] == result.sent
    assert abs(result.ok - result.errors["404"]) <= 2  # the two requests alternate
    assert set(result.latency_ms) == {"p50", "p90", "p99", "mean", "max"}
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["max"]
    assert result.client_cpu_s >= 0


def test_process_tree_cpu_counts_a_child_that_works() -> None:
    # The child says when its work is done (a line on stdout), then waits for stdin to close.
    program = (
        "import sys\nx = 0\nfor i in range(2_000_000): x += i\nprint('done', flush=True)\nsys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "done"
        alone = process_tree_cpu_s(child.pid)
        own = process_tree_cpu_s(os.getpid())
        assert alone is not None and own is not None
        assert alone > 0
        assert own >= alone  # the parent's tree holds its child
    finally:
        child.stdin.close()
        child.wait()
    assert process_tree_cpu_s(child.pid) is None
