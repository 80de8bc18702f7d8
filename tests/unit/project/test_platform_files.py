"""The cluster, container and monitoring files under platform/: parsed and checked value by value.

Pure file checks (no network, no Ray cluster): one image name everywhere, token auth wherever a
cluster is defined, a head that runs no training, a dashboard that no shipped file exposes without
auth, no literal token, Prometheus reading Ray's service-discovery file and a Grafana panel per
platform metric.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import pathlib
import re
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
PLATFORM = ROOT / "platform"
IMAGE = "ghcr.io/cacr-platform/cacr:0.1.0"
TOKEN_FILE = "~/.cacr/ray-auth-token"
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
RAY_DASHBOARDS = "/tmp/ray/session_latest/metrics/grafana/dashboards"
METRICS = (
    "cacr_images_per_second",
    "cacr_views_per_second",
    "cacr_data_wait_fraction",
    "cacr_loss",
    "cacr_knn_top1",
    "cacr_bad_images",
)
_DASHBOARD_HOST = re.compile(r"dashboard[-_]host[\"']?(?:\s*[:=]\s*|\s+)[\"']?([^\s\"',})\]]+)")
_TOKEN_AUTH = re.compile(
    r"RAY_AUTH_MODE[\"']?\s*[:=]\s*[\"']?token\b"  # shell, env and Python
    r"|authOptions:\s*\n\s+mode:\s*[\"']?token\b"  # KubeRay
)
_HEX64 = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")
_PUBLISH = re.compile(r"(?:^|\s)(?:-p|--publish)(?:\s+|=)(\S+)")


def _load(path: pathlib.Path) -> list[Any]:
    """Every document of a YAML or JSON file."""
    text = path.read_text()
    return [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))


def _one(path: pathlib.Path) -> Any:
    (doc,) = _load(path)
    return doc


def _shipped_files() -> list[pathlib.Path]:
    """Every file the platform ships: platform/, configs/, .ci/ and the Makefile."""
    files = [p for base in (PLATFORM, ROOT / "configs", ROOT / ".ci") for p in base.rglob("*") if p.is_file()]
    return [p for p in files if "__pycache__" not in p.parts] + [ROOT / "Makefile"]


def dashboard_exposures(text: str) -> list[str]:
    """Dashboard bind addresses in ``text`` that are not loopback (or cannot be shown to be)."""
    found = []
    for value in _DASHBOARD_HOST.findall(text):
        value = value.strip("[];")
        if value.startswith("$"):
            found.append(value)  # a variable: could be anything
            continue
        try:
            if not ipaddress.ip_address(value).is_loopback:
                found.append(value)
        except ValueError:
            if value != "localhost" and "." in value:  # a host name; prose words are not flagged
                found.append(value)
    return found


def unprotected_dashboards(text: str) -> list[str]:
    """Non-loopback dashboard bindings in a file that does not turn token auth on."""
    return [] if _TOKEN_AUTH.search(text) else dashboard_exposures(text)


def docker_publishes_off_loopback(text: str) -> list[str]:
    """``docker run`` port publications that do not bind 127.0.0.1."""
    joined = text.replace("\\\n", " ")
    lines = [line for line in joined.splitlines() if "docker run" in line]
    return [p for line in lines for p in _PUBLISH.findall(line) if not p.startswith("127.0.0.1:")]


def _kuberay() -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((PLATFORM / "kuberay").glob("*.yaml")):
        for doc in _load(path):
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def _cluster_specs() -> list[dict[str, Any]]:
    kinds = _kuberay()
    return [d["spec"] for d in kinds["RayCluster"]] + [d["spec"]["rayClusterSpec"] for d in kinds["RayJob"]]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _ray_up() -> dict[str, Any]:
    return _one(PLATFORM / "cluster" / "aws-gpu.yaml")


def _ray_package() -> pathlib.Path:
    """The installed Ray's folder, found without importing Ray."""
    return pathlib.Path(importlib.util.find_spec("ray").origin).parent


