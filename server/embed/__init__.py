"""Sentence embeddings: OpenAI-compatible ``POST /v1/embeddings`` and TEI-compatible ``POST /embed``."""
