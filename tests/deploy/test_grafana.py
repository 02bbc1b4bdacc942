"""The Grafana dashboard: it loads, every panel queries the provisioned Prometheus through the
datasource variable, the layout fits the grid, and it shows what issue 6 asks for."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.promql import metric_names

DASHBOARD = "headct-triage.json"
# Panel content the dashboard must have: a metric name each topic's queries read.
TOPICS = {
    "request rate": "headct_requests_total",
    "errors by reason": "headct_rejections_total",
    "latency by stage": "headct_stage_duration_seconds_bucket",
    "latency objective": "headct:stage_latency_objective_seconds",
    "triage priorities": "headct_triage_priority_total",
    "positives per finding": "headct_finding_positive_total",
    "expert usage": "expert:headct_expert_weight:mean1h",
    "expert reference": "expert:headct_expert_reference_weight:max",
    "Triton queue time": "nv_inference_queue_duration_us",
    "Triton compute time": "nv_inference_compute_infer_duration_us",
    "GPU use": "nv_gpu_utilization",
}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


@pytest.fixture
def dashboard(dashboards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return dashboards[DASHBOARD]


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "headct-triage"
    assert dashboard["title"]
    assert "not for clinical use" in dashboard["description"]
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )


def test_every_panel_queries_prometheus(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_dashboard_shows_what_the_issue_asks(dashboard: dict[str, Any]) -> None:
    used = {
        name
        for panel in _panels(dashboard)
        for target in panel["targets"]
        for name in metric_names(target["expr"])
    }
    missing = {topic: name for topic, name in TOPICS.items() if name not in used}
    assert not missing, missing
