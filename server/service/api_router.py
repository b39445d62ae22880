"""Service routes. Health probes and metrics stay open even when an API key is set."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from server.auth import require_api_key, require_api_key_for_metrics
from server.responses import OrjsonResponse
from server.service.protocol import Health, Info, ModelList
from server.service.serving import ServiceInfo

health_router = APIRouter(tags=["service"])
info_router = APIRouter(tags=["service"], dependencies=[Depends(require_api_key)])
metrics_router = APIRouter(tags=["service"], dependencies=[Depends(require_api_key_for_metrics)])


@health_router.get("/health/live", response_model=Health, summary="Liveness: the process answers")
async def live() -> OrjsonResponse:
    return OrjsonResponse({"status": "ok"})


@health_router.get(
    "/health/ready",
    response_model=Health,
    summary="Readiness: every model loaded and warmed up",
    responses={503: {"model": Health, "description": "still loading"}},
)
async def ready(request: Request) -> OrjsonResponse:
    is_ready = request.app.state.distilserve.registry.ready
    return OrjsonResponse({"status": "ok" if is_ready else "loading"}, status_code=200 if is_ready else 503)


# TEI and many load balancers probe /health.
health_router.add_api_route("/health", ready, methods=["GET"], response_model=Health, include_in_schema=False)


@info_router.get("/v1/models", response_model=ModelList, summary="Served models (OpenAI shape)")
async def list_models(request: Request) -> OrjsonResponse:
    return OrjsonResponse(ServiceInfo(request.app.state.distilserve).models())


@info_router.get("/info", response_model=Info, summary="Models, tasks, labels, limits, batching and versions")
async def info(request: Request) -> OrjsonResponse:
    return OrjsonResponse(ServiceInfo(request.app.state.distilserve).info())


@metrics_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry = request.app.state.distilserve.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
