"""Extractive question answering: ``POST /v1/answer`` in the Hugging Face inference shape."""
