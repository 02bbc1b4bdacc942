"""Every metric name that the dashboard, the Prometheus rules and the autoscaler read is one that
something really exports: the gateway or Triton (collected here from a running gateway and the
bundled Triton server), a recording rule of ours, Prometheus itself, or one of the short,
commented allow-lists of names that cannot appear on this machine (GPU metrics of Triton's GPU
build, kube-state-metrics). Label matchers are checked against the labels the servers export, and
label values against the gateway's own vocabularies."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from service.api.problems import ERROR_CODES
from service.findings import TriagePriority
from service.schemas import Timing
from tests.deploy.exported_metrics import Exported
from tests.deploy.promql import Selector, selectors

# Series Prometheus makes itself: `up` per scrape target, ALERTS per pending/firing alert.
PROMETHEUS_SERIES = {"up": {"job", "instance"}, "ALERTS": {"alertname", "alertstate", "severity"}}
# Triton exports these only when built with GPU support and running on a GPU (DCGM); the bundled
# CPU server here has none. Names and labels from Triton's metrics documentation
# (docs/user_guide/metrics.md, "GPU Metrics").
TRITON_GPU_ONLY = {
    "nv_gpu_utilization": {"gpu_uuid"},
    "nv_gpu_memory_used_bytes": {"gpu_uuid"},
    "nv_gpu_memory_total_bytes": {"gpu_uuid"},
    "nv_gpu_power_usage": {"gpu_uuid"},
    "nv_gpu_power_limit": {"gpu_uuid"},
}
# kube-state-metrics, part of kube-prometheus: only in a cluster.
KUBE_STATE_METRICS = {"kube_pod_status_ready": {"namespace", "pod", "condition"}}
ALLOW_LISTED = {**PROMETHEUS_SERIES, **TRITON_GPU_ONLY, **KUBE_STATE_METRICS}
# Labels the scrape adds to every series (compose: job, instance; the Prometheus Operator also
# namespace, pod, service, endpoint, container).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}


def _rule_exprs(rule_groups: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for group in rule_groups:
        for rule in group["rules"]:
            yield f"rule {rule.get('record') or rule.get('alert')}", rule["expr"]


def _dashboard_exprs(dashboards: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for file, dashboard in dashboards.items():
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                yield f"{file} panel {panel['title']!r}", target["expr"]
        for annotation in dashboard["annotations"]["list"]:
            if "expr" in annotation:
                yield f"{file} annotation {annotation['name']!r}", annotation["expr"]


def _adapter_exprs(adapter_values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for rule in adapter_values["rules"]["custom"]:
        yield "prometheus-adapter seriesQuery", rule["seriesQuery"]


def _error_codes() -> set[str]:
    """The problem codes of the gateway's error table (its second column)."""
    rows = [line.split("|") for line in ERROR_CODES.splitlines() if line.startswith("| ")]
    return {
        match.group()
        for row in rows[1:]
        for entry in row[2].split(",")
        if (match := re.match(r"[a-z_]+", entry.strip()))
    }


def _recorded(rule_groups: list[dict[str, Any]]) -> set[str]:
    return {rule["record"] for group in rule_groups for rule in group["rules"] if "record" in rule}


@pytest.fixture(scope="session")
def uses(
    rule_groups: list[dict[str, Any]],
    dashboards: dict[str, dict[str, Any]],
    adapter_values: dict[str, Any],
) -> list[tuple[str, Selector]]:
    """(where, selector) for every selector in the rules, dashboards and autoscaling config."""
    exprs = [
        *_rule_exprs(rule_groups),
        *_dashboard_exprs(dashboards),
        *_adapter_exprs(adapter_values),
    ]
    return [(where, selector) for where, expr in exprs for selector in selectors(expr)]


