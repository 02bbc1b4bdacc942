"""k8s/: each overlay renders with kustomize, passes ``kubernetes-validate --strict`` (the custom
resources against the Prometheus Operator's CRD schemas), and is wired together: selectors match
pods, probes and ports line up, pods meet the restricted Pod Security Standard, only the gateway
(and, in the batch overlay, the batch pods) reaches Triton, the PACS component's listener shares
the gateway's study store, and the batch Jobs' shards, command lines and volumes agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.deploy.conftest import OVERLAYS, SCHEMAS, one, resources, run
from tests.deploy.settings_check import triton_model_names, unknown_settings, validate_settings

# Oldest and newest Kubernetes versions checked (kubernetes-validate ships the schemas).
KUBERNETES_VERSIONS = ("1.29", "1.37")
# Custom resources kubernetes-validate has no schema for, and the CRD schema used instead.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}
CLUSTER_SCOPED = {"Namespace"}
TRITON_OVERLAYS = ("gpu", "batch")
NAMESPACE = "headct"

Docs = list[dict[str, Any]]


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [c for c in _pod(deployment)["containers"] if c["name"] == name]
    return container


def _config_map(docs: Docs, deployment: dict[str, Any]) -> dict[str, str]:
    (ref,) = [e["configMapRef"]["name"] for e in _container(deployment, "gateway")["envFrom"]]
    data: dict[str, str] = one(docs, "ConfigMap", ref)["data"]
    return data


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict(
    rendered: dict[str, Path], kubernetes_validate: str, overlay: str, version: str
) -> None:
    result = run(
        [kubernetes_validate, "--strict", "--quiet", "-k", version, str(rendered[overlay])]
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for line in output.splitlines():
        assert line.startswith("WARN"), line
        assert any(f"kind {kind} with api version {api}" in line for api, kind in CRD_SCHEMAS), line


def _strict(schema: Any) -> Any:
    """The CRD schema rejecting unknown fields, as the API server's strict field validation does
    (objects with properties and no explicit additionalProperties or preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in strict
        and "additionalProperties" not in strict
        and not strict.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_their_crd_schemas(manifests: dict[str, Docs], overlay: str) -> None:
    custom = [d for d in manifests[overlay] if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS]
    assert {d["kind"] for d in custom} == {"ServiceMonitor", "PrometheusRule"}
    for doc in custom:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]).read_text())
        errors = list(jsonschema.Draft7Validator(_strict(schema)).iter_errors(doc))
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: {errors[0].message}"


