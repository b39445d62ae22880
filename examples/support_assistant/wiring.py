"""The client and the assistant, as the settings make them: one place for the terminal chat,
the HTTP API, the calibration and the tests."""

from __future__ import annotations

from examples.support_assistant.assistant import Assistant
from examples.support_assistant.client import DistilserveClient, RetryPolicy
from examples.support_assistant.settings import AssistantSettings


def make_client(settings: AssistantSettings) -> DistilserveClient:
    return DistilserveClient(
        settings.distilserve_url,
        timeout_s=settings.timeout_s,
        api_key=settings.api_key,
        retry=RetryPolicy(max_retries=settings.max_retries),
    )


async def build_assistant(client: DistilserveClient, settings: AssistantSettings) -> Assistant:
    """Embeds the documentation through ``client`` (distilserve must be ready)."""
    return await Assistant.build(
        client,
        settings.docs_root,
        max_words=settings.passage_words,
        top_k=settings.top_k,
        retrieve_k=settings.retrieve_k,
        reranker=settings.reranker,
        threshold=settings.threshold,
        relevance_weight=settings.relevance_weight,
        human_threshold=settings.human_threshold,
        index_timeout_s=settings.index_timeout_s,
        retrieval=settings.retrieval,
    )
