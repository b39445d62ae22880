"""Schemas of the service routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "distilserve"
    task: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "loading", "draining"]


class ModelBatching(BaseModel):
    """How this model's batcher plans: the figures it uses now, calibrated or constant."""

    calibrated: bool
    overhead_tokens: int
    max_wait_ms: float
    fixed_cost_ms: float | None
    token_cost_us: float | None


class ModelInfo(BaseModel):
    name: str
    task: str
    model_type: str
    bundle: str
    labels: dict[int, str]
    problem_type: str | None
    max_length: int
    hidden_size: int | None
    num_parameters: int | None
    pooling: str | None
    normalize: bool
    quantization: dict[str, object]
    parity: list[dict[str, object]]
    source: dict[str, object]
    batching: ModelBatching
    # Which engine runs the model and why: requested, chosen, precision, reason, timings.
    engine: dict[str, object]


class Info(BaseModel):
    version: str
    ready: bool
    models: list[ModelInfo]
    batching: dict[str, float | int | bool]
    limits: dict[str, float | int]
    versions: dict[str, str]
    # Processes and threads, and why (distilserve.server.topology): workers, intra_op_threads,
    # reason, cores, memory_limit_bytes, worker_bytes_estimate.
    topology: dict[str, int | str | None] = Field(default_factory=dict)
