"""Tests of the examples, as applications over HTTP."""