def test_crd_schema_check_catches_a_typo(manifests: dict[str, Docs]) -> None:
    monitor = json.loads(json.dumps(one(manifests["gpu"], "ServiceMonitor", "headct-triton")))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"
    schema = json.loads((SCHEMAS / "servicemonitor-monitoring-v1.json").read_text())
    assert list(jsonschema.Draft7Validator(_strict(schema)).iter_errors(monitor))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_headct_namespace(manifests: dict[str, Docs], overlay: str) -> None:
    docs = manifests[overlay]
    assert one(docs, "Namespace", NAMESPACE)["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"
    ] == ("restricted")
    for doc in docs:
        name = f"{doc['kind']} {doc['metadata']['name']}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "headct-triage", name
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_pod_security_standard(
    manifests: dict[str, Docs], overlay: str
) -> None:
    docs = manifests[overlay]
    for deployment in [*resources(docs, "Deployment"), *resources(docs, "Job")]:
        pod = _pod(deployment)
        name = deployment["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        assert all("hostPath" not in v for v in pod.get("volumes", [])), name
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert not context.get("privileged"), where
            assert container["resources"]["requests"] and container["resources"]["limits"], where
            assert "memory" in container["resources"]["limits"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_deployment(manifests: dict[str, Docs], overlay: str, tmp_path: Path) -> None:
    docs = manifests[overlay]
    deployment = one(docs, "Deployment", "headct-gateway")
    gateway = _container(deployment, "gateway")
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": 8080}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # /readyz gives the backend 5 s before saying no: the probe waits longer than that.
    assert gateway["readinessProbe"]["timeoutSeconds"] > 5
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert _pod(deployment)["securityContext"]["runAsUser"] == 10001
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod(deployment)["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "uploads spool to /tmp on a read-only root"
    settings = _config_map(docs, deployment)
    assert not unknown_settings(settings)
    validate_settings(settings, tmp_path)
    env = {e["name"]: e for e in gateway["env"]}
    assert env["HEADCT_API_KEYS"]["valueFrom"]["secretKeyRef"]["optional"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_service_hpa_and_pdb(manifests: dict[str, Docs], overlay: str) -> None:
    docs = manifests[overlay]
    deployment = one(docs, "Deployment", "headct-gateway")
    service = one(docs, "Service", "headct-gateway")
    assert _selects(service["spec"]["selector"], _labels(deployment))
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    hpa = one(docs, "HorizontalPodAutoscaler", "headct-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "headct-gateway",
    }
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Pods", "Resource"}
    pdb = one(docs, "PodDisruptionBudget", "headct-gateway")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], _labels(deployment))
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def _service_monitor_targets(docs: Docs, name: str) -> tuple[dict[str, Any], set[str]]:
    monitor = one(docs, "ServiceMonitor", name)
    service = one(docs, "Service", name)
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    ports = {p["name"] for p in service["spec"]["ports"]}
    return monitor, ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_select_named_ports(manifests: dict[str, Docs], overlay: str) -> None:
    docs = manifests[overlay]
    names = {m["metadata"]["name"] for m in resources(docs, "ServiceMonitor")}
    others = {
        "gpu": {"headct-triton"},
        "cpu": set(),
        "cpu-pacs": {"headct-listener"},
        "batch": {"headct-triton"},
    }
    assert names == {"headct-gateway"} | others[overlay]
    for name in names:
        monitor, ports = _service_monitor_targets(docs, name)
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_gpu_overlay_runs_triton_on_a_gpu(manifests: dict[str, Docs], tmp_path: Path) -> None:
    docs = manifests["gpu"]
    deployment = one(docs, "Deployment", "headct-triton")
    pod = _pod(deployment)
    triton = _container(deployment, "triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    repository = volumes[mounts["/opt/headct/model_repository"]["name"]]
    claim = repository["persistentVolumeClaim"]["claimName"]
    one(docs, "PersistentVolumeClaim", claim)
    startup = triton["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model load takes time"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}

    service = one(docs, "Service", "headct-triton")
    assert _selects(service["spec"]["selector"], _labels(deployment))
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    settings = _config_map(docs, one(docs, "Deployment", "headct-gateway"))
    assert settings["HEADCT_BACKEND"] == "triton"
    host, port = settings["HEADCT_TRITON_URL"].split(":")
    assert host == service["metadata"]["name"] and int(port) == service_ports["http"]
    models = {e["name"]: e["value"] for e in triton["env"]}["HEADCT_TRITON_MODELS"]
    assert settings["HEADCT_MODEL_NAME"] in models.split(",")
    assert set(models.split(",")) <= triton_model_names()
    validate_settings(settings, tmp_path)


def test_cpu_overlay_is_the_gateway_alone(manifests: dict[str, Docs], tmp_path: Path) -> None:
    docs = manifests["cpu"]
    assert {d["metadata"]["name"] for d in resources(docs, "Deployment")} == {"headct-gateway"}
    assert not resources(docs, "NetworkPolicy") and not resources(docs, "PersistentVolumeClaim")
    assert "nvidia.com/gpu" not in json.dumps(docs)
    deployment = one(docs, "Deployment", "headct-gateway")
    settings = _config_map(docs, deployment)
    assert settings["HEADCT_BACKEND"] == "onnx"
    assert settings["HEADCT_MODEL_REPOSITORY"] == "/opt/headct/model_repository"
    assert _container(deployment, "gateway")["image"].endswith("-embedded")
    validate_settings(settings, tmp_path)


@pytest.mark.parametrize("overlay", TRITON_OVERLAYS)
def test_only_the_gateway_and_batch_pods_reach_triton(
    manifests: dict[str, Docs], overlay: str
) -> None:
    docs = manifests[overlay]
    triton = one(docs, "Deployment", "headct-triton")
    clients = [_labels(one(docs, "Deployment", "headct-gateway"))]
    if overlay == "batch":
        clients.append(_labels(one(docs, "Job", "headct-batch")))
    (policy,) = resources(docs, "NetworkPolicy")
    spec = policy["spec"]
    assert _selects(spec["podSelector"]["matchLabels"], _labels(triton))
    assert "Ingress" in spec["policyTypes"]
    inference_ports = {"http", "grpc", 8000, 8001}
    other_pod = {"app.kubernetes.io/name": "something-else"}
    for rule in spec["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        assert rule.get("from"), "a rule without peers admits everyone"
        if ports & inference_ports:
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, "inference ports: same-namespace pods only"
                assert not _selects(peer["podSelector"]["matchLabels"], other_pod)
            for labels in clients:
                assert any(_selects(p["podSelector"]["matchLabels"], labels) for p in rule["from"])
            assert len(rule["from"]) == len(clients)
        else:
            assert ports == {"metrics"}, "only the metrics port is open to anyone else"
            for peer in rule["from"]:
                assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _mounted_claims(deployment: dict[str, Any], container: str) -> dict[str, str]:
    """Mount path to PersistentVolumeClaim name, for ``container``'s claim-backed mounts."""
    volumes = {v["name"]: v for v in _pod(deployment)["volumes"]}
    return {
        m["mountPath"]: volumes[m["name"]]["persistentVolumeClaim"]["claimName"]
        for m in _container(deployment, container)["volumeMounts"]
        if "persistentVolumeClaim" in volumes[m["name"]]
    }


def test_pacs_listener_shares_the_gateways_store(
    manifests: dict[str, Docs], tmp_path: Path
) -> None:
    docs = manifests["cpu-pacs"]
    gateway_deployment = one(docs, "Deployment", "headct-gateway")
    listener_deployment = one(docs, "Deployment", "headct-listener")
    gateway = _container(gateway_deployment, "gateway")
    listener = _container(listener_deployment, "listener")
    assert listener["image"] == gateway["image"]
    assert listener["envFrom"] == gateway["envFrom"], "the same model, store and destinations"
    settings = _config_map(docs, gateway_deployment)
    data_dir = settings["HEADCT_DATA_DIR"]
    claim = _mounted_claims(listener_deployment, "listener")[data_dir]
    assert _mounted_claims(gateway_deployment, "gateway")[data_dir] == claim
    assert one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    for container in (gateway, listener):  # several pods on one database: PostgreSQL
        store_url = _env(container)["HEADCT_STORE_URL"]["valueFrom"]["secretKeyRef"]
        assert store_url == {"name": "headct-store", "key": "url"}

    args = listener["args"]
    assert args[:2] == ["headct", "listen"] and "0.0.0.0" in args
    ports = {p["name"]: p["containerPort"] for p in listener["ports"]}
    assert ports["dicom"] == int(args[args.index("--port") + 1])
    listener_env = _env(listener)
    assert ports["metrics"] == int(listener_env["HEADCT_LISTEN_METRICS_PORT"]["value"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert listener[probe]["tcpSocket"] == {"port": "dicom"}, probe
    assert _mounted_claims(listener_deployment, "listener").keys() == {data_dir}
    mounts = {m["mountPath"] for m in listener["volumeMounts"]}
    assert "/tmp" in mounts and listener["securityContext"]["readOnlyRootFilesystem"] is True

    service = one(docs, "Service", "headct-listener")
    assert _selects(service["spec"]["selector"], _labels(listener_deployment))
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert service_ports["dicom"] == (104, "dicom"), "PACS send to the well-known DICOM port"
    validate_settings({**settings, "HEADCT_LISTEN_METRICS_PORT": str(ports["metrics"])}, tmp_path)


def _parses(command: list[str]) -> None:
    """``headct batch ...`` as the container runs it parses with the real command line (an option
    renamed in the CLI but not here fails)."""
    import typer

    from service.batch.cli import batch_app

    assert command[:2] == ["headct", "batch"]
    group = typer.main.get_command(batch_app)
    context = group.make_context("batch", command[2:])
    name, sub, rest = group.resolve_command(context, [*context._protected_args, *context.args])
    assert sub is not None and name in ("score", "merge")
    sub.make_context(str(name), rest, parent=context)


def test_batch_overlay_shards_the_archive_against_triton_and_merges(
    manifests: dict[str, Docs], tmp_path: Path
) -> None:
    docs = manifests["batch"]
    job = one(docs, "Job", "headct-batch")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    shards = spec["completions"]
    assert spec["parallelism"] == shards
    container = _container(job, "batch")
    env = {e["name"]: e for e in container["env"]}
    assert env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    args = container["args"]
    assert args[args.index("--shard") + 1] == f"$(SHARD_INDEX)/{shards}"
    assert args[args.index("--out") + 1] == "/results/shard-$(SHARD_INDEX)"
    expanded = [
        a.replace("$(SHARD_INDEX)", "0").replace("$(BATCH_SOURCE)", "/archive") for a in args
    ]
    _parses(expanded)

    settings: dict[str, str] = one(docs, "ConfigMap", _batch_config(job))["data"]
    assert settings["HEADCT_BACKEND"] == "triton"
    service = one(docs, "Service", "headct-triton")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert settings["HEADCT_TRITON_URL"] == f"{service['metadata']['name']}:{ports['http']}"
    assert not unknown_settings(settings)
    validate_settings(settings, tmp_path)
    assert settings["HEADCT_MODEL_NAME"] in triton_model_names()

    merge = one(docs, "Job", "headct-batch-merge")
    merge_args = _container(merge, "merge")["args"]
    assert merge_args[:3] == ["headct", "batch", "merge"]
    assert merge_args[merge_args.index("--expect") + 1] == str(shards)
    _parses(merge_args)

    def claims(pod_owner: dict[str, Any], name: str) -> dict[str, str]:
        volumes = {v["name"]: v for v in _pod(pod_owner)["volumes"]}
        mounts = _container(pod_owner, name)["volumeMounts"]
        return {
            m["mountPath"]: volumes[m["name"]]["persistentVolumeClaim"]["claimName"]
            for m in mounts
            if "persistentVolumeClaim" in volumes[m["name"]]
        }

    scoring, merging = claims(job, "batch"), claims(merge, "merge")
    assert scoring["/results"] == merging["/results"]
    results = one(docs, "PersistentVolumeClaim", scoring["/results"])
    assert results["spec"]["accessModes"] == ["ReadWriteMany"], "shards on several nodes write"
    archive = one(docs, "PersistentVolumeClaim", scoring["/archive"])
    assert archive["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert settings["BATCH_SOURCE"] == "/archive"


def _batch_config(job: dict[str, Any]) -> str:
    (ref,) = [e["configMapRef"]["name"] for e in _container(job, "batch")["envFrom"]]
    return str(ref)