def _ray_pin() -> str:
    (version,) = re.findall(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    return version


def test_every_yaml_and_json_file_parses_to_documents():
    paths = [p for p in PLATFORM.rglob("*") if p.suffix in {".yaml", ".yml", ".json"}]
    assert len(paths) >= 8, paths
    for path in paths:
        docs = _load(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_kuberay_manifests_are_a_raycluster_a_rayjob_and_the_token_secret():
    kinds = _kuberay()
    assert {k: len(v) for k, v in kinds.items()} == {"RayCluster": 1, "RayJob": 1, "Secret": 1}
    assert {d["apiVersion"] for d in kinds["RayCluster"] + kinds["RayJob"]} == {"ray.io/v1"}
    assert kinds["Secret"][0]["apiVersion"] == "v1"
    for spec in _cluster_specs():
        assert spec["rayVersion"] == _ray_pin()
        assert {g["groupName"] for g in spec["workerGroupSpecs"]} == {"gpu", "cpu-data"}
    job = kinds["RayJob"][0]["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["submissionMode"] == "K8sJobMode"
    assert re.search(r"python \S*pipelines/pretrain\.py experiment=\S+", job["entrypoint"])
    assert "trainer.storage_path=s3://" in job["entrypoint"]
    env = yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]
    assert env["RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS"] == "0"


def test_one_image_everywhere_and_the_dockerfile_builds_this_project():
    images = [c["image"] for spec in _cluster_specs() for c in _containers(spec)]
    docker = _ray_up()["docker"]
    images += [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    assert len(images) >= 7 and set(images) == {IMAGE}
    assert f"docker build -f platform/docker/Dockerfile -t {IMAGE} ." in (PLATFORM / "README.md").read_text()
    dockerfile = (PLATFORM / "docker" / "Dockerfile").read_text()
    assert f"rayproject/ray:{_ray_pin()}-py311-gpu" in dockerfile
    assert re.search(r"pip install -c constraints\.txt", dockerfile)
    assert re.search(r"^COPY .*pyproject\.toml constraints\.txt", dockerfile, re.M)
    for folder in ("objectives", "pipelines", "configs", "data"):
        assert re.search(rf"^COPY .*\b{folder}/ {folder}/$", dockerfile, re.M), folder
    assert "RAY_USAGE_STATS_ENABLED=0" in dockerfile and re.search(r"^WORKDIR /\S+", dockerfile, re.M)
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_ray_up_file_is_valid_for_the_installed_rays_schema():
    schema = json.loads((_ray_package() / "autoscaler" / "ray-schema.json").read_text())
    config = _ray_up()
    jsonschema.validate(config, schema)
    config["docker"]["no_such_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def test_token_auth_is_on_in_every_cluster_definition():
    secret = _kuberay()["Secret"][0]
    assert secret["stringData"] == {"auth_token": ""}  # a placeholder, never a token
    for spec in _cluster_specs():
        assert spec["authOptions"] == {"mode": "token", "secretName": secret["metadata"]["name"]}
    config = _ray_up()
    options = " ".join(config["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options
    (target,) = [t for t, source in config["file_mounts"].items() if source == TOKEN_FILE]
    assert f"--env RAY_AUTH_TOKEN_PATH={target}" in options
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all(f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={target}" in c for c in start), key


def test_the_head_runs_no_training_and_workers_split_gpu_and_data():
    for spec in _cluster_specs():
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"
        head_limits = [c["resources"]["limits"] for c in head["template"]["spec"]["containers"]]
        assert head_limits and all("nvidia.com/gpu" not in limits for limits in head_limits)
        gpu, data = (
            [c["resources"]["limits"].get("nvidia.com/gpu") for c in g["template"]["spec"]["containers"]]
            for g in spec["workerGroupSpecs"]
        )
        assert gpu == ["1"] and data == [None]
        for group in [head, *spec["workerGroupSpecs"]]:
            assert group["rayStartParams"]["metrics-export-port"] == "8080"
    config = _ray_up()
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start and "--metrics-export-port=8080" in head_start
    assert types["gpu_worker"]["resources"]["GPU"] > 0 and types["cpu_worker"]["resources"]["GPU"] == 0


def test_the_dashboard_scanner_flags_open_bindings_without_auth():
    assert unprotected_dashboards("ray start --head --dashboard-host 0.0.0.0")
    assert unprotected_dashboards("ray start --head --dashboard-host=::")
    assert unprotected_dashboards('rayStartParams:\n  dashboard-host: "0.0.0.0"\n')
    assert unprotected_dashboards('ray.init(dashboard_host="0.0.0.0")')
    assert unprotected_dashboards("--dashboard-host $HOST_IP")
    assert not unprotected_dashboards("ray start --head --dashboard-host 127.0.0.1 --dashboard-port 8265")
    assert not unprotected_dashboards("ray.init(dashboard_host='localhost')  # the dashboard-host is local")
    assert not unprotected_dashboards("export RAY_AUTH_MODE=token; ray start --dashboard-host 0.0.0.0")


def test_no_shipped_file_exposes_the_dashboard_without_token_auth():
    files = _shipped_files()
    assert PLATFORM / "local" / "ray-head.sh" in files and ROOT / "Makefile" in files
    bad = {str(p.relative_to(ROOT)): unprotected_dashboards(p.read_text()) for p in files}
    assert not {p: v for p, v in bad.items() if v}
    (cluster,) = _kuberay()["RayCluster"]
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", " ".join(_ray_up()["head_start_ray_commands"]))
    for spec in _cluster_specs():
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_no_file_holds_a_literal_token():
    assert _HEX64.search("token: " + "0123456789abcdef" * 4)
    assert not _HEX64.search("0123456789abcdef" * 5)  # longer hex (a hash of something else) is fine
    leaks = [str(p.relative_to(ROOT)) for p in _shipped_files() if _HEX64.search(p.read_text())]
    assert not leaks


def test_docker_runs_publish_ports_on_loopback_only():
    assert docker_publishes_off_loopback("docker run -d \\\n  -p 3000:3000 grafana/grafana")
    assert not docker_publishes_off_loopback("docker run -p 127.0.0.1:3000:3000 grafana/grafana")
    offenders = {str(p): docker_publishes_off_loopback(p.read_text()) for p in _shipped_files()}
    assert not {p: v for p, v in offenders.items() if v}
    text = (PLATFORM / "monitoring" / "run-monitoring.sh").read_text()
    assert "-p 127.0.0.1:9090:9090" in text and "-p 127.0.0.1:3000:3000" in text
    assert not re.search(r"--net(work)?[= ]host", text)


def test_prometheus_reads_rays_service_discovery_file():
    constants = (_ray_package() / "_private" / "ray_constants.py").read_text()
    (name,) = re.findall(r'^PROMETHEUS_SERVICE_DISCOVERY_FILE = "([^"]+)"', constants, re.M)
    assert f"/tmp/ray/{name}" == RAY_SD_FILE  # Ray 2.60 keeps this link to the session's file
    jobs = _one(PLATFORM / "monitoring" / "prometheus.yml")["scrape_configs"]
    files = [f for job in jobs for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert files == [RAY_SD_FILE]


def test_grafana_provisions_prometheus_and_both_dashboard_folders():
    grafana = PLATFORM / "monitoring" / "grafana"
    (source,) = _one(grafana / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    assert (source["uid"], source["type"]) == ("prometheus", "prometheus")
    providers = _one(grafana / "provisioning" / "dashboards" / "dashboards.yaml")["providers"]
    paths = {p["options"]["path"] for p in providers}
    ours = paths - {RAY_DASHBOARDS}
    assert RAY_DASHBOARDS in paths and len(ours) == 1
    script = (PLATFORM / "monitoring" / "run-monitoring.sh").read_text()
    assert f'-v "$here/grafana/dashboards:{ours.pop()}:ro"' in script


def test_the_dashboard_has_one_panel_per_platform_metric_filtered_by_run():
    board = _one(PLATFORM / "monitoring" / "grafana" / "dashboards" / "cacr.json")
    assert [v["name"] for v in board["templating"]["list"]] == ["run"]
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    assert len(board["panels"]) == len(exprs) == len(METRICS)
    for metric in METRICS:
        (expr,) = [e for e in exprs if re.search(rf"\bray_{metric}\{{", e)]
        assert f'ray_{metric}{{run=~"$run"}}' in expr
    assert {p["datasource"]["uid"] for p in board["panels"]} == {"prometheus"}


def test_the_dashboard_follows_the_gauges_the_pipelines_define():
    from pipelines.training.live import FIGURES

    assert {name for name, _ in FIGURES.values()} == set(METRICS)
