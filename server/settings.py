"""Every server setting, in one place. Each is a ``--flag`` and a ``DISTILSERVE_*`` variable."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from distilserve.models.batching import SERVER_BATCH_LIMITS
from distilserve.models.engines import EngineChoice

# Importing this pulls in no torch, transformers or onnx: those load only when a bundle is exported.
from distilserve.models.export.default_model import default_cache_dir
from distilserve.models.memory import cgroup_memory_limit
from distilserve.server.batching import DEFAULT_POLICY


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (a loopback address or localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[] ")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def default_model_zoo() -> Path:
    """The repository's ``model-zoo/`` (an editable install, or the working tree)."""
    return Path(__file__).resolve().parent.parent / "model-zoo"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One ``NAME=BUNDLE_DIR`` entry of ``--model``."""

    name: str
    bundle_dir: Path

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        name, separator, path = text.partition("=")
        if not separator:
            # A bare path: the folder's name is the model's name.
            path, name = text, Path(text).resolve().name
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise ValueError(f"expected NAME=BUNDLE_DIR, got {text!r}")
        return cls(name=name, bundle_dir=Path(path).expanduser())


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILSERVE_", extra="ignore", validate_default=True)

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "a model to serve, as NAME=BUNDLE_DIR; repeat for several (the variable takes a comma-separated "
            "list); with none, the default models are served"
        ),
    )
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in containers)")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on")
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="where default bundles are built on first use"
    )
    model_zoo: Path = Field(
        default_factory=default_model_zoo,
        description="folder of shipped bundles served by default (the repository's model-zoo/)",
    )
    build_default: bool = Field(
        True, description="when no --model is given, build the default embedding bundle if it is missing"
    )

    # Batching.
    max_batch_size: int = Field(
        SERVER_BATCH_LIMITS.max_batch_size, ge=1, le=4096, description="most rows in one model batch"
    )
    max_batch_tokens: int = Field(
        SERVER_BATCH_LIMITS.max_batch_tokens,
        ge=16,
        description="most padded tokens (rows x longest row) in one model batch",
    )
    batch_overhead_tokens: int = Field(
        SERVER_BATCH_LIMITS.batch_overhead_tokens,
        ge=0,
        description=(
            "fixed cost of one more model batch, in padded tokens: queued rows are split into "
            "batches by length when the padding saved is worth more"
        ),
    )
    max_wait_ms: float = Field(
        DEFAULT_POLICY.max_wait_ms,
        ge=0,
        le=1000,
        description=(
            "longest time an under-filled batch waits for requests that are already being tokenized; "
            "an idle server never waits"
        ),
    )
    calibrate_batching: bool = Field(
        False,
        description=(
            "at start-up, time a few batch shapes per model and fit its fixed cost per batch and cost "
            "per padded token; the planner then uses that fixed cost (in tokens) instead of "
            "--batch-overhead-tokens, and an under-filled batch waits at most one fixed cost (and "
            "never more than --max-wait-ms); the figures are in /info and /metrics"
        ),
    )

    # Admission and limits.
    max_queue_requests: int = Field(
        512, ge=1, description="requests admitted and not yet answered; beyond it, 429"
    )
    max_queue_tokens: int = Field(
        DEFAULT_POLICY.max_queue_tokens,
        ge=1,
        description="tokens admitted and not yet computed, per model; beyond it, 429",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="default deadline of a request; a client may lower or raise it with X-Request-Timeout",
    )
    max_request_timeout_s: float = Field(300.0, gt=0, description="largest deadline a client may ask for")
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="largest request body, in bytes")
    max_items_per_request: int = Field(256, ge=1, description="most texts (or QA pairs) in one request")
    max_chars_per_item: int = Field(
        100_000, ge=1, description="most characters in one text (a QA context counts as one item)"
    )

    # Connections.
    header_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "a connection's request line and headers must arrive within this many seconds of it "
            "opening (or of a keep-alive request's first byte); otherwise 408 and close"
        ),
    )
    body_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description=(
            "a request's whole body must arrive within this many seconds of its headers; otherwise 408"
        ),
    )
    keep_alive_timeout_s: int = Field(
        75,
        ge=1,
        description=(
            "seconds an idle keep-alive connection stays open; keep it above the idle timeout of a "
            "load balancer in front (60 s on AWS ALB), so the balancer closes first"
        ),
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description=(
            "open connections beyond which a request is answered 503 at once and its connection "
            "closed (/health/live excepted); keep it below the descriptor limit (ulimit -n) and above "
            "--max-queue-requests"
        ),
    )

    # Security.
    api_key: SecretStr | None = Field(
        None,
        description=(
            "require 'Authorization: Bearer <key>' on the inference and info routes; an empty key, "
            "or one with leading or trailing whitespace, is refused at start-up"
        ),
    )
    protect_metrics: bool = Field(False, description="also require the API key on /metrics")
    allow_unauthenticated: bool = Field(
        False,
        description=(
            "serve without an API key on an address other than loopback; without it (or a key), "
            "such a --host is refused at start-up"
        ),
    )
    docs_access: Literal["protected", "open", "off"] = Field(
        "protected",
        description=(
            "/docs, /redoc and /openapi.json: protected (behind the API key when one is set, open "
            "otherwise), open (always open), off (not served)"
        ),
    )

    # Threads.
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime threads per model batch (0: one per core this process may use)"
    )
    cpu_threads: int = Field(
        2,
        ge=1,
        le=64,
        description=(
            "threads per model that tokenize and post-process its requests off the event loop; each "
            "model has its own, so one model's large requests never delay another's"
        ),
    )
    tokenize_inline_chars: int = Field(
        0,
        ge=0,
        le=100_000,
        description=(
            "a request of one item of at most this many characters is tokenized on the event loop "
            "rather than on the model's CPU threads (two thread hops saved; 0: never)"
        ),
    )
    coalesce_tokenization: bool = Field(
        False,
        description=(
            "hand the requests that arrive together to the model's CPU threads in one call (one "
            "thread hop per group instead of one per request)"
        ),
    )
    tokenize_batch: bool = Field(
        False,
        description="tokenize a request's texts with one encode_batch call instead of one call per text",
    )
    allow_spinning: bool = Field(
        True, description="let ONNX Runtime threads spin between ops (lower latency when cores are dedicated)"
    )

    # ONNX Runtime by default: OpenVINO's memory under mixed shapes is not yet shown bounded
    # by the soak (README, "The default engine is `onnxruntime`").
    engine: EngineChoice = Field(
        "onnxruntime",
        description=(
            "what runs each model: onnxruntime (the default), auto (at start-up, time ONNX Runtime and, "
            "for a bundle with an OpenVINO form and the [openvino] extra installed, OpenVINO; keep the "
            "faster that agrees; /info says why), or openvino; --intra-op-threads applies to both"
        ),
    )
    # Memory.
    release_memory: bool = Field(
        True,
        description=(
            "give back to the system the memory a model's large batches leave ONNX Runtime's arena "
            "holding: when the model has had no batch for --memory-release-idle-s, and after each large "
            "batch while the process is above half its memory budget; off, memory stays at what the "
            "largest batches of each model needed"
        ),
    )
    memory_release_idle_s: float = Field(
        1.0,
        ge=0.0,
        description=(
            "seconds with no batch after which a model gives back its batch memory (with "
            "--release-memory); the next large batch after a release pays to map its memory again"
        ),
    )
    memory_budget_mb: int | None = Field(
        None,
        ge=64,
        description=(
            "memory this server process may use, in MiB (default: the container's cgroup memory limit "
            "divided by --workers, when one is set; otherwise none); batches are split to fit it, a "
            "request that could never fit is a 413, and /metrics exports it beside the RSS"
        ),
    )

    # Process.
    workers: int = Field(
        1,
        ge=0,
        le=64,
        description=(
            "server processes sharing the port, each with its own event loop, batchers and models "
            "(N times the memory); 0: one per core (the cgroup CPU quota and affinity counted), fewer "
            "when the cgroup memory limit cannot hold them, or cores / --intra-op-threads when that is "
            "set; with --intra-op-threads 0 each gets cores / N ONNX Runtime threads; /metrics reports "
            "the sum over all of them; /info and the start-up log say what was chosen and why"
        ),
    )
    warmup: bool = Field(True, description="run one batch per model before reporting ready")
    drain_s: float = Field(
        5.0,
        ge=0,
        description=(
            "on SIGTERM, seconds to keep serving while /health/ready answers 503, so a load balancer "
            "stops sending before the listener closes (a second signal ends it early)"
        ),
    )
    graceful_shutdown_s: float = Field(
        30.0,
        ge=0,
        description=(
            "after the drain, how long admitted requests may take to finish; what is still running "
            "then is answered 503 shutting_down"
        ),
    )
    # Tracing.
    otlp_endpoint: str | None = Field(
        None,
        description=(
            "send OpenTelemetry traces (a span tree per request, a span per batch) to this OTLP "
            "collector, e.g. http://127.0.0.1:4317 (gRPC) or http://127.0.0.1:4318 (HTTP); unset: "
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, or no tracing; needs "
            "the otel extra"
        ),
    )
    otlp_protocol: Literal["grpc", "http/protobuf"] | None = Field(
        None,
        description=(
            "the OTLP transport; unset: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL, "
            "else grpc"
        ),
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["json", "text"] = Field("json", description="log format")
    access_log: bool = Field(False, description="log one line per request")

    @field_validator("model", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(",") if part.strip()]
        return value

    @field_validator("model")
    @classmethod
    def _check_models(cls, value: list[str]) -> list[str]:
        specs = [ModelSpec.parse(text) for text in value]
        names = [spec.name for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return value

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key would make "Authorization: Bearer " (no token) a valid credential.
        if value is None:
            return value
        key = value.get_secret_value()
        if not key.strip():
            raise ValueError("the API key must not be empty; unset it to serve without one")
        # A client's "Bearer <key>" header loses the key's outer whitespace on the way (HTTP
        # trims header values), so such a key would refuse every request.
        if key != key.strip():
            raise ValueError(
                "the API key must not start or end with whitespace (no client could send it); "
                "remove the spaces, tabs or newline around it"
            )
        return value

    @model_validator(mode="after")
    def _check_exposure(self) -> ServerSettings:
        if self.api_key is None and not self.allow_unauthenticated and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is reachable from other machines and no API key is set: set "
                "--api-key (DISTILSERVE_API_KEY), or pass --allow-unauthenticated "
                "(DISTILSERVE_ALLOW_UNAUTHENTICATED=true) to serve it open"
            )
        return self

    def memory_budget_bytes(self, cgroup_limit: Callable[[], int | None] = cgroup_memory_limit) -> int | None:
        """This process's memory budget: ``memory_budget_mb``, else the cgroup's limit shared by
        ``workers`` processes, else None (no budget)."""
        if self.memory_budget_mb is not None:
            return self.memory_budget_mb * 2**20
        limit = cgroup_limit()
        # workers 0 (one per core) is resolved at start-up (server.topology) before any app is built;
        # an app built directly is one process.
        return None if limit is None else limit // max(self.workers, 1)

    @property
    def model_specs(self) -> list[ModelSpec]:
        return [ModelSpec.parse(text) for text in self.model]
