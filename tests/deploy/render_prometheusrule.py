"""Write ``k8s/base/monitoring/prometheusrule.yaml`` from ``docker/prometheus/rules/*.yml``.

The rule files are the one source: Prometheus in docker compose loads them as they are, and the
Prometheus Operator gets the same groups wrapped in a PrometheusRule. After editing a rule file:

    .venv/bin/python -m tests.deploy.render_prometheusrule

``test_prometheus.py`` fails while the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = REPO_ROOT / "docker" / "prometheus" / "rules"
PROMETHEUS_RULE = REPO_ROOT / "k8s" / "base" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from docker/prometheus/rules/*.yml by `python -m tests.deploy.render_prometheusrule`:
# edit those files, not this one (a test keeps them equal).
# kube-prometheus-stack loads PrometheusRules whose labels match its ruleSelector (by default
# release: <helm release name>): add that label in your overlay.
"""


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as they are written in the rule files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def rule_groups(rules_dir: Path = RULES_DIR) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted(rules_dir.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def render(rules_dir: Path = RULES_DIR) -> str:
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "headct-triage",
            "labels": {
                "app.kubernetes.io/name": "headct-triage",
                "app.kubernetes.io/component": "monitoring",
            },
        },
        "spec": {"groups": rule_groups(rules_dir)},
    }
    body = yaml.dump(resource, Dumper=_BlockDumper, sort_keys=False, width=100, allow_unicode=False)
    return HEADER + body


def main() -> int:
    PROMETHEUS_RULE.parent.mkdir(parents=True, exist_ok=True)
    PROMETHEUS_RULE.write_text(render())
    sys.stdout.write(f"wrote {PROMETHEUS_RULE.relative_to(REPO_ROOT)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