def test_the_servers_export_what_the_monitoring_is_built_on(
    gateway_exported: Exported, triton_exported: Exported
) -> None:
    assert {
        "headct_requests_total",
        "headct_stage_duration_seconds_bucket",
        "headct_triage_priority_total",
        "headct_finding_positive_total",
        "headct_expert_weight_sum",
        "headct_expert_weight_count",
        "headct_expert_reference_weight",
        "headct_inflight_requests",
        "headct_rejections_total",
    } <= set(gateway_exported)
    assert {
        "nv_inference_request_success",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_pending_request_count",
    } <= set(triton_exported)
    assert triton_exported["nv_inference_queue_duration_us"] == {"model", "version"}


def test_every_metric_used_is_exported(
    uses: list[tuple[str, Selector]],
    rule_groups: list[dict[str, Any]],
    gateway_exported: Exported,
    triton_exported: Exported,
) -> None:
    known = set(gateway_exported) | set(triton_exported) | _recorded(rule_groups)
    unknown = sorted(
        {(s.name, where) for where, s in uses if s.name not in known | set(ALLOW_LISTED)}
    )
    assert not unknown, "\n".join(f"{name} (in {where})" for name, where in unknown)
    assert len({s.name for _, s in uses}) > 20


def test_allow_listed_names_are_needed_and_not_exported_here(
    uses: list[tuple[str, Selector]], gateway_exported: Exported, triton_exported: Exported
) -> None:
    used = {s.name for _, s in uses}
    assert not set(ALLOW_LISTED) - used, f"unused allow-list entries: {set(ALLOW_LISTED) - used}"
    measurable = set(ALLOW_LISTED) & (set(gateway_exported) | set(triton_exported))
    assert not measurable, f"exported here, so take them off the allow-list: {measurable}"


def test_label_matchers_name_labels_the_metric_has(
    uses: list[tuple[str, Selector]], gateway_exported: Exported, triton_exported: Exported
) -> None:
    labels_of: dict[str, frozenset[str] | set[str] | None] = {
        **gateway_exported,
        **triton_exported,
        **ALLOW_LISTED,
    }
    wrong = []
    for where, selector in uses:
        labels = labels_of.get(selector.name)
        if labels is None:  # a recording rule, or a family without samples
            continue
        for label, _, _ in selector.matchers:
            if label not in labels | TARGET_LABELS | {"__name__"}:
                wrong.append(f"{selector.name}{{{label}}} in {where}")
    assert not wrong, "\n".join(wrong)


def test_label_values_are_the_gateways_own(
    uses: list[tuple[str, Selector]], rule_groups: list[dict[str, Any]]
) -> None:
    vocabularies = {
        "stage": set(Timing.model_fields),
        "priority": {p.value for p in TriagePriority},
        "reason": _error_codes(),
        "route": {"/v1/triage", "/v1/model", "/healthz", "/readyz", "/metrics"},
    }
    for where, selector in uses:
        for label, vocabulary in vocabularies.items():
            for value in selector.equal_values(label):
                assert value in vocabulary, f"{label}={value!r} in {where}"
    objectives = {
        rule["labels"]["stage"]
        for group in rule_groups
        for rule in group["rules"]
        if rule.get("record") == "headct:stage_latency_objective_seconds"
    }
    assert objectives == vocabularies["stage"], "one latency objective per stage"


def test_autoscaler_metrics_come_from_recording_rules(
    manifests: dict[str, list[dict[str, Any]]],
    adapter_values: dict[str, Any],
    rule_groups: list[dict[str, Any]],
) -> None:
    """HPA custom metric <- prometheus-adapter rule <- recording rule <- exported metrics."""
    served = {}
    for rule in adapter_values["rules"]["custom"]:
        (series,) = selectors(rule["seriesQuery"])
        assert series.name in _recorded(rule_groups), series.name
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
        name = re.sub(
            rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), series.name
        )
        served[name] = series.name
    for overlay, docs in manifests.items():
        for hpa in [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]:
            for metric in hpa["spec"]["metrics"]:
                if metric["type"] == "Resource":
                    continue
                name = metric[metric["type"].lower()]["metric"]["name"]
                assert name in served, f"{overlay}: the HPA's {name} is served by no adapter rule"
