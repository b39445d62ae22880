"""The plain PyTorch baseline: FastAPI around a transformers ``pipeline``, fp32, no batching.

What a first server for a transformers model usually looks like: the pipeline is built at
startup and each request calls it directly in an ``async def`` route, so requests run one at a
time (a sync route would run several in the threadpool at once, each with all of torch's
threads, and only oversubscribe the cores). torch uses one thread per core. The routes and
request shapes are distilserve's, so the same load generator drives both:

    python -m distilserve.bench.baselines.torch_server --checkpoint DIR --task text-classification \\
        --port 8100

``/health/ready`` answers 200 once the pipeline is loaded and has run once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from distilserve.bench.servers import LOOPBACK, ManagedServer, free_port

TASKS = ("text-classification", "question-answering", "feature-extraction")


def build_app(checkpoint: str, task: str, threads: int) -> FastAPI:
    import numpy as np
    import torch
    import transformers
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    torch.set_num_threads(threads)
    # Through Any: the pipeline factory's overloads are keyed on literal task names.
    factory: Any = transformers.pipeline
    pipe = factory(task, model=checkpoint, tokenizer=checkpoint, device=-1)
    app = FastAPI(title="plain PyTorch pipeline server (benchmark baseline)")

    def texts_of(value: Any) -> list[str]:
        return [value] if isinstance(value, str) else list(value)

    @app.post("/v1/classify")
    async def classify(request: Request) -> JSONResponse:
        body = await request.json()
        texts = texts_of(body["input"])
        outputs = pipe(texts, truncation=True)
        data = [
            {"index": index, "label": out["label"], "score": out["score"]}
            for index, out in enumerate(outputs)
        ]
        return JSONResponse({"object": "list", "model": checkpoint, "data": data})

    @app.post("/v1/answer")
    async def answer(request: Request) -> JSONResponse:
        body = await request.json()
        inputs = body["inputs"]
        pairs = inputs if isinstance(inputs, list) else [inputs]
        outputs = [pipe(question=pair["question"], context=pair["context"]) for pair in pairs]
        return JSONResponse(outputs if isinstance(inputs, list) else outputs[0])

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        body = await request.json()
        texts = texts_of(body["input"])
        data = []
        for index, text in enumerate(texts):
            # The feature-extraction pipeline returns token vectors; mean pooling and L2
            # normalisation make the sentence-transformers embedding.
            tokens = np.asarray(pipe(text, truncation=True)[0], dtype=np.float32)
            vector = tokens.mean(axis=0)
            vector /= max(float(np.linalg.norm(vector)), 1e-12)
            data.append({"object": "embedding", "index": index, "embedding": vector.tolist()})
        return JSONResponse({"object": "list", "model": checkpoint, "data": data})

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    # One call before serving, as distilserve's warm-up does.
    if task == "question-answering":
        pipe(question="What is this?", context="This is a warm-up sentence.")
    else:
        pipe("Warm-up sentence for the model.")
    return app


def torch_server(
    checkpoint: Path | str, task: str, log_dir: Path, threads: int | None = None
) -> ManagedServer:
    """The baseline as a subprocess of this Python, on a free loopback port."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "distilserve.bench.baselines.torch_server",
        "--checkpoint",
        str(checkpoint),
        "--task",
        task,
        "--port",
        str(port),
    ]
    if threads is not None:
        argv += ["--threads", str(threads)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return ManagedServer(
        "pytorch",
        argv,
        port=port,
        ready_path="/health/ready",
        log_path=log_dir / f"pytorch-{task}.log",
        env=env,
    )


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    args = parser.parse_args(argv)
    app = build_app(args.checkpoint, args.task, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", loop="uvloop", http="httptools")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
