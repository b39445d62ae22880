"""The HTTP side's one registration of each task: its ``ServerTask`` (router and service).

A task's folder (``server/<task>/``: ``protocol.py``, ``serving.py``, ``api_router.py``) ends
with its ``SERVER_TASK``; listing it here mounts its routes and builds its service
(docs/architecture.md, "Adding a task").
"""

from __future__ import annotations

from distilserve.server.classify.api_router import SERVER_TASK as CLASSIFY
from distilserve.server.embed.api_router import SERVER_TASK as EMBED
from distilserve.server.qa.api_router import SERVER_TASK as QA
from distilserve.server.services import ServerTask

SERVER_TASKS: tuple[ServerTask, ...] = (CLASSIFY, QA, EMBED)
