"""docker-compose.yml: valid against the Compose Specification schema, and wired as the product
needs: a `gpu` profile (Triton with a GPU, the gateway on Triton once Triton is healthy), a `cpu`
profile (the gateway alone on its embedded backend), Prometheus and Grafana in both; in each
profile a DICOM listener from the gateway's image sharing the gateway's study store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.deploy.conftest import (
    COMPOSE_FILE,
    DOCKER,
    PROMETHEUS_CONFIG,
    PROVISIONING_DIR,
    REPO_ROOT,
    SCHEMAS,
)
from tests.deploy.dockerfile import stages
from tests.deploy.settings_check import (
    compose_default,
    triton_model_names,
    unknown_settings,
    validate_settings,
)

COMPOSE_SCHEMA = SCHEMAS / "compose-spec.json"
SHARED_COMPOSE_SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "compose-spec.json"
MODEL_REPOSITORY_IN_IMAGE = "/opt/headct/model_repository"
DICOM_PORT = "11112"
LISTENER_METRICS_PORT = "9101"
PROFILES = {"gpu": ("gateway", "listener"), "cpu": ("gateway-cpu", "listener-cpu")}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: compose_default(value) for key, value in env.items()}


def _binds(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Bind mounts by target (long syntax, as this file writes them)."""
    return {
        v["target"]: v
        for v in service.get("volumes", [])
        if isinstance(v, dict) and v.get("type") == "bind"
    }


def test_compose_file_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    if SHARED_COMPOSE_SCHEMA.is_file():  # the vendored copy is the project's shared one
        assert json.loads(SHARED_COMPOSE_SCHEMA.read_text()) == schema
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert not errors, "\n".join(errors)


def test_schema_check_catches_a_typo(compose: dict[str, Any]) -> None:
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["triton"]["shm_sise"] = "1gb"
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    assert any("shm_sise" in e.message for e in validator.iter_errors(broken))


def test_profiles_split_gpu_and_cpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiles = {name: set(s.get("profiles", [])) for name, s in services.items()}
    assert profiles["triton"] == {"gpu"}
    assert profiles["gateway"] == {"gpu"}
    assert profiles["gateway-cpu"] == {"cpu"}
    assert profiles["listener"] == {"gpu"}
    assert profiles["listener-cpu"] == {"cpu"}
    # Monitoring runs in both; nothing else runs without a profile.
    assert {n for n, p in profiles.items() if not p} == {"prometheus", "grafana"}
    gpu_users = {
        name
        for name, s in services.items()
        if s.get("gpus") or s.get("deploy", {}).get("resources", {}).get("reservations")
    }
    assert gpu_users == {"triton"}, "only Triton may need a GPU (the cpu profile runs anywhere)"


