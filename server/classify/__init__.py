"""Sequence classification: ``POST /v1/classify`` and the TEI-compatible ``POST /predict``."""
