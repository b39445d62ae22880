"""The bench's rerank workload: a SQuAD question and 20 passages per ``/v1/rerank`` request.

Items are (question, passage) pairs, so the served rate and the in-process ceiling are both pairs
per second; a request carries one question's 20 pairs whatever ``--items-per-request`` says.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Literal

from distilserve.bench.baselines.ceiling import measure_throughput
from distilserve.bench.client import RawHttpClient
from distilserve.bench.loadgen import Bounds, closed_loop
from distilserve.bench.workloads import RERANK_DOCUMENTS, BundleTokens, rerank_workload
from distilserve.models.tasks import RerankPair
from distilserve.server.app import build_app
from distilserve.server.settings import ServerSettings
from tests.distilserve.bench.test_bench_smoke import write_squad
from tests.server.conftest import LiveServer, metric
from tests.tiny_models import Arch


def test_a_rerank_request_is_a_question_and_twenty_passages(
    tiny_rerank_bundles: dict[tuple[Arch, Literal["int8", "none"]], Path], data_dir: Path
) -> None:
    write_squad(data_dir, contexts=RERANK_DOCUMENTS + 5)
    bundle = tiny_rerank_bundles[("bert", "int8")]
    workload = rerank_workload(bundle, data_dir, limit=4)
    assert workload.task == "rerank" and len(workload) == 4 * RERANK_DOCUMENTS
    first = workload.items[:RERANK_DOCUMENTS]
    assert all(isinstance(pair, RerankPair) and pair.query == first[0].query for pair in first)
    assert len({pair.document for pair in first}) == RERANK_DOCUMENTS  # its own, then 19 others
    assert workload.tokens[0] == sum(BundleTokens(bundle).row_lengths(first[0]))

    requests = workload.requests("reranker", items_per_request=1)
    assert len(requests) == 4 and all(request.items == RERANK_DOCUMENTS for request in requests)
    assert requests[0].path == "/v1/rerank" and requests[0].tokens == sum(workload.tokens[:RERANK_DOCUMENTS])
    assert json.loads(requests[0].body) == {
        "query": first[0].query,
        "documents": [pair.document for pair in first],
        "model": "reranker",
    }

    settings = ServerSettings(model=[f"reranker={bundle}"], warmup=False)
    with LiveServer(build_app(settings, settings.model_specs)) as server:

        async def go() -> object:
            client = RawHttpClient(server.url)
            try:
                return await closed_loop(client, requests, 2, Bounds(max_requests=8, max_duration_s=60))
            finally:
                await client.aclose()

        result = asyncio.run(go())
        served = metric(
            server.app, "distilserve_requests_total", model="reranker", route="/v1/rerank", status="200"
        )
    assert result.sent == result.ok == 8 and result.errors == {}  # type: ignore[attr-defined]
    assert served == 8

    ceiling = measure_throughput(bundle, workload.items, workload.tokens, workload="w", max_items=100)
    assert ceiling.items == ceiling.passes * len(workload) and ceiling.items >= 100