def test_triton_service(compose: dict[str, Any]) -> None:
    triton = compose["services"]["triton"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert triton["shm_size"]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    mount = _binds(triton)[MODEL_REPOSITORY_IN_IMAGE]
    assert mount["read_only"] is True
    assert (REPO_ROOT / mount["source"]).resolve() == REPO_ROOT / "model_repository"
    assert triton["build"]["dockerfile"] == "docker/triton.Dockerfile"
    models = _environment(triton)["HEADCT_TRITON_MODELS"].split(",")
    assert set(models) <= triton_model_names()


def test_gateway_uses_triton_once_it_is_healthy(compose: dict[str, Any], tmp_path: Path) -> None:
    gateway, triton = compose["services"]["gateway"], compose["services"]["triton"]
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    env = _environment(gateway)
    assert env["HEADCT_BACKEND"] == "triton"
    host, port = env["HEADCT_TRITON_URL"].split(":")
    assert (host, port) == ("triton", "8000")
    assert env["HEADCT_MODEL_NAME"] in _environment(triton)["HEADCT_TRITON_MODELS"].split(",")
    assert gateway["build"]["target"] == "runtime"
    assert not unknown_settings(env)
    validate_settings(env, tmp_path)


def test_cpu_gateway_serves_the_embedded_model(compose: dict[str, Any], tmp_path: Path) -> None:
    gateway = compose["services"]["gateway-cpu"]
    env = _environment(gateway)
    assert env["HEADCT_BACKEND"] == "onnx"
    assert env["HEADCT_MODEL_REPOSITORY"] == MODEL_REPOSITORY_IN_IMAGE
    assert "depends_on" not in gateway
    assert gateway["build"]["target"] == "embedded"
    # Prometheus scrapes "gateway" in both profiles.
    assert "gateway" in gateway["networks"]["default"]["aliases"]
    assert not unknown_settings(env)
    validate_settings(env, tmp_path)


def test_gateways_run_read_only_with_a_writable_tmp(compose: dict[str, Any]) -> None:
    for name in ("gateway", "gateway-cpu"):
        service = compose["services"][name]
        assert service["read_only"] is True
        assert any(str(t).split(":")[0] == "/tmp" for t in service["tmpfs"])
        assert any(str(p).endswith(":8080") for p in service["ports"])


def test_build_targets_and_sources_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" not in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name
            continue
        build = service["build"]
        dockerfile = REPO_ROOT / build["context"] / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        if "target" in build:
            assert build["target"] in stages(dockerfile), f"{name}: no stage {build['target']}"
    for name, service in compose["services"].items():
        for target, mount in _binds(service).items():
            assert (REPO_ROOT / mount["source"]).exists(), f"{name}: {mount['source']} -> {target}"


def test_prometheus_scrapes_the_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    mount = _binds(prometheus)["/etc/prometheus"]
    assert (REPO_ROOT / mount["source"]).resolve() == PROMETHEUS_CONFIG.parent
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    names = set(services) | {
        alias
        for s in services.values()
        for network in (s.get("networks") or {}).values()
        for alias in (network or {}).get("aliases", [])
    }
    expected = {
        "headct-gateway": ("gateway", 8080),
        "headct-listener": ("listener", int(LISTENER_METRICS_PORT)),
        "headct-triton": ("triton", 8002),
    }
    for job, (host, port) in expected.items():
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [host] and sd["port"] == port
        assert host in names


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "GRAFANA_ADMIN_PASSWORD" in env["GF_SECURITY_ADMIN_PASSWORD"]
    binds = _binds(grafana)
    assert (REPO_ROOT / binds["/etc/grafana/provisioning"]["source"]).resolve() == PROVISIONING_DIR
    dashboards_target = "/etc/grafana/dashboards"
    assert (REPO_ROOT / binds[dashboards_target]["source"]).resolve() == DOCKER / "grafana" / (
        "dashboards"
    )
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_target + "/")
    assert (DOCKER / "grafana" / "dashboards" / Path(home).name).is_file()

    (provider,) = yaml.safe_load((PROVISIONING_DIR / "dashboards" / "headct.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == dashboards_target
    (source,) = yaml.safe_load((PROVISIONING_DIR / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in services


def _named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Named volumes by target (short syntax ``name:/target``)."""
    return {
        v.split(":")[1]: v.split(":")[0]
        for v in service.get("volumes", [])
        if isinstance(v, str) and not v.startswith((".", "/"))
    }


def test_listener_shares_the_gateways_store_and_image(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    services = compose["services"]
    for profile, (gateway_name, listener_name) in PROFILES.items():
        gateway, listener = services[gateway_name], services[listener_name]
        gateway_env, listener_env = _environment(gateway), _environment(listener)
        data_dir = gateway_env["HEADCT_DATA_DIR"]
        assert listener_env["HEADCT_DATA_DIR"] == data_dir, profile
        volume = _named_volumes(gateway)[data_dir]
        assert _named_volumes(listener)[data_dir] == volume and volume in compose["volumes"]
        # Deliveries are claimed by whichever process triaged or is free: both must know them.
        assert (
            listener["environment"]["HEADCT_PACS_DESTINATIONS"]
            == (gateway["environment"]["HEADCT_PACS_DESTINATIONS"])
        )
        assert listener["image"] == gateway["image"] and listener["build"] == gateway["build"]
        for key in ("HEADCT_BACKEND", "HEADCT_TRITON_URL", "HEADCT_MODEL_NAME"):
            assert listener_env.get(key) == gateway_env.get(key), (profile, key)
        command = listener["command"]
        assert command[:2] == ["headct", "listen"] and "0.0.0.0" in command
        port = command[command.index("--port") + 1]
        assert port == DICOM_PORT and any(p.endswith(f":{port}") for p in listener["ports"])
        assert f", {port})" in " ".join(listener["healthcheck"]["test"]), "checks the DICOM port"
        assert listener_env["HEADCT_LISTEN_METRICS_PORT"] == LISTENER_METRICS_PORT
        assert listener["read_only"] is True
        assert not unknown_settings(listener_env)
        validate_settings(listener_env, tmp_path)
    aliases = services["listener-cpu"]["networks"]["default"]["aliases"]
    assert "listener" in aliases, "Prometheus scrapes `listener` in both profiles"
