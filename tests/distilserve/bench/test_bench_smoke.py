"""``distilserve bench``: seconds-long runs on the tiny bundles, asserting behaviour, never timings.

Report shape, request counts and bounds, error accounting by status, the loopback-only rule,
exact-length texts, FLOP counting, and a whole invocation (server subprocess, ceiling, plain
PyTorch server) on a few data lines.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from distilserve.bench.baselines.ceiling import measure_latency, measure_throughput
from distilserve.bench.cli import Settings, checkpoint_for, run
from distilserve.bench.client import HttpxClient, NotLoopbackError, RawHttpClient, require_loopback
from distilserve.bench.gemm_peak import EncoderFlops, measure_gemm_peak
from distilserve.bench.loadgen import OVERFLOW, BenchRequest, Bounds, ChatTurn, closed_loop, open_loop
from distilserve.bench.report import BenchReport, markdown
from distilserve.bench.server_metrics import parse_histogram_totals, server_side
from distilserve.bench.servers import ManagedServer, ServerStartError, free_port
from distilserve.bench.workloads import (
    CHAT_PASSAGES,
    CHAT_PASSAGES_RERANKED,
    BundleTokens,
    chat_workload,
    classify_workload,
    embed_workload,
    text_of_length,
)
from distilserve.models.evaluation.data import SQUAD_DEV
from distilserve.models.tasks import QAInput, RerankPair
from tests.server.conftest import BundleMap, LiveServer, metric, state_of
from tests.tiny_models import corpus


def classify_request(text: str = "The film was wonderful.", model: str = "sentiment") -> BenchRequest:
    body = json.dumps({"input": text, "model": model}).encode()
    return BenchRequest("/v1/classify", body, items=1, tokens=7, flops=1e6)


# Loopback only -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:80", "http://127.3.2.1"]
)
def test_loopback_targets_are_accepted(url: str) -> None:
    host, port = require_loopback(url)
    assert host and port > 0


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1:8080", "http://192.168.1.20", "http://8.8.8.8:80", "https://127.0.0.1", "ftp://x"],
)
def test_other_targets_are_refused(url: str) -> None:
    with pytest.raises(NotLoopbackError):
        require_loopback(url)
    with pytest.raises(ValidationError, match=r"loopback|http"):
        Settings(url=url)


# Load generation against a live server -------------------------------------------------------


@pytest.mark.parametrize("client_class", [RawHttpClient, HttpxClient])
def test_closed_loop_counts_every_request_and_reports_latency(
    live_server: Callable[..., LiveServer], client_class: type[RawHttpClient] | type[HttpxClient]
) -> None:
    with live_server() as server:

        async def go() -> object:
            client = client_class(server.url)
            try:
                return await closed_loop(
                    client,
                    [classify_request()],
                    4,
                    Bounds(max_requests=23, max_duration_s=30, warmup_requests=3),
                )
            finally:
                await client.aclose()

        result = asyncio.run(go())  # type: ignore[arg-type]
    assert result.sent == result.ok == 23  # type: ignore[attr-defined]
    assert result.errors == {}  # type: ignore[attr-defined]
    assert set(result.latency_ms) == {"p50", "p90", "p99", "mean", "max"}  # type: ignore[attr-defined]
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]  # type: ignore[attr-defined]
    assert result.items_per_s > 0 and result.tokens_per_s == pytest.approx(7 * result.requests_per_s)  # type: ignore[attr-defined]
    assert result.useful_gops == pytest.approx(1e6 * result.requests_per_s / 1e9)  # type: ignore[attr-defined]
    assert result.client_cpu_s >= 0  # type: ignore[attr-defined]


def test_errors_are_counted_by_status_and_kept_out_of_latency(live_server: Callable[..., LiveServer]) -> None:
    good = classify_request()
    unknown_model = classify_request(model="nope")  # 404
    empty = classify_request(text="   ")  # 422
    with live_server() as server:

        async def go() -> object:
            client = RawHttpClient(server.url)
            try:
                return await closed_loop(client, [good, unknown_model, empty], 2, Bounds(30, 30))
            finally:
                await client.aclose()

        result = asyncio.run(go())
    assert result.sent == 30 and result.ok == 10  # type: ignore[attr-defined]
    assert result.errors == {"404": 10, "422": 10}  # type: ignore[attr-defined]


def test_connection_failures_are_errors_not_crashes() -> None:
    async def go() -> object:
        client = RawHttpClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there
        try:
            return await closed_loop(client, [classify_request()], 2, Bounds(6, 10))
        finally:
            await client.aclose()

    result = asyncio.run(go())
    assert result.ok == 0 and result.errors == {"ConnectionRefusedError": 6}  # type: ignore[attr-defined]


def test_the_duration_bound_stops_a_run_before_its_request_bound(
    live_server: Callable[..., LiveServer],
) -> None:
    with live_server() as server:

        async def go() -> object:
            client = RawHttpClient(server.url)
            try:
                return await closed_loop(client, [classify_request()], 2, Bounds(10**9, 0.3))
            finally:
                await client.aclose()

        result = asyncio.run(go())
    assert 0 < result.sent < 10**9 and result.sent == result.ok  # type: ignore[attr-defined]


def test_open_loop_sends_on_schedule_and_counts_overflow(live_server: Callable[..., LiveServer]) -> None:
    with live_server() as server:

        async def go() -> tuple[object, object]:
            client = RawHttpClient(server.url)
            try:
                sent = await open_loop(client, [classify_request()], 400.0, Bounds(25, 30), seed=1)
                # No room in flight: every arrival is dropped by the client and counted as such.
                dropped = await open_loop(client, [classify_request()], 400.0, Bounds(5, 30), max_inflight=0)
                return sent, dropped
            finally:
                await client.aclose()

        sent, dropped = asyncio.run(go())
    assert sent.mode == "open" and sent.rate == 400.0 and sent.sent == sent.ok == 25  # type: ignore[attr-defined]
    assert dropped.ok == 0 and dropped.errors == {OVERFLOW: 5}  # type: ignore[attr-defined]


# Workloads, FLOPs, ceiling -------------------------------------------------------------------


def test_texts_of_an_exact_token_length(tiny_bundles: BundleMap) -> None:
    tokens = BundleTokens(tiny_bundles[("bert", "text-classification")])
    words = " ".join(corpus(200)).split()
    for length in (3, 8, 16, 64):
        text = text_of_length(tokens.tokenizer, words, length)
        assert text is not None and tokens.tokenizer.count_tokens(text) == length


def test_workloads_count_tokens_with_the_bundles_tokenizer(tiny_bundles: BundleMap, data_dir: Path) -> None:
    bundle = tiny_bundles[("distilbert", "text-classification")]
    flops = EncoderFlops.from_bundle(bundle)
    workload = classify_workload(bundle, data_dir, limit=10, flops=flops)
    assert len(workload) == 10 and workload.task == "text-classification"
    assert workload.tokens[0] == BundleTokens(bundle).tokenizer.count_tokens(workload.items[0])
    requests = workload.requests(None)
    assert [request.path for request in requests] == ["/v1/classify"] * 10
    assert json.loads(requests[0].body) == {"input": workload.items[0]}
    assert requests[0].flops == pytest.approx(flops.per_sequence(workload.tokens[0]))
    grouped = workload.requests(None, items_per_request=3)
    assert [request.items for request in grouped] == [3, 3, 3, 1]
    assert json.loads(grouped[0].body) == {"input": workload.items[:3]}
    assert grouped[0].tokens == sum(workload.tokens[:3])
    embed = embed_workload(tiny_bundles[("bert", "feature-extraction")], data_dir)
    assert len(embed) == 20  # both sentences of every pair
    infinity = embed.requests("minilm", api="infinity")[0]
    assert infinity.path == "/embeddings" and json.loads(infinity.body) == {
        "input": [embed.items[0]],
        "model": "minilm",
    }


def write_squad(data_dir: Path, contexts: int = 7) -> None:
    """A SQuAD v1.1 file of the tiny corpus: one question per context, the answer its first word."""
    sentences = corpus(contexts * 3, seed=2)
    paragraphs = []
    for index in range(contexts):
        context = " ".join(sentences[3 * index : 3 * index + 3])
        word = context.split()[0]
        question = {
            "id": f"q{index}",
            "question": f"what is {word}?",
            "answers": [{"text": word, "answer_start": 0}],
        }
        paragraphs.append({"context": context, "qas": [question]})
    squad = {"version": "1.1", "data": [{"title": "tiny", "paragraphs": paragraphs}]}
    (data_dir / SQUAD_DEV).write_text(json.dumps(squad), encoding="utf-8")


def test_a_chat_turn_is_classify_and_embed_then_one_answer_over_five_passages(
    live_server: Callable[..., LiveServer], tiny_bundles: BundleMap, data_dir: Path
) -> None:
    write_squad(data_dir)
    classify = tiny_bundles[("distilbert", "text-classification")]
    embed = tiny_bundles[("bert", "feature-extraction")]
    reader = tiny_bundles[("bert", "question-answering")]
    workload = chat_workload(classify, embed, reader, data_dir, limit=6)
    assert len(workload) == 6 and all(len(passages) == CHAT_PASSAGES for passages in workload.passages)
    assert workload.passages[0][0] != workload.passages[0][1]  # its own context, then other ones
    question = workload.items[0]
    expected_tokens = sum(BundleTokens(classify).row_lengths(question)) + sum(
        BundleTokens(embed).row_lengths(question)
    )
    expected_tokens += sum(
        sum(BundleTokens(reader).row_lengths(QAInput(question, p))) for p in workload.passages[0]
    )
    assert workload.tokens[0] == expected_tokens
    (turn, *_) = turns = workload.requests(None)
    assert isinstance(turn, ChatTurn)
    assert [[call.path for call in stage] for stage in turn.stages] == [
        ["/v1/classify", "/v1/embeddings"],
        ["/v1/answer"],
    ]
    read = json.loads(turn.stages[1][0].body)
    assert [pair["context"] for pair in read["inputs"]] == workload.passages[0]
    with live_server() as server:

        async def go() -> object:
            client = RawHttpClient(server.url)
            try:
                return await closed_loop(client, turns, 2, Bounds(max_requests=9, max_duration_s=60))
            finally:
                await client.aclose()

        result = asyncio.run(go())  # type: ignore[arg-type]
        served = {
            route: metric(server.app, "distilserve_requests_total", model=model, route=route, status="200")
            for model, route in (
                ("sentiment", "/v1/classify"),
                ("encoder", "/v1/embeddings"),
                ("reader", "/v1/answer"),
            )
        }
    assert result.sent == result.ok == 9 and result.errors == {}  # type: ignore[attr-defined]
    assert served == {"/v1/classify": 9, "/v1/embeddings": 9, "/v1/answer": 9}


def test_with_a_reranker_a_chat_turn_reranks_the_retrieved_passages_before_reading(
    tiny_bundles: BundleMap, tiny_rerank_bundles: dict[tuple[str, str], Path], data_dir: Path
) -> None:
    write_squad(data_dir)
    classify = tiny_bundles[("distilbert", "text-classification")]
    embed = tiny_bundles[("bert", "feature-extraction")]
    reader = tiny_bundles[("bert", "question-answering")]
    reranker = tiny_rerank_bundles[("bert", "int8")]
    plain = chat_workload(classify, embed, reader, data_dir, limit=6)
    workload = chat_workload(classify, embed, reader, data_dir, limit=6, rerank_bundle=reranker)
    # The tiny set has 6 contexts: all of them are retrieved (a real one: RERANK_DOCUMENTS), the
    # first CHAT_PASSAGES_RERANKED read.
    assert all(len(documents) == 6 for documents in workload.reranked)
    assert workload.passages == [documents[:CHAT_PASSAGES_RERANKED] for documents in workload.reranked]
    question = workload.items[0]
    rerank_rows = sum(
        sum(BundleTokens(reranker).row_lengths(RerankPair(question, p))) for p in workload.reranked[0]
    )
    read_rows = sum(sum(BundleTokens(reader).row_lengths(QAInput(question, p))) for p in workload.passages[0])
    first_rows = sum(BundleTokens(classify).row_lengths(question)) + sum(
        BundleTokens(embed).row_lengths(question)
    )
    assert workload.tokens[0] == first_rows + rerank_rows + read_rows
    assert plain.passages[0][:CHAT_PASSAGES_RERANKED] == workload.passages[0]
    (turn, *_) = workload.requests(None)
    assert isinstance(turn, ChatTurn)
    assert [[call.path for call in stage] for stage in turn.stages] == [
        ["/v1/classify", "/v1/embeddings"],
        ["/v1/rerank"],
        ["/v1/answer"],
    ]
    assert json.loads(turn.stages[1][0].body) == {"query": question, "documents": workload.reranked[0]}
    # --chat-retrieved: fewer passages retrieved and reranked, the same best 3 read of them.
    fewer = chat_workload(classify, embed, reader, data_dir, limit=6, rerank_bundle=reranker, retrieved=4)
    assert fewer.reranked == [documents[:4] for documents in workload.reranked]
    assert fewer.passages == workload.passages


def test_a_chat_turn_that_fails_counts_its_first_failing_status(
    live_server: Callable[..., LiveServer],
) -> None:
    from distilserve.bench.loadgen import Call

    good = Call("/v1/classify", json.dumps({"input": "fine"}).encode())
    missing = Call("/v1/embeddings", json.dumps({"input": "fine", "model": "missing"}).encode())
    never = Call("/v1/answer", b"{}")
    turn = ChatTurn("chat", b"", 1, 1, stages=((good, missing), (never,)))
    with live_server() as server:

        async def go() -> object:
            client = RawHttpClient(server.url)
            try:
                return await closed_loop(client, [turn], 1, Bounds(max_requests=3, max_duration_s=60))
            finally:
                await client.aclose()

        result = asyncio.run(go())  # type: ignore[arg-type]
        routes = [
            sample.labels["route"]
            for family in state_of(server.app).metrics.registry.collect()
            if family.name == "distilserve_requests"
            for sample in family.samples
            if sample.name == "distilserve_requests_total"
        ]
    assert result.ok == 0 and result.errors == {"404": 3}  # type: ignore[attr-defined]
    assert "/v1/embeddings" in routes and "/v1/answer" not in routes  # the second stage never ran


def test_encoder_flops_from_the_graph(tiny_bundles: BundleMap) -> None:
    flops = EncoderFlops.from_bundle(tiny_bundles[("bert", "feature-extraction")])
    # Tiny BERT: 2 layers of hidden 32, FFN 64: per layer 4·32·32 + 2·32·64 = 8192 weight MACs.
    assert flops.layers == 2 and flops.hidden_size == 32
    assert flops.weight_macs_per_token == 2 * 8192
    assert flops.per_sequence(10) == 2 * 10 * 2 * 8192 + 4 * 2 * 10 * 10 * 32


def test_gemm_peak_runs_matmulinteger() -> None:
    peak = measure_gemm_peak(shapes=[(64, 32, 48)], min_time_s=0.01)
    assert peak.int8_gops > 0 and peak.fp32_gflops > 0 and len(peak.shapes) == 1


def test_ceiling_predicts_whole_passes_within_its_bounds(tiny_bundles: BundleMap, data_dir: Path) -> None:
    bundle = tiny_bundles[("bert", "text-classification")]
    workload = classify_workload(bundle, data_dir)
    result = measure_throughput(bundle, workload.items, workload.tokens, workload="w", max_items=100)
    assert result.items == result.passes * len(workload) and result.items >= 100
    assert result.items_per_s > 0
    assert set(measure_latency(bundle, workload.items, requests=5)) == {"p50", "p90", "p99", "mean", "max"}


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"]
    server = ManagedServer("broken", argv, port=free_port(), ready_path="/", log_path=tmp_path / "broken.log")
    with pytest.raises(ServerStartError, match=r"status 3(.|\n)*bad flag"):
        server.start()


def test_checkpoint_for_finds_the_exported_folder(
    tiny_bundles: BundleMap, tiny_checkpoints: BundleMap
) -> None:
    key = ("bert", "text-classification")
    assert checkpoint_for(tiny_bundles[key], None) == tiny_checkpoints[key]
    assert checkpoint_for(tiny_bundles[key], Path("/explicit")) == Path("/explicit")


# A whole invocation ---------------------------------------------------------------------------


def test_a_whole_bench_run_writes_the_report(
    tiny_bundles: BundleMap, tiny_int8_bundles: BundleMap, data_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "results.json"
    settings = Settings(
        classify_bundle=tiny_int8_bundles[("bert", "text-classification")],
        embed_bundle=tiny_int8_bundles[("bert", "feature-extraction")],
        workloads=["classify", "embed", "sweep"],
        baselines=["ceiling", "pytorch"],
        concurrency=[1, 4],
        rates=[50.0],
        requests=12,
        duration_s=20,
        warmup_requests=2,
        sweep_lengths=[8, 16, 512],
        sweep_requests=4,
        gemm_peak=False,
        data_dir=data_dir,
        work_dir=tmp_path / "work",
        output=output,
        markdown_output=tmp_path / "tables.md",
    )
    assert run(settings) == 0
    report = json.loads(output.read_text())
    assert {"date", "commit", "command", "machine", "load_average_start", "load_average_end"} <= set(
        report["meta"]
    )
    assert report["meta"]["machine"]["cores"] >= 1
    assert set(report["workloads"]) == {"sst2-classify", "stsb-embed"}
    assert report["workloads"]["sst2-classify"]["items"] == 40
    levels = {
        (run["target"], run["workload"], run["mode"], run["concurrency"], run["rate"])
        for run in report["runs"]
    }
    for workload in ("sst2-classify", "stsb-embed"):
        for target in ("distilserve", "pytorch"):
            assert (target, workload, "closed", 1, None) in levels
            assert (target, workload, "closed", 4, None) in levels
            assert (target, workload, "open", None, 50.0) in levels
    # The other client is measured once, on the first workload at c=32.
    # The comparison run uses the other Python client: raw beside wrk (the default where it is
    # installed) and httpx beside raw.
    other = "raw" if settings.client == "wrk" else "httpx"
    assert (f"distilserve ({other} client)", "sst2-classify", "closed", 32, None) in levels
    if settings.client == "wrk":
        measured = [run for run in report["runs"] if run["target"] == "distilserve"]
        assert measured and all(
            run["extra"].get("client_wrk") == 1.0 for run in measured if run["mode"] == "closed"
        )
        # The server's CPU per answered request, from its process tree.
        assert all(
            run["extra"]["server_cpu_ms_per_request"] > 0 for run in measured if run["mode"] == "closed"
        )
    for run_result in report["runs"]:
        assert run_result["errors"] == {}, run_result
        expected = 4 if run_result["workload"].startswith("sweep-") else 12
        assert run_result["sent"] == run_result["ok"] == expected
    # distilserve's own /metrics, scraped around each closed-loop run: the batches it ran for it.
    for run_result in report["runs"]:
        if run_result["target"] == "distilserve" and run_result["mode"] == "closed":
            assert run_result["extra"]["server_batches"] >= 1
            assert 1 <= run_result["extra"]["server_mean_batch_rows"] <= run_result["concurrency"]
            assert 0 <= run_result["extra"]["server_mean_padding_share"] < 1
    assert {entry["workload"] for entry in report["ceiling"]} == {"sst2-classify", "stsb-embed"}
    # Tiny models take at most 128 tokens: 512 is skipped, the others measured by every target.
    assert report["sweep_skipped"] == [512]
    assert {(point["target"], point["length"]) for point in report["sweep"]} == {
        (target, length)
        for target in ("distilserve (HTTP)", "in-process ORT (no HTTP)", "pytorch (HTTP)")
        for length in (8, 16)
    }
    for key in (
        "sst2-classify.best_vs_ceiling",
        "sst2-classify.best_vs_pytorch_best",
        "stsb-embed.best_vs_ceiling",
        "sst2-classify.c1_p50_ms",
    ):
        assert key in report["ratios"], key
    tables = (tmp_path / "tables.md").read_text()
    assert "### sst2-classify" in tables and "### latency against sequence length" in tables
    assert (tmp_path / "work" / "logs" / "distilserve.log").is_file()


def test_the_overload_run_reports_capacity_flood_and_open_loop_with_probes(
    tiny_int8_bundles: BundleMap, data_dir: Path, tmp_path: Path
) -> None:
    # A tiny scale of `distilserve bench --overload`: two admission slots, sixteen clients. It
    # checks what is measured and that overload answers only 200 or 429, never how fast.
    output = tmp_path / "results.json"
    settings = Settings(
        classify_bundle=tiny_int8_bundles[("bert", "text-classification")],
        workloads=["classify"],
        overload=True,
        overload_capacity_concurrency=2,
        overload_concurrency=16,
        overload_factor=3.0,
        probe_interval_s=0.05,
        requests=40,
        duration_s=20,
        warmup_requests=2,
        gemm_peak=False,
        serve_args=["--max-queue-requests", "2"],
        data_dir=data_dir,
        work_dir=tmp_path / "work",
        output=output,
    )
    assert run(settings) == 0
    report = json.loads(output.read_text())
    runs = {run_result["target"]: run_result for run_result in report["runs"]}
    assert set(runs) == {
        "distilserve (capacity)",
        "distilserve (flood, no back-off)",
        "distilserve (open, 3x capacity)",
    }
    assert report["ceiling"] == []  # distilserve alone
    for target, run_result in runs.items():
        assert run_result["sent"] == run_result["ok"] + sum(run_result["errors"].values())
        # The server answers only 200 or 429: no 5xx, no resets. On a slow machine the open-loop
        # client may skip arrivals over its in-flight cap (OVERFLOW): counted, but never sent.
        answered = set(run_result["errors"]) - {OVERFLOW}
        assert answered <= {"429"}, (target, run_result["errors"])
        assert run_result["ok"] > 0
        extra = run_result["extra"]
        assert extra["capacity_rps"] > 0 and extra["goodput_share"] > 0
        assert "429" not in run_result["errors"] or extra["refused_p99_ms"] >= extra["refused_p50_ms"]
        if target != "distilserve (capacity)":
            assert extra["live_probes"] >= 1
    assert sum(note.startswith("overload: ") for note in report["notes"]) == 3


def test_markdown_and_plots_render_from_a_saved_report(tmp_path: Path) -> None:
    report = BenchReport.start(tmp_path, ["--x"])
    report.finish()
    text = markdown(report)
    assert "distilserve bench --x" in text
    pytest.importorskip("matplotlib")
    from distilserve.bench.plot import render

    assert render(report, tmp_path / "plots") == []  # nothing measured, nothing drawn


def test_a_keep_alive_connection_closed_by_the_server_is_retried_once() -> None:
    """Servers drop idle keep-alive connections (uvicorn after 5 s): not an error of the server."""
    answered = 0
    closed = asyncio.Event()

    async def one_answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        answered += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # keep-alive was promised, then the connection goes away
        await writer.wait_closed()
        closed.set()

    async def go() -> list[tuple[int, bytes]]:
        server = await asyncio.start_server(one_answer_then_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RawHttpClient(f"http://127.0.0.1:{port}", max_idle_s=60)
        try:
            first = await client.post("/x", b"{}")
            # The second request goes out once the server has closed: whether the client has
            # seen the close yet (a fresh connection) or not (a stale one, retried), it is answered.
            await closed.wait()
            second = await client.post("/x", b"{}")
            return [first, second]
        finally:
            await client.aclose()
            server.close()

    assert asyncio.run(go()) == [(200, b"ok"), (200, b"ok")]
    assert answered == 2


def test_bench_and_eval_help_do_not_import_torch() -> None:
    import subprocess

    code = (
        "import sys; from distilserve.cli import main\n"
        "for command in ('bench', 'eval'):\n"
        "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_server_histograms_are_read_from_prometheus_text() -> None:
    before = parse_histogram_totals(
        'distilserve_batch_size_sum{model="a"} 10.0\n'
        'distilserve_batch_size_count{model="a"} 2.0\n'
        'distilserve_batch_size_bucket{model="a",le="1.0"} 1.0\n'
        "# HELP distilserve_batch_size rows\n"
    )
    assert before == {"distilserve_batch_size_sum": 10.0, "distilserve_batch_size_count": 2.0}
    after = {
        "distilserve_batch_size_sum": 40.0,
        "distilserve_batch_size_count": 4.0,
        "distilserve_padding_ratio_sum": 0.5,
        "distilserve_inference_seconds_sum": 1.0,
        "distilserve_tokenization_seconds_sum": 0.06,
        "distilserve_tokenization_seconds_count": 30.0,
    }
    means = server_side(before, after, duration_s=4.0)
    # Two batches of 15 rows on average ran in the window; inference 1 s of 4 s.
    assert means["server_batches"] == 2 and means["server_mean_batch_rows"] == 15
    assert means["server_mean_padding_share"] == 0.25 and means["server_inference_busy_share"] == 0.25
    assert means["server_mean_batch_ms"] == 500 and means["server_mean_tokenize_ms"] == pytest.approx(2.0)
    assert server_side(after, after, 1.0) == {}
