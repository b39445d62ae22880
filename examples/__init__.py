"""Worked examples that use distilserve over HTTP, as an application would."""
