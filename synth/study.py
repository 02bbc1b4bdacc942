"""Synthetic head CT studies end to end: labels, anatomy, findings, image, DICOM, label files.

``generate_study`` makes one study in memory; ``write_study`` writes it as DICOM;
``synthesize`` writes a whole data set with ``labels.csv`` and ``annotations.json``, whose
``"synthetic": true`` marks the folder as phantoms (``is_synthetic``): training records it, so that
a model trained on the folder is exported as not for clinical use.

Random streams: the labels are drawn from the caller's generator, which then spawns separate
streams for anatomy, findings, noise and identifiers. So forcing a finding into a study changes
only that finding's voxels: the same seed gives the same head and the same noise.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from service.findings import FINDING_CODES
from synth.anatomy import sample_anatomy
from synth.canvas import Canvas
from synth.cooccurrence import sample_labels, to_codes
from synth.dicom_writer import write_dicom_study
from synth.geometry import Grid
from synth.imaging import form_image
from synth.lesions import draw_findings, make_plan
from synth.options import SynthOptions
from synth.phantom import render

ANNOTATIONS_FILENAME = "annotations.json"


@dataclass(frozen=True)
class SyntheticStudy:
    """One synthetic study: the main series' HU and its ground truth."""

    study_uid: str
    hu: np.ndarray  # float32 [D, H, W], slice 0 most inferior
    labels: np.ndarray  # uint8 [75], FINDING_CODES order
    lesion_slices: dict[str, list[int]]  # positive finding -> main-series slices showing it
    pixel_spacing_mm: float
    slice_thickness_mm: float


def generate_study(
    rng: np.random.Generator,
    options: SynthOptions = SynthOptions(),
    labels: np.ndarray | None = None,
) -> SyntheticStudy:
    """A study with labels sampled at realistic prevalences, or with exactly ``labels``."""
    if labels is None:
        labels = sample_labels(rng, options.prevalence_scale)
    else:
        labels = np.asarray(labels)
        if labels.shape != (len(FINDING_CODES),) or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"labels: need {len(FINDING_CODES)} values of 0 or 1")
        labels = labels.astype(np.uint8)
    anatomy_rng, lesion_rng, noise_rng, uid_rng = rng.spawn(4)
    spacing = options.spacing_mm
    anatomy = sample_anatomy(anatomy_rng, options.matrix * spacing)
    plan = make_plan(labels, anatomy, lesion_rng)
    grid = Grid(
        options.slices,
        options.matrix,
        spacing,
        anatomy.z_low + plan.coverage_shift_mm,
        anatomy.pose,
    )
    tissue, fields = render(grid, anatomy)
    canvas = Canvas(grid, anatomy, tissue, fields, labels, plan, lesion_rng)
    draw_findings(canvas, int(lesion_rng.integers(2**63)))
    hu = form_image(canvas.hu, canvas.noise_gain, anatomy.noise_sigma, noise_rng)
    lesion_slices = {
        code: sorted(canvas.slices.get(code, ()))
        for code in sorted(to_codes(labels), key=FINDING_CODES.index)
    }
    return SyntheticStudy(
        study_uid=str(generate_uid(entropy_srcs=[uid_rng.bytes(16).hex()])),
        hu=hu,
        labels=labels,
        lesion_slices=lesion_slices,
        pixel_spacing_mm=spacing,
        slice_thickness_mm=options.slice_thickness_mm,
    )


def write_study(
    study: SyntheticStudy, folder: Path, options: SynthOptions, rng: np.random.Generator
) -> list[Path]:
    """Write ``study`` as DICOM files into ``folder``; returns their paths in write order."""
    return write_dicom_study(
        study.study_uid,
        study.hu,
        study.labels,
        study.pixel_spacing_mm,
        study.slice_thickness_mm,
        Path(folder),
        options,
        rng,
    )


def synthesize(out: Path, studies: int, seed: int, options: SynthOptions = SynthOptions()) -> Path:
    """Write ``studies`` studies under ``out/<study_uid>/``, ``out/labels.csv`` and
    ``out/annotations.json``; returns the labels.csv path. The same seed writes the same data.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    annotations: dict[str, object] = {"synthetic": True, "options": asdict(options)}
    for index in range(studies):
        rng = np.random.default_rng([seed, index])
        study = generate_study(rng, options)
        write_study(study, out / study.study_uid, options, rng)
        rows.append([study.study_uid, *(str(int(v)) for v in study.labels)])
        annotations[study.study_uid] = study.lesion_slices
    labels_path = out / "labels.csv"
    with labels_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_uid", *FINDING_CODES])
        writer.writerows(rows)
    (out / ANNOTATIONS_FILENAME).write_text(json.dumps(annotations, indent=1) + "\n")
    return labels_path


def is_synthetic(folder: Path) -> bool:
    """Whether ``folder`` is a data set that ``synthesize`` wrote (its annotations say so)."""
    path = Path(folder) / ANNOTATIONS_FILENAME
    try:
        annotations = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read ({exc}): is this a headct synth folder?") from None
    return isinstance(annotations, dict) and annotations.get("synthetic") is True
