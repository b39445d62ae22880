"""The assistant's settings: flags (``--name``) and ``DISTILSERVE_ASSISTANT_*`` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]

# Chosen by `python -m examples.support_assistant.calibrate` on the calibration split of
# questions.json (the confidence that maximises its exact-match accuracy, answerable and
# unanswerable questions together, as SQuAD 2.0's evaluation picks its no-answer threshold).
CALIBRATED_THRESHOLD = 0.04


class AssistantSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISTILSERVE_ASSISTANT_", extra="ignore", cli_kebab_case=True
    )

    distilserve_url: str = Field("http://127.0.0.1:8080", description="the distilserve server (make serve)")
    api_key: str | None = Field(None, description="distilserve's API key, when it has one")
    timeout_s: float = Field(10.0, gt=0, description="deadline of each distilserve request, in seconds")
    max_retries: int = Field(
        3, ge=0, description="retries of a 429/503 (after Retry-After) or a failed connection"
    )
    docs_root: Path = Field(REPO_ROOT, description="folder whose README.md and docs/ are the knowledge base")
    passage_words: int = Field(100, ge=10, description="most words per passage (paragraphs are kept whole)")
    top_k: int = Field(5, ge=1, le=50, description="passages retrieved and read per message")
    threshold: float = Field(
        CALIBRATED_THRESHOLD, ge=0, le=1, description='confidence below which the answer is "I don\'t know"'
    )
    human_threshold: float = Field(
        0.95,
        ge=0,
        le=1,
        description="negative-sentiment probability from which a message is flagged for a human",
    )
    host: str = Field("127.0.0.1", description="address of the assistant's own HTTP API")
    port: int = Field(8090, ge=1, le=65535, description="port of the assistant's own HTTP API")
