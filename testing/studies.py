"""Synthetic head CT studies for the gateway tests, written with ``synth``.

The same ``seed`` gives the same anatomy whatever the compression or file order, so results can be
compared across encodings. ``with_patient`` stamps distinctive patient identifiers into every file
(for the no-PHI-in-logs test).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from synth import SynthOptions, generate_study, write_study


@dataclass(frozen=True)
class Patient:
    name: str
    patient_id: str
    birth_date: str


def write_synthetic_study(
    folder: Path,
    *,
    seed: int = 0,
    slices: int = 20,
    matrix: int = 64,
    compression: str = "none",
    slice_order: str = "ascending",
    extra_series: bool = False,
    patient: Patient | None = None,
) -> list[Path]:
    options = SynthOptions(
        slices=slices,
        matrix=matrix,
        compression=compression,
        slice_order=slice_order,
        extra_series=extra_series,
    )
    study = generate_study(np.random.default_rng(seed), options)
    files = write_study(study, folder, options, np.random.default_rng(seed + 1))
    if patient is not None:
        for path in files:
            with_patient(path, patient)
    return files


def with_patient(path: Path, patient: Patient) -> None:
    ds = pydicom.dcmread(path)
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.save_as(path)


def zip_bytes(files: list[Path], *, prefix: str = "study/") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, prefix + path.name)
    return buffer.getvalue()


def multipart_files(files: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/dicom")) for p in files]


def multipart_related(parts: list[bytes], boundary: str = "headct-boundary") -> tuple[bytes, str]:
    """A STOW-RS body of ``application/dicom`` parts, and its Content-Type."""
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'
