"""A synthetic study triaged by the shipped demo model: the input of the PACS output tests.

The real pipeline (``service.pipeline.TriagePipeline``, embedded onnxruntime) runs on a study that
``synth`` writes, so the result, the card and the instances are what the listener will hand over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom

from service.backends.onnx import OnnxBackend
from service.model_card import ModelCard
from service.pipeline import TriagePipeline
from service.schemas import TriageResult
from service.settings import DEFAULT_MODEL_REPOSITORY
from testing.studies import Patient, write_synthetic_study


@dataclass(frozen=True)
class TriagedStudy:
    files: list[Path]
    evidence: list[pydicom.Dataset]  # the instances as read from their files
    result: TriageResult
    card: ModelCard

    def key_slice(self) -> pydicom.Dataset:
        uid = self.result.slices.key_sop_instance_uid
        return next(ds for ds in self.evidence if ds.SOPInstanceUID == uid)


def triage_synthetic_study(
    folder: Path, *, seed: int = 0, slices: int = 20, patient: Patient | None = None
) -> TriagedStudy:
    files = write_synthetic_study(folder, seed=seed, slices=slices, patient=patient)
    backend = OnnxBackend(DEFAULT_MODEL_REPOSITORY / "headct_molre", intra_op_threads=1)
    try:
        result = TriagePipeline(backend).run(files)
    finally:
        backend.close()
    return TriagedStudy(files, [pydicom.dcmread(p) for p in files], result, backend.card)
