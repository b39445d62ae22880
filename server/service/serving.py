"""What the service routes report."""

from __future__ import annotations

import importlib.metadata

from distilserve.server.batching import DynamicBatcher
from distilserve.server.registry import ModelRegistry
from distilserve.server.service.protocol import Info, ModelBatching, ModelCard, ModelInfo, ModelList
from distilserve.server.settings import ServerSettings
from distilserve.server.topology import Topology

_REPORTED_PACKAGES = ("distilserve", "onnxruntime", "openvino", "tokenizers", "numpy", "fastapi", "uvicorn")


def package_version(package: str) -> str:
    """An installed distribution's version, or \"unknown\"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_batching(batcher: DynamicBatcher) -> ModelBatching:
    cost = batcher.cost
    return ModelBatching(
        calibrated=cost is not None,
        overhead_tokens=batcher.limits.batch_overhead_tokens,
        max_wait_ms=batcher.max_wait_s * 1000.0,
        fixed_cost_ms=None if cost is None else cost.fixed_s * 1000.0,
        token_cost_us=None if cost is None else cost.per_token_s * 1e6,
    )


class ServiceInfo:
    """What /v1/models and /info report; validated on construction (not a hot path)."""

    def __init__(
        self, settings: ServerSettings, registry: ModelRegistry, topology: Topology | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.topology = topology

    def models(self) -> ModelList:
        return ModelList(
            data=[
                ModelCard(id=name, created=int(served.loaded_at), task=served.task)
                for name, served in self.registry.models.items()
            ]
        )

    def info(self) -> Info:
        settings = self.settings
        models = []
        for name, served in self.registry.models.items():
            manifest = served.runtime.manifest
            models.append(
                ModelInfo(
                    name=name,
                    task=manifest.task,
                    model_type=manifest.model_type,
                    bundle=str(served.runtime.bundle_dir),
                    labels=manifest.labels,
                    problem_type=manifest.problem_type,
                    max_length=manifest.max_length,
                    hidden_size=manifest.hidden_size,
                    num_parameters=manifest.num_parameters,
                    pooling=manifest.pooling,
                    normalize=manifest.normalize,
                    quantization=manifest.quantization.model_dump(mode="json"),
                    parity=[check.model_dump(mode="json") for check in manifest.parity],
                    source=manifest.source.model_dump(mode="json"),
                    batching=model_batching(served.batcher),
                    engine=served.runtime.selection.as_info(),
                )
            )
        return Info(
            version=package_version("distilserve"),
            ready=self.registry.ready,
            models=models,
            batching={
                "max_batch_size": settings.max_batch_size,
                "max_batch_tokens": settings.max_batch_tokens,
                "max_wait_ms": settings.max_wait_ms,
                "batch_overhead_tokens": settings.batch_overhead_tokens,
                "calibrate_batching": settings.calibrate_batching,
            },
            limits={
                "max_queue_requests": settings.max_queue_requests,
                "max_queue_tokens": settings.max_queue_tokens,
                "request_timeout_s": settings.request_timeout_s,
                "max_request_timeout_s": settings.max_request_timeout_s,
                "max_body_bytes": settings.max_body_bytes,
                "max_items_per_request": settings.max_items_per_request,
                "max_chars_per_item": settings.max_chars_per_item,
            },
            versions={package: package_version(package) for package in _REPORTED_PACKAGES},
            topology={} if self.topology is None else self.topology.describe(),
        )
