"""Metrics exposition and JSON logs: they parse, they move after a request, they hold no PHI."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.log_config import configure_logging
from testing.onnx_fixture import FixtureModel
from testing.studies import multipart_files
from tests.service.conftest import PATIENT


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_parse_and_move(
    client: TestClient, study: list[Path], fixture_model: FixtureModel
) -> None:
    before = _samples(client.get("/metrics").text)
    response = client.post("/v1/triage", files=multipart_files(study))
    assert response.status_code == 200
    body = response.json()
    after = _samples(client.get("/metrics").text)
    card = fixture_model.card

    key = ("headct_requests_total", (("route", "/v1/triage"), ("status", "200")))
    assert after[key] == before.get(key, 0) + 1
    for stage in body["timing_ms"]:
        assert after[("headct_stage_duration_seconds_count", (("stage", stage),))] == 1
    assert after[("headct_study_slices_count", ())] == 1
    priority = body["triage"]["priority"]
    assert after[("headct_triage_priority_total", (("priority", priority),))] == 1
    for finding in body["findings"]:
        value = after[("headct_finding_positive_total", (("finding", finding["code"]),))]
        assert value == (1 if finding["positive"] else 0)
    for expert, reference in enumerate(card.router_reference):
        assert after[("headct_expert_weight_count", (("expert", str(expert)),))] == 1
        assert after[("headct_expert_reference_weight", (("expert", str(expert)),))] == reference
    info = [k for k in after if k[0] == "headct_model_info"]
    assert dict(info[0][1]) == {
        "name": card.name,
        "version": str(card.version),
        "backbone": card.backbone.name,
        "adapter": card.adapter.kind,
        "backend": "onnx",
    }
    assert after[("headct_inflight_requests", ())] == 0
    text = client.get("/metrics").text
    assert body["study_uid"] not in text and body["series_uid"] not in text


def test_each_app_has_its_own_registry(
    make_client: Callable[..., TestClient], study: list[Path]
) -> None:
    first, second = make_client(), make_client()
    first.post("/v1/triage", files=multipart_files(study))
    key = ("headct_requests_total", (("route", "/v1/triage"), ("status", "200")))
    assert _samples(first.get("/metrics").text)[key] == 1
    assert key not in _samples(second.get("/metrics").text)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", json_lines=True, stream=stream)
    yield stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "stream", None) is stream:
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def test_logs_and_metrics_hold_no_phi(
    client: TestClient,
    phi_study: list[Path],
    json_log: io.StringIO,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    ok = client.post("/v1/triage", files=multipart_files(phi_study), headers={"X-Request-ID": "r1"})
    assert ok.status_code == 200
    # a refused study whose file names carry the patient's name too
    named = [
        ("files", (f"{PATIENT.name}_{i}.dcm", p.read_bytes(), "application/dicom"))
        for i, p in enumerate(phi_study[:3])
    ]
    refused = client.post("/v1/triage", files=named)
    assert refused.status_code == 422
    broken = client.post(
        "/v1/triage", files=[("files", (f"{PATIENT.patient_id}.dcm", b"junk", "x/y"))]
    )
    assert broken.status_code == 400

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    access = [e for e in lines if e["message"] == "request" and e.get("request_id") == "r1"]
    assert access and access[0]["status"] == 200 and access[0]["route"] == "/v1/triage"
    assert any(e.get("code") == "too_few_slices" for e in lines)

    captured = [
        json_log.getvalue(),
        caplog.text,
        *(json.dumps(vars(r), default=str) for r in caplog.records),
        client.get("/metrics").text,
    ]
    for secret in (PATIENT.name, PATIENT.name.replace("^", " "), PATIENT.patient_id,
                   PATIENT.birth_date):  # fmt: skip
        for text in captured:
            assert secret not in text
