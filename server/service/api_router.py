"""Service routes. Health probes and metrics stay open even when an API key is set."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.responses import Response

from distilserve.server.responses import OrjsonResponse
from distilserve.server.routing import KeyedRoute
from distilserve.server.service.protocol import Health, Info, ModelList
from distilserve.server.services import ServicesDep


async def require_api_key_for_metrics(request: Request, services: ServicesDep) -> None:
    """The key on ``/metrics`` too, when ``--protect-metrics`` asks for it."""
    services.gate.check_metrics_key(request)


health_router = APIRouter(tags=["service"])
# The API's documents, when they sit behind the key (docs_access "protected" with a key set);
# otherwise FastAPI serves its own, or none.
docs_router = APIRouter(route_class=KeyedRoute, include_in_schema=False)
info_router = APIRouter(tags=["service"], route_class=KeyedRoute)
metrics_router = APIRouter(tags=["service"], dependencies=[Depends(require_api_key_for_metrics)])


@health_router.get("/health/live", response_model=Health, summary="Liveness: the process answers")
async def live() -> OrjsonResponse:
    return OrjsonResponse(Health(status="ok"))


@health_router.get(
    "/health/ready",
    response_model=Health,
    summary="Readiness: every model loaded and warmed up",
    responses={503: {"model": Health, "description": "still loading, or draining before shutdown"}},
)
async def ready(services: ServicesDep) -> OrjsonResponse:
    registry = services.registry
    if registry.draining:
        return OrjsonResponse(Health(status="draining"), status_code=503)
    is_ready = registry.ready
    return OrjsonResponse(
        Health(status="ok" if is_ready else "loading"), status_code=200 if is_ready else 503
    )


# TEI and many load balancers probe /health.
health_router.add_api_route("/health", ready, methods=["GET"], response_model=Health, include_in_schema=False)


@info_router.get("/v1/models", response_model=ModelList, summary="Served models (OpenAI shape)")
async def list_models(services: ServicesDep) -> OrjsonResponse:
    return OrjsonResponse(services.info.models())


@info_router.get("/info", response_model=Info, summary="Models, tasks, labels, limits, batching and versions")
async def info(services: ServicesDep) -> OrjsonResponse:
    return OrjsonResponse(services.info.info())


@metrics_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.exposition(), media_type=services.metrics.content_type)


@docs_router.get("/openapi.json")
async def openapi_document(request: Request) -> OrjsonResponse:
    return OrjsonResponse(request.app.openapi())


@docs_router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - Swagger UI")


@docs_router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title=f"{request.app.title} - ReDoc")
