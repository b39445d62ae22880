"""The models a server process serves: loading, warm-up, lookup by name and task."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from distilserve.models import ModelRuntime, SessionOptions, load_model
from distilserve.models.batch_cost import BatchCost, BatchTiming, calibrate_batch_cost
from distilserve.models.bundle import Task
from distilserve.models.engines import EngineChoice
from distilserve.models.memory import DEFAULT_HIDDEN_SIZE, BatchMemoryEstimate, resident_bytes
from distilserve.server import clock
from distilserve.server.batching import BatchPolicy, DynamicBatcher
from distilserve.server.errors import ApiError
from distilserve.server.observer import Observer
from distilserve.server.settings import ModelSpec

logger = logging.getLogger(__name__)

# Timings that fit badly are timed again this many times in all before the constants stay.
CALIBRATION_ATTEMPTS = 3
# The part of the memory budget that the weights, loaded at start, and the batches may use; the
# rest is for what comes and goes with requests (bodies, token ids, responses, the tokenizers).
BATCH_MEMORY_SHARE = 0.8
# Above this part of the budget, a model gives back its batch memory after each large batch, not
# only when idle: what idle models' engines keep must leave room for the batches that run.
RELEASE_MARK_SHARE = 0.5


def calibration_token_id(runtime: ModelRuntime) -> int:
    """An ordinary token to fill calibration rows with (any id but padding computes the same)."""
    vocab_size: int = runtime.tokenizer.vocab_size
    candidate = min(1000, vocab_size - 1)
    return candidate if candidate != runtime.tokenizer.pad_token_id else max(candidate - 1, 0)


@dataclass(slots=True)
class ServedModel:
    name: str
    runtime: ModelRuntime
    batcher: DynamicBatcher
    loaded_at: float = field(default_factory=time.time)

    @property
    def task(self) -> Task:
        return self.runtime.manifest.task


class ModelRegistry:
    def __init__(
        self,
        specs: Sequence[ModelSpec],
        *,
        policy: BatchPolicy,
        session_options: SessionOptions,
        observer: Observer,
        warmup: bool = True,
        calibrate: bool = False,
        engine: EngineChoice = "auto",
        memory_budget_bytes: int | None = None,
    ) -> None:
        self.specs = list(specs)
        self.policy = policy
        self.session_options = session_options
        self.observer = observer
        self.warmup = warmup
        self.calibrate = calibrate
        self.engine = engine
        self.memory_budget_bytes = memory_budget_bytes
        self.models: dict[str, ServedModel] = {}
        self.ready = False
        # Set on SIGTERM: /health/ready answers 503 while requests are still served (the drain).
        self.draining = False

    async def start(self) -> None:
        """Load every bundle (off the loop), start its batcher and warm it up."""
        loop = asyncio.get_running_loop()
        for spec in self.specs:
            started = time.perf_counter()
            load = functools.partial(load_model, spec.bundle_dir, self.session_options, engine=self.engine)
            runtime = await loop.run_in_executor(None, load)
            batcher = DynamicBatcher(
                spec.name,
                runtime.forward,
                self.policy,
                self.observer,
                packed=runtime.packed,
                release_memory=runtime.release_memory if self.session_options.release_memory else None,
            )
            batcher.start()
            served = ServedModel(spec.name, runtime, batcher)
            self.models[spec.name] = served
            manifest = runtime.manifest
            selection = runtime.selection
            self.observer.model_loaded(spec.name, manifest.task, manifest.quantization.mode, selection.engine)
            if self.warmup:
                await self._warm_up(served)
            if self.calibrate:
                await self._calibrate(served)
            logger.info(
                "model ready",
                extra={
                    "model": spec.name,
                    "task": manifest.task,
                    "bundle": str(spec.bundle_dir),
                    "quantization": manifest.quantization.mode,
                    "engine": selection.engine,
                    "engine_precision": selection.precision,
                    "engine_reason": selection.reason,
                    "load_s": round(time.perf_counter() - started, 3),
                },
            )
        self._share_memory_budget()
        self.ready = True

    def _share_memory_budget(self) -> None:
        """Give each model's batcher an equal share of what the budget leaves once every model is
        loaded and warm (each model's batch runs on its own thread, so all may run at once)."""
        budget = self.memory_budget_bytes
        if budget is None or not self.models:
            return
        self.observer.memory_budget(budget)
        loaded = resident_bytes() or 0
        share = max(int(budget * BATCH_MEMORY_SHARE) - loaded, 0) // len(self.models)
        release_above = int(budget * RELEASE_MARK_SHARE)
        for served in self.models.values():
            estimate = BatchMemoryEstimate(served.runtime.manifest.hidden_size or DEFAULT_HIDDEN_SIZE)
            served.batcher.use_memory_limit(share, estimate, release_above)
            longest = served.runtime.manifest.max_length
            rows = estimate.rows_within(share, longest)
            log = logger.warning if rows < 1 else logger.info
            log(
                "memory budget shared" if rows >= 1 else "memory budget too small for the longest input",
                extra={
                    "model": served.name,
                    "budget_mib": budget // 2**20,
                    "loaded_mib": loaded // 2**20,
                    "batch_limit_mib": share // 2**20,
                    "release_above_mib": release_above // 2**20,
                    "rows_at_max_length": rows,
                    "max_length": longest,
                },
            )

    async def _warm_up(self, served: ServedModel) -> None:
        # One item of the task's own kind (``TaskProcessor.warmup_item``), run before the server
        # reports ready, so the first real request does not pay for ONNX Runtime's lazy start.
        prepared = served.runtime.prepare(served.runtime.processor.warmup_item())
        await served.batcher.run_rows(prepared.rows, deadline=clock.now() + 60.0)

    async def _calibrate(self, served: ServedModel) -> None:
        """Fit the model's batch cost before it takes traffic (the server is not ready yet, so
        nothing else is using the cores); on a failed fit, keep the constants and say so."""
        runtime = served.runtime
        loop = asyncio.get_running_loop()
        started = time.perf_counter()

        def calibrate() -> tuple[BatchCost, list[BatchTiming]]:
            return calibrate_batch_cost(
                runtime.forward, max_width=runtime.manifest.max_length, token_id=calibration_token_id(runtime)
            )

        for attempt in range(1, CALIBRATION_ATTEMPTS + 1):
            try:
                cost, timings = await loop.run_in_executor(None, calibrate)
                break
            except ValueError as exc:
                # Noisy timings (a busy machine) fit badly; another try often fits.
                logger.warning(
                    "batch cost calibration failed"
                    + ("; using the constant batch overhead" if attempt == CALIBRATION_ATTEMPTS else ""),
                    extra={"model": served.name, "error": str(exc), "attempt": attempt},
                )
        else:
            return
        served.batcher.use_cost(cost)
        logger.info(
            "batch cost calibrated",
            extra={
                "model": served.name,
                "fixed_cost_ms": round(cost.fixed_s * 1000, 4),
                "token_cost_us": round(cost.per_token_s * 1e6, 4),
                "overhead_tokens": cost.overhead_tokens,
                "max_wait_ms": round(served.batcher.max_wait_s * 1000, 4),
                "shapes": len(timings),
                "calibration_s": round(time.perf_counter() - started, 3),
            },
        )

    def abort_admitted(self) -> None:
        """Answer every admitted request 503 shutting_down now (shutdown's grace is ending)."""
        for served in self.models.values():
            served.batcher.abort()

    async def stop(self) -> None:
        self.ready = False
        for served in self.models.values():
            await served.batcher.stop()

    def resolve(self, name: str | None, task: Task) -> ServedModel:
        """The model a request names, or the only model of ``task`` when it names none."""
        if name:
            served = self.models.get(name)
            if served is None:
                known = ", ".join(sorted(self.models)) or "none"
                raise ApiError(
                    404,
                    f"model {name!r} is not served here (served: {known})",
                    code="model_not_found",
                    param="model",
                )
            if served.task != task:
                raise ApiError(
                    400,
                    f"model {name!r} serves {served.task}, not {task}",
                    code="wrong_task",
                    param="model",
                )
            return served
        candidates = [served for served in self.models.values() if served.task == task]
        if not candidates:
            raise ApiError(404, f"no {task} model is served here", code="model_not_found", param="model")
        if len(candidates) > 1:
            names = ", ".join(served.name for served in candidates)
            raise ApiError(
                400,
                f"several {task} models are served ({names}); name one in 'model'",
                code="model_required",
                param="model",
            )
        return candidates[0]
