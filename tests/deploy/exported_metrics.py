"""The metric names that the real servers export, read off their ``/metrics``:

- the gateway (``service.app.create_app``, embedded backend on a small real ONNX model) after a
  triaged study, a refused upload and the probes, so every family has samples;
- the Triton server bundled in the ``nvidia-pytriton`` wheel (``testing/triton_local.py``) serving
  ``headct_molre_cpu`` (the python backend model) on the same model, after one inference.

Each maps a sample name (``headct_requests_total``, ``nv_inference_queue_duration_us``,
``headct_stage_duration_seconds_bucket``) to the label names its samples carry; ``None`` for a
family with no samples (its label names are unknown).
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np

Exported = dict[str, frozenset[str] | None]

# The sample names a family of each type exposes when it has no samples yet. A counter's TYPE line
# names its samples (prometheus_client: ``x_total``; Triton: ``nv_inference_count``).
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="(?:\\.|[^"\\])*"')


def parse_exposition(text: str) -> Exported:
    """Sample names as Prometheus stores them (the text format's names, verbatim: no client
    library's renaming, such as prometheus_client's parser adding ``_total`` to counters)."""
    names: dict[str, set[str]] = {}
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            typed[family] = kind
            continue
        match = _SAMPLE.match(line)
        if line.startswith("#") or match is None:
            continue
        names.setdefault(match.group(1), set()).update(_LABEL.findall(match.group(3) or ""))
    exported: Exported = {name: frozenset(labels) for name, labels in names.items()}
    for family, kind in typed.items():
        variants = [family + suffix for suffix in _SUFFIXES.get(kind, ("",))]
        if not any(v in names for v in variants):
            exported.update(dict.fromkeys(variants))
    return exported


def gateway_exposition(scratch: Path) -> str:
    """The gateway's ``/metrics`` after one triage (200), one refused upload (400) and probes."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from testing.onnx_fixture import write_fixture_repository
    from testing.studies import multipart_files, write_synthetic_study

    fixture = write_fixture_repository(scratch / "model_repository")
    study = write_synthetic_study(scratch / "study", seed=3, slices=20)
    uploads = scratch / "uploads"
    uploads.mkdir()
    settings = Settings(
        model_repository=fixture.repository,
        upload_dir=uploads,
        onnx_intra_op_threads=1,
        log_json=True,
    )
    with TestClient(create_app(settings, configure_logs=False)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        triaged = client.post("/v1/triage", files=multipart_files(study))
        assert triaged.status_code == 200, triaged.text
        refused = client.post(
            "/v1/triage", files=[("files", ("note.dcm", b"not dicom", "application/dicom"))]
        )
        assert refused.status_code == 400, refused.text
        response = client.get("/metrics")
        assert response.status_code == 200
        return response.text


def triton_exposition(scratch: Path) -> str:
    """Triton's ``/metrics`` (metrics port) with ``headct_molre_cpu`` loaded and run once."""
    import tritonclient.http as triton_http

    from service.contract import INPUT_NAME
    from testing.onnx_fixture import write_fixture_repository
    from testing.triton_local import triton_server
    from training.repository import publish

    fixture = write_fixture_repository(scratch / "fixture")
    staged = scratch / "staged"
    staged.mkdir()
    shutil.copy2(fixture.model_path, staged / "model.onnx")
    repository = scratch / "repository"
    publish(repository, fixture.card, staged)
    grid = fixture.card.grid
    with triton_server(repository, ["headct_molre_cpu"], log_dir=scratch) as server:
        client = triton_http.InferenceServerClient(server.http_url)
        try:
            volume = np.zeros((1, grid.depth, grid.height, grid.width), dtype=np.int16)
            tensor = triton_http.InferInput(INPUT_NAME, list(volume.shape), "INT16")
            tensor.set_data_from_numpy(volume, binary_data=True)
            client.infer("headct_molre_cpu", [tensor])
        finally:
            client.close()
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())
