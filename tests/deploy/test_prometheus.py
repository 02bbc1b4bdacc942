"""Prometheus: ``promtool`` accepts the config, the rules and every dashboard query, the rules'
unit tests pass (tests/deploy/rules_test.yml), both servers' expositions parse, and the
Kubernetes PrometheusRule carries exactly the rule files' groups."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import PROMETHEUS_CONFIG, REPO_ROOT, RULES_DIR, run
from tests.deploy.render_prometheusrule import PROMETHEUS_RULE, render

RULES_TEST = Path(__file__).resolve().parent / "rules_test.yml"
# What issue 6 asks the alerts to cover, by alert name.
REQUIRED_ALERTS = {
    "HeadCTTriageErrorRatioHigh",  # error ratio
    "HeadCTStageLatencyObjectiveMissed",  # latency objective per stage
    "TritonDown",
    "TritonModelNotLoaded",  # Triton up, model not ready
    "HeadCTTritonNotReady",  # the gateway finds Triton not ready
    "TritonQueueTimeGrowing",
    "HeadCTCriticalTriageSurge",
    "HeadCTExpertUsageDrift",
}
# Grafana's interval variables, replaced by durations so promtool can parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}


def _rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_config(promtool: str) -> None:
    result = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules(promtool: str) -> None:
    files = sorted(str(p) for p in RULES_DIR.glob("*.yml"))
    assert files
    result = run([promtool, "check", "rules", *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules(promtool: str) -> None:
    result = run([promtool, "test", "rules", str(RULES_TEST)])
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert {"HeadCTExpertUsageDrift", "HeadCTTriageErrorRatioHigh"} <= tested


def test_alerts_cover_the_issue_and_say_what_to_do(rule_groups: list[dict[str, Any]]) -> None:
    alerts = {rule["alert"]: rule for rule in _rules(rule_groups) if "alert" in rule}
    assert set(alerts) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert "for" in rule, f"{name} would fire on a single evaluation"


def test_recording_rules_for_the_autoscaler(rule_groups: list[dict[str, Any]]) -> None:
    (group,) = [g for g in rule_groups if g["name"] == "headct-autoscaling.recording"]
    for rule in group["rules"]:
        assert rule["record"].startswith("namespace_pod:")
        assert "by (namespace, pod)" in rule["expr"], "per-pod series for the custom metrics API"


def test_kubernetes_prometheus_rule_equals_the_rule_files(
    rule_groups: list[dict[str, Any]],
) -> None:
    assert PROMETHEUS_RULE.read_text() == render(), (
        "k8s/base/monitoring/prometheusrule.yaml is stale: "
        ".venv/bin/python -m tests.deploy.render_prometheusrule"
    )
    assert yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"] == rule_groups


def test_dashboard_queries_are_valid_promql(
    promtool: str, dashboards: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Every query of every dashboard, as a recording rule that promtool checks."""
    queries = [
        target["expr"]
        for dashboard in dashboards.values()
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ] + [
        annotation["expr"]
        for dashboard in dashboards.values()
        for annotation in dashboard["annotations"]["list"]
        if "expr" in annotation
    ]
    assert len(queries) > 10
    for variable, duration in GRAFANA_VARIABLES.items():
        queries = [q.replace(variable, duration) for q in queries]
    assert not [q for q in queries if "$" in q], "a Grafana variable promtool cannot parse"
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_expositions_parse_with_prometheus_own_parser(
    promtool: str, gateway_metrics_text: str, triton_metrics_text: str
) -> None:
    """promtool check metrics: exit 0 clean, 3 lint warnings only, 1 a parse error. The gateway is
    lint-clean; Triton's names break Prometheus naming conventions (``_us`` counters without
    ``_total``), which it owns."""
    gateway = run([promtool, "check", "metrics"], input=gateway_metrics_text)
    assert gateway.returncode == 0, gateway.stdout + gateway.stderr
    triton = run([promtool, "check", "metrics"], input=triton_metrics_text)
    assert triton.returncode in (0, 3), triton.stdout + triton.stderr


def test_rule_files_are_where_prometheus_loads_them() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    loaded = {p for pattern in config["rule_files"] for p in PROMETHEUS_CONFIG.parent.glob(pattern)}
    assert loaded == set(RULES_DIR.glob("*.yml"))
    assert RULES_DIR.relative_to(REPO_ROOT) == Path("docker/prometheus/rules")
