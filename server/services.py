"""The objects every route shares, built once per app, and the one dependency that reaches them.

``build_app`` makes one ``Services`` and stores it on ``app.state.services``; routes declare
``services: ServicesDep`` (and ``context: ContextDep``) instead of reading ``app.state``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from distilserve.server.admission import Admission, RequestContext
from distilserve.server.classify.serving import ClassifyService
from distilserve.server.embed.serving import EmbedService
from distilserve.server.metrics import ServerMetrics
from distilserve.server.observer import Observer
from distilserve.server.pipeline import InferencePipeline
from distilserve.server.qa.serving import AnswerService
from distilserve.server.registry import ModelRegistry
from distilserve.server.service.serving import ServiceInfo
from distilserve.server.settings import ServerSettings


@dataclass(frozen=True, slots=True)
class Services:
    settings: ServerSettings
    registry: ModelRegistry
    metrics: ServerMetrics
    observer: Observer
    admission: Admission
    pipeline: InferencePipeline
    classify: ClassifyService
    embed: EmbedService
    answer: AnswerService
    info: ServiceInfo

    @classmethod
    def build(
        cls, settings: ServerSettings, registry: ModelRegistry, metrics: ServerMetrics, observer: Observer
    ) -> Services:
        pipeline = InferencePipeline(settings, registry, observer)
        return cls(
            settings=settings,
            registry=registry,
            metrics=metrics,
            observer=observer,
            admission=Admission(settings, observer),
            pipeline=pipeline,
            classify=ClassifyService(pipeline),
            embed=EmbedService(pipeline),
            answer=AnswerService(pipeline),
            info=ServiceInfo(settings, registry),
        )


def get_services(request: Request) -> Services:
    services = request.app.state.services
    if not isinstance(services, Services):
        raise TypeError("app.state.services is not set: build the app with distilserve.server.app.build_app")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def request_context(request: Request, services: ServicesDep) -> RequestContext:
    """The request's deadline (X-Request-Timeout), and the model and tokens the access log reports."""
    context = services.admission.context_for(request)
    request.state.context = context
    return context


ContextDep = Annotated[RequestContext, Depends(request_context)]
