"""POST /v1/triage end to end over HTTP, against ingest + onnxruntime run in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from service.backends.onnx import OnnxBackend
from service.findings import FINDING_CODES, FINDINGS, triage_drivers, triage_priority
from service.ingest import ingest_study
from service.model_card import CARD_FILENAME, CardPriorityScore, ModelCard
from testing.onnx_fixture import FixtureModel, build_graph, fixture_card
from testing.studies import multipart_files, write_synthetic_study, zip_bytes
from tests.service.conftest import SLICES

STAGES = {"upload", "queue", "read", "select", "resample", "inference", "postprocess", "total"}


def _in_process(fixture_model: FixtureModel, files: list[Path]) -> dict[str, np.ndarray]:
    backend = OnnxBackend(fixture_model.repository / "headct_molre", intra_op_threads=1)
    ingest = ingest_study(files, grid=fixture_model.card.grid.to_model_grid())
    outputs = backend.infer(ingest.volume.hu[None])
    return {
        "probabilities": outputs.probabilities[0],
        "router": outputs.router_weights[0],
        "slice_router": outputs.slice_router_weights[0],
        "attention": outputs.slice_attention[0],
        "evidence": outputs.slice_evidence[0],
        "study_uid": np.array(ingest.study_uid),
        "series_uid": np.array(ingest.series_uid),
    }


def logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return float(np.log(p / (1 - p)))


def _probabilities(body: dict[str, Any]) -> np.ndarray:
    return np.array([f["probability"] for f in body["findings"]])


def test_multipart_result_equals_in_process(
    client: TestClient, study: list[Path], fixture_model: FixtureModel
) -> None:
    response = client.post("/v1/triage", files=multipart_files(study))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = _in_process(fixture_model, study)
    card = fixture_model.card

    assert body["study_uid"] == str(expected["study_uid"])
    assert body["series_uid"] == str(expected["series_uid"])
    assert body["model"] == {"name": card.name, "version": card.version}
    np.testing.assert_allclose(_probabilities(body), expected["probabilities"], atol=1e-6)
    np.testing.assert_allclose(body["router"]["study_weights"], expected["router"], atol=1e-6)
    np.testing.assert_allclose(body["router"]["slice_weights"], expected["slice_router"], atol=1e-6)
    np.testing.assert_allclose(body["slices"]["attention"], expected["attention"], atol=1e-6)

    assert [f["code"] for f in body["findings"]] == list(FINDING_CODES)
    for finding, card_finding in zip(body["findings"], card.findings, strict=True):
        assert finding["threshold"] == card_finding.threshold
        assert finding["positive"] == (finding["probability"] >= card_finding.threshold)
        assert finding["critical"] == card_finding.critical
        assert finding["name"] == card_finding.name
    positives = [f["code"] for f in body["findings"] if f["positive"]]
    priority = triage_priority(positives).value
    assert body["triage"] == {
        "priority": priority,
        "findings": triage_drivers(positives),
        "basis": None if priority == "routine" else "findings",  # the card has no scores
    }
    assert body["router"]["experts"] == card.adapter.experts
    slices = body["slices"]
    assert slices["count"] == card.grid.depth

    # The key finding is the triage finding furthest above its threshold (in logits), and the
    # key slice holds the most of its evidence.
    def margin(f: dict[str, Any]) -> float:
        return float(logit(f["probability"]) - logit(f["threshold"]))

    drivers = body["triage"]["findings"]
    pool = (
        [f for f in body["findings"] if f["code"] in drivers]
        or [f for f in body["findings"] if f["positive"]]
        or body["findings"]
    )
    shown = max(pool, key=margin)
    column = list(FINDING_CODES).index(shown["code"])
    assert slices["key_finding"] == shown["code"]
    np.testing.assert_allclose(slices["evidence"], expected["evidence"][:, column], atol=1e-6)
    assert slices["key_slice"] == int(np.argmax(expected["evidence"][:, column]))
    assert slices["source_count"] == SLICES
    assert 0 <= slices["key_source_index"] < SLICES
    assert slices["key_sop_instance_uid"]
    assert set(body["timing_ms"]) == STAGES
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0
    assert body["disclaimer"] == card.intended_use
    assert response.headers["x-request-id"]


def test_zip_upload_and_raw_zip_give_the_same_result(client: TestClient, study: list[Path]) -> None:
    reference = client.post("/v1/triage", files=multipart_files(study)).json()
    archive = zip_bytes(study)
    as_part = client.post(
        "/v1/triage", files=[("files", ("study.zip", archive, "application/zip"))]
    )
    raw = client.post("/v1/triage", content=archive, headers={"Content-Type": "application/zip"})
    for response in (as_part, raw):
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(_probabilities(response.json()), _probabilities(reference))


@pytest.mark.parametrize("memory_bytes", [50_000, 8 * 2**20])
def test_memory_spool_gives_the_same_result(
    make_client: Callable[..., TestClient],
    client: TestClient,
    study: list[Path],
    upload_dir: Path,
    memory_bytes: int,
) -> None:
    """Part in memory, the rest rolled over to disk mid-part (50 kB), or all in memory (8 MiB)."""
    reference = client.post("/v1/triage", files=multipart_files(study)).json()
    spooled = make_client(spool_memory_bytes=memory_bytes)
    response = spooled.post("/v1/triage", files=multipart_files(study))
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(_probabilities(response.json()), _probabilities(reference))
    archive = zip_bytes(study)
    raw = spooled.post("/v1/triage", content=archive, headers={"Content-Type": "application/zip"})
    np.testing.assert_array_equal(_probabilities(raw.json()), _probabilities(reference))
    assert list(upload_dir.iterdir()) == []


def test_raw_dicom_body_is_one_file(client: TestClient, study: list[Path]) -> None:
    response = client.post(
        "/v1/triage", content=study[0].read_bytes(), headers={"Content-Type": "application/dicom"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "too_few_slices"


def test_different_studies_differ(
    client: TestClient, study: list[Path], other_study: list[Path]
) -> None:
    a = client.post("/v1/triage", files=multipart_files(study)).json()
    b = client.post("/v1/triage", files=multipart_files(other_study)).json()
    assert np.abs(_probabilities(a) - _probabilities(b)).max() > 1e-3
    assert a["study_uid"] != b["study_uid"]


@pytest.mark.parametrize(
    ("compression", "order"),
    [("none", "shuffled"), ("none", "descending"), ("rle", "shuffled"), ("jpeg2000", "ascending")],
)
def test_order_and_compression_invariance(
    client: TestClient, study: list[Path], study_root: Path, compression: str, order: str
) -> None:
    variant = write_synthetic_study(
        study_root / f"{compression}-{order}",
        seed=0,
        slices=SLICES,
        compression=compression,
        slice_order=order,
    )
    reference = client.post("/v1/triage", files=multipart_files(study)).json()
    response = client.post("/v1/triage", files=multipart_files(variant))
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_allclose(_probabilities(body), _probabilities(reference), atol=1e-5)
    np.testing.assert_allclose(
        body["slices"]["attention"], reference["slices"]["attention"], atol=1e-5
    )
    np.testing.assert_allclose(
        body["router"]["study_weights"], reference["router"]["study_weights"], atol=1e-5
    )


def test_model_card_endpoint(client: TestClient, fixture_model: FixtureModel) -> None:
    response = client.get("/v1/model")
    assert response.status_code == 200
    assert response.json() == fixture_model.card.model_dump(mode="json")


def test_probes(client: TestClient, fixture_model: FixtureModel) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert ready.json()["model"] == {"name": "headct_molre", "version": 1}


def test_request_id_is_honoured_or_made(client: TestClient) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    made = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert made.headers["x-request-id"] != "bad id\twith spaces"
    assert len(made.headers["x-request-id"]) == 32


def test_openapi_documents_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    triage = schema["paths"]["/v1/triage"]["post"]
    assert set(triage["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/zip",
        "application/dicom",
    }
    assert {"200", "400", "413", "415", "422", "429", "503", "504"} <= set(triage["responses"])
    example = schema["components"]["schemas"]["TriageResult"]["examples"][0]
    assert len(example["findings"]) == 75
    assert {"/v1/model", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])


def _scored_repository(root: Path, bias: float) -> ModelCard:
    """The fixture model with no finding ever positive (every threshold 1) and a critical study
    score that sums the critical findings' logits, plus ``bias``, against a threshold of 0."""
    base = fixture_card(depth=8, height=64, width=64, experts=4)
    score = CardPriorityScore(
        level="critical",
        weights=[1.0 if f.critical else 0.0 for f in FINDINGS],
        center=[0.0] * len(FINDINGS),
        bias=bias,
        threshold=0.0,
        fitted_on="a test",
    )
    card = ModelCard.model_validate(
        base.model_dump()
        | {
            "findings": [f.model_dump() | {"threshold": 1.0} for f in base.findings],
            "priority_scores": [score.model_dump()],
        }
    )
    folder = root / card.name / str(card.version)
    folder.mkdir(parents=True)
    onnx.save(build_graph(card), folder / "model.onnx")
    (folder / CARD_FILENAME).write_text(card.to_json())
    return card


