"""Training data: a folder of DICOM studies plus ``labels.csv``, ingested once into a cache.

``labels.csv`` has a ``study_uid`` column, then one column per finding code (``1``, ``0``, or blank
for unknown: masked out of the loss). Optional columns: ``path`` (the study's folder or zip,
relative to the data folder; default ``<study_uid>/``) and ``patient_id`` (keeps a patient's
studies on one side of the train/validation split; without it the DICOM PatientID is used, hashed,
never stored in clear).

Every study goes through the service's own ingest (``service.ingest.ingest_study``), so training
sees exactly the volumes the gateway will send to the model. The cache stores one INT16 ``.npy`` per
study on the model grid, keyed by the study's files (names, sizes, modification times) and the
grid, so a changed study or grid is ingested again and nothing else is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.errors import IngestError
from service.evaluation import read_label_rows
from service.ingest import IngestResult, ingest_study
from service.preprocess import ModelGrid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    path: Path
    labels: np.ndarray  # float32 [75]: 1, 0 or NaN (unknown)
    patient_key: str  # explicit patient id, hashed DICOM PatientID, or the study uid


@dataclass(frozen=True)
class CachedStudy:
    record: StudyRecord
    volume_path: Path


def read_labels(data_dir: Path) -> list[StudyRecord]:
    """Parse ``data_dir/labels.csv`` (``service.evaluation.read_label_rows``)."""
    return [
        StudyRecord(uid, data_dir / (row.get("path") or uid), labels, row.get("patient_id") or "")
        for uid, row, labels in read_label_rows(data_dir / "labels.csv")
    ]


def _fingerprint(study: Path, grid: ModelGrid) -> str:
    digest = hashlib.sha256(json.dumps(asdict(grid)).encode())
    files = [study] if study.is_file() else sorted(p for p in study.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        digest.update(
            f"{file.relative_to(study.parent)}:{stat.st_size}:{stat.st_mtime_ns}".encode()
        )
    return digest.hexdigest()[:24]


def _patient_key(record: StudyRecord, result: IngestResult) -> str:
    """The explicit patient id, else the DICOM PatientID hashed (never stored in clear)."""
    if record.patient_key:
        return record.patient_key
    patient = str(result.stack.slices[0].dataset.get("PatientID") or "")
    if patient:
        return "pid-" + hashlib.sha256(patient.encode()).hexdigest()[:16]
    return "study-" + record.study_uid


def build_cache(
    records: Sequence[StudyRecord], cache_dir: Path, grid: ModelGrid
) -> tuple[list[CachedStudy], dict[str, str]]:
    """Ingest every study not already cached. Returns the cached studies and, for studies that
    could not be ingested, their error codes (they are left out of training, and reported)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached: list[CachedStudy] = []
    failures: dict[str, str] = {}
    for record in records:
        if not record.path.exists():
            failures[record.study_uid] = "missing_study_folder"
            continue
        key = _fingerprint(record.path, grid)
        volume_path = cache_dir / f"{key}.npy"
        meta_path = cache_dir / f"{key}.json"
        if not volume_path.exists():
            try:
                result = ingest_study([record.path], grid=grid)
            except IngestError as exc:
                failures[record.study_uid] = exc.code
                log.warning("study %s skipped: %s", record.study_uid, exc.code)
                continue
            np.save(volume_path, result.volume.hu)
            meta = {"study_uid": record.study_uid, "patient_key": _patient_key(record, result)}
            meta_path.write_text(json.dumps(meta))
        meta = json.loads(meta_path.read_text())
        record = StudyRecord(record.study_uid, record.path, record.labels, meta["patient_key"])
        cached.append(CachedStudy(record, volume_path))
    return cached, failures


def split_by_patient(
    studies: Sequence[CachedStudy], validation_fraction: float, seed: int
) -> tuple[list[CachedStudy], list[CachedStudy]]:
    """Train/validation split by patient: no patient has studies on both sides."""
    if not 0 < validation_fraction < 1:
        raise ValueError("validation_fraction must be between 0 and 1")
    patients = sorted({s.record.patient_key for s in studies})
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n_validation = max(1, math.floor(len(patients) * validation_fraction))
    if n_validation >= len(patients):
        raise ValueError(f"{len(patients)} patients are too few to split off a validation set")
    held_out = set(patients[:n_validation])
    train = [s for s in studies if s.record.patient_key not in held_out]
    validation = [s for s in studies if s.record.patient_key in held_out]
    return train, validation


def positive_weights(studies: Sequence[CachedStudy], cap: float = 20.0) -> np.ndarray:
    """Per-finding negatives/positives over known labels, capped: rare findings weigh more."""
    labels = np.stack([s.record.labels for s in studies])
    positives = np.nansum(labels, axis=0)
    known = np.sum(~np.isnan(labels), axis=0)
    ratio = (known - positives) / np.maximum(positives, 1.0)
    return np.clip(ratio, 1.0, cap).astype(np.float32)
