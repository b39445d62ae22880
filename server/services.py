"""The objects every route shares, built once per app, and the dependencies that reach them.

``build_app`` makes one ``Services`` and stores it on ``app.state.services``; routes declare
``services: ServicesDep`` (and ``context: ContextDep``) instead of reading ``app.state``; a task's
routes reach their service with ``services.service(TheirService)``.

A task's server side is its folder (``protocol.py``, ``serving.py``, ``api_router.py``) and one
``ServerTask`` (its router and its service class) listed in ``distilserve.server.tasks``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request

from distilserve.server.admission import Admission, RequestContext
from distilserve.server.gate import Gate
from distilserve.server.metrics import ServerMetrics
from distilserve.server.observer import Observer
from distilserve.server.pipeline import InferencePipeline
from distilserve.server.registry import ModelRegistry
from distilserve.server.service.serving import ServiceInfo
from distilserve.server.settings import ServerSettings
from distilserve.server.topology import Topology, single_process

ServiceT = TypeVar("ServiceT")


@dataclass(frozen=True, slots=True)
class ServerTask:
    """One task's HTTP side: its routes, and the service they call (built once per app from
    the shared ``InferencePipeline``)."""

    router: APIRouter
    service: Callable[[InferencePipeline], object]


@dataclass(frozen=True, slots=True)
class Services:
    settings: ServerSettings
    registry: ModelRegistry
    metrics: ServerMetrics
    observer: Observer
    admission: Admission
    # The key, admission and the protocol's own answers (distilserve.server.gate).
    gate: Gate
    pipeline: InferencePipeline
    info: ServiceInfo
    # Each task's service, by its class (``service``).
    task_services: Mapping[Any, object]

    @classmethod
    def build(
        cls,
        settings: ServerSettings,
        registry: ModelRegistry,
        metrics: ServerMetrics,
        observer: Observer,
        tasks: Sequence[ServerTask] = (),
        topology: Topology | None = None,
        admitted_paths: frozenset[str] = frozenset(),
    ) -> Services:
        pipeline = InferencePipeline(settings, registry, observer)
        admission = Admission(settings, observer)
        return cls(
            settings=settings,
            registry=registry,
            metrics=metrics,
            observer=observer,
            admission=admission,
            gate=Gate(settings, admission, observer, admitted_paths),
            pipeline=pipeline,
            info=ServiceInfo(settings, registry, topology or single_process(settings)),
            task_services={task.service: task.service(pipeline) for task in tasks},
        )

    def service(self, kind: type[ServiceT]) -> ServiceT:
        """The app's one ``kind`` service (a task's ``ServerTask.service``)."""
        service = self.task_services.get(kind)
        if not isinstance(service, kind):
            raise TypeError(f"{kind.__name__} is not a registered task service (distilserve.server.tasks)")
        return service


def services_of(request: Request) -> Services:
    services = request.app.state.services
    if not isinstance(services, Services):
        raise TypeError("app.state.services is not set: build the app with distilserve.server.app.build_app")
    return services


# Both dependencies are ``async def``: FastAPI runs a plain ``def`` dependency on AnyIO's thread
# pool, two thread hops per request for an attribute lookup each (py-spy showed them on every
# request: ``solve_dependencies -> run_in_threadpool``).
async def get_services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


async def request_context(request: Request, services: ServicesDep) -> RequestContext:
    """The request's deadline (X-Request-Timeout), and the model and tokens the access log reports."""
    context = services.admission.context_for(request)
    request.state.context = context
    return context


ContextDep = Annotated[RequestContext, Depends(request_context)]