@pytest.mark.parametrize("bias", [1000.0, -1000.0])
def test_the_cards_study_score_sets_the_priority(
    tmp_path: Path, make_client: Callable[..., TestClient], study: list[Path], bias: float
) -> None:
    card = _scored_repository(tmp_path / "repository", bias)
    client = make_client(model_repository=tmp_path / "repository")
    assert client.get("/v1/model").json()["priority_scores"][0]["level"] == "critical"
    body = client.post("/v1/triage", files=multipart_files(study)).json()
    assert not any(f["positive"] for f in body["findings"])
    if bias < 0:
        assert body["triage"] == {"priority": "routine", "findings": [], "basis": None}
        return
    # Critical by the score alone: the driver is the critical finding that adds the most to the
    # score, here the most probable one, and the key slice shows it.
    critical = [f for f in body["findings"] if f["critical"]]
    nearest = max(critical, key=lambda f: f["probability"])["code"]
    assert card.priority_scores is not None
    assert body["triage"] == {"priority": "critical", "findings": [nearest], "basis": "study_score"}
    assert body["slices"]["key_finding"] == nearest


def test_a_slice_head_model_shows_its_highest_scoring_slice(
    tmp_path: Path, make_client: Callable[..., TestClient], study: list[Path]
) -> None:
    """A card with ``adapter.slice_head``: the model's sixth output, SLICE_SCORES, chooses the
    key slice (the evidence still travels beside it)."""
    base = fixture_card(depth=8, height=64, width=64, experts=4)
    card = ModelCard.model_validate(
        base.model_dump() | {"adapter": base.adapter.model_dump() | {"slice_head": True}}
    )
    folder = tmp_path / "repository" / card.name / str(card.version)
    folder.mkdir(parents=True)
    onnx.save(build_graph(card), folder / "model.onnx")
    (folder / CARD_FILENAME).write_text(card.to_json())
    backend = OnnxBackend(tmp_path / "repository" / card.name, intra_op_threads=1)
    ingest = ingest_study(study, grid=card.grid.to_model_grid())
    outputs = backend.infer(ingest.volume.hu[None])
    assert outputs.slice_scores is not None and outputs.slice_scores.shape == (1, 8, 75)

    client = make_client(model_repository=tmp_path / "repository")
    slices = client.post("/v1/triage", files=multipart_files(study)).json()["slices"]
    column = list(FINDING_CODES).index(slices["key_finding"])
    scores = outputs.slice_scores[0][:, column]
    np.testing.assert_allclose(slices["scores"], scores, atol=1e-5)
    np.testing.assert_allclose(slices["evidence"], outputs.slice_evidence[0][:, column], atol=1e-5)
    assert slices["key_slice"] == int(np.argmax(scores))
    # The fixture's scores and evidence disagree here, so the test tells the two rules apart.
    assert slices["key_slice"] != int(np.argmax(outputs.slice_evidence[0][:, column]))
