"""The synthetic head CT generator: labels, anatomy, drawn findings, DICOM files, data sets."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from service.findings import FINDING_CODES, FINDING_INDEX
from synth import (
    FINDING_SIGNATURES,
    SyntheticStudy,
    SynthOptions,
    generate_study,
    synthesize,
    write_study,
)
from synth.cooccurrence import (
    EXTRA_AXIAL_COLLECTIONS,
    ICH_SUBTYPES,
    sample_labels,
    to_codes,
    violated_rules,
)
from synth.dicom_writer import Encoding

SMALL = SynthOptions(slices=16, matrix=192)  # 1.25 mm pixels: every small lesion still shows
TINY = SynthOptions(slices=8, matrix=64)


def only(*codes: str) -> np.ndarray:
    labels = np.zeros(len(FINDING_CODES), dtype=np.uint8)
    for code in codes:
        labels[FINDING_INDEX[code]] = 1
    return labels


def read_series(paths: list[Path]) -> dict[int, list[pydicom.Dataset]]:
    """Files grouped by SeriesNumber, each group sorted by InstanceNumber."""
    series: dict[int, list[pydicom.Dataset]] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        series.setdefault(int(ds.SeriesNumber), []).append(ds)
    return {k: sorted(v, key=lambda d: int(d.InstanceNumber)) for k, v in series.items()}


def to_hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture(scope="module")
def normal_small() -> SyntheticStudy:
    return generate_study(np.random.default_rng(123), SMALL, labels=only())


# --- labels ---------------------------------------------------------------------------------


def test_signatures_cover_every_finding() -> None:
    assert list(FINDING_SIGNATURES) == list(FINDING_CODES)
    assert all(text.endswith(".") and len(text) > 30 for text in FINDING_SIGNATURES.values())


def test_sampled_labels_follow_the_cooccurrence_rules() -> None:
    rng = np.random.default_rng(0)
    labels = np.stack([sample_labels(rng) for _ in range(400)])
    for row in labels:
        positive = to_codes(row)
        assert violated_rules(row) == []
        assert ("ich_any" in positive) == bool(positive & set(ICH_SUBTYPES))
        if positive & set(EXTRA_AXIAL_COLLECTIONS):
            assert "extra_axial_collection" in positive
        for herniation in ("subfalcine_herniation", "transtentorial_herniation"):
            if herniation in positive:
                assert "mass_effect" in positive
        if "hemorrhagic_transformation" in positive:
            assert positive & {"acute_territorial_infarct", "subacute_infarct"}
        if "acute_hydrocephalus" in positive:
            assert "ventriculomegaly" in positive
    ich = labels[:, FINDING_INDEX["ich_any"]].mean()
    normal = (labels.sum(axis=1) == 0).mean()
    assert 0.08 < ich < 0.30
    assert 0.25 < normal < 0.55
    assert labels.mean(axis=0).max() < 0.3  # no finding is common


def test_prevalence_scale_scales_positives() -> None:
    rng = np.random.default_rng(1)
    none = np.stack([sample_labels(rng, 0.0) for _ in range(50)])
    more = np.stack([sample_labels(rng, 3.0) for _ in range(200)])
    base = np.stack([sample_labels(rng, 1.0) for _ in range(200)])
    assert none.sum() == 0
    assert more.sum() > 1.8 * base.sum()


def test_forced_labels_are_validated() -> None:
    with pytest.raises(ValueError, match="labels"):
        generate_study(np.random.default_rng(0), TINY, labels=np.ones(3, dtype=np.uint8))


# --- anatomy and findings -------------------------------------------------------------------


def test_generation_is_deterministic() -> None:
    a = generate_study(np.random.default_rng(7), SMALL)
    b = generate_study(np.random.default_rng(7), SMALL)
    assert a.study_uid == b.study_uid
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.lesion_slices == b.lesion_slices
    c = generate_study(np.random.default_rng(8), SMALL)
    assert c.study_uid != a.study_uid and not np.array_equal(c.hu, a.hu)


def test_tissue_densities_are_those_of_a_head_ct() -> None:
    study = generate_study(np.random.default_rng(3), SynthOptions(), labels=only())
    hu = study.hu
    assert hu.dtype == np.float32 and hu.shape == (32, 256, 256)
    assert hu.min() >= -1024.0 and hu.max() <= 3071.0
    assert abs(float(np.median(hu[:, :12, :12])) + 1000.0) < 10.0  # air outside the head
    assert (hu > 700).sum() > 10_000  # skull
    assert (hu > 1200).any()  # cortical bone
    mid = hu[18, 96:160, 96:160]  # centre of a supratentorial slice
    assert 20.0 < float(np.median(mid)) < 45.0
    brain = mid[(mid > 15) & (mid < 60)]
    csf = hu[18][(hu[18] > -20) & (hu[18] < 12)]
    assert brain.size > 1000 and csf.size > 50  # ventricles and sulci
    noise = float(np.std(np.diff(hu[18, 120:136, 120:136], axis=1))) / np.sqrt(2)
    assert 1.0 < noise < 12.0
    lows = [hu[i][(hu[i] < -200) & (hu[i] > -990)].size for i in range(4, 10)]
    assert max(lows) > 50  # sinus and mastoid air at the skull base


@pytest.mark.parametrize("code", FINDING_CODES)
def test_each_finding_is_drawn_where_it_says(code: str, normal_small: SyntheticStudy) -> None:
    """Forcing one finding changes the image, only on the slices it reports (the head and the
    noise are the same for the same seed)."""
    study = generate_study(np.random.default_rng(123), SMALL, labels=only(code))
    assert list(study.lesion_slices) == [code]
    slices = study.lesion_slices[code]
    assert slices and all(0 <= i < SMALL.slices for i in slices)
    changed = np.abs(study.hu - normal_small.hu) > 1.0
    changed_slices = set(np.flatnonzero(changed.any(axis=(1, 2))).tolist())
    assert changed.sum() >= 10, "forced finding not visible"
    if code != "incomplete_coverage":  # moves the whole scan range
        assert changed_slices <= set(slices)


def test_sampled_studies_draw_every_positive_finding() -> None:
    rng = np.random.default_rng(11)
    for _ in range(4):
        study = generate_study(rng, SMALL, labels=None)
        assert set(study.lesion_slices) == to_codes(study.labels)
        assert all(study.lesion_slices.values())


def test_large_lesion_with_mass_effect_shifts_the_midline(normal_small: SyntheticStudy) -> None:
    labels = only("subdural_hematoma_acute", "mass_effect", "midline_shift", "ich_any")
    labels[FINDING_INDEX["extra_axial_collection"]] = 1
    study = generate_study(np.random.default_rng(123), SMALL, labels=labels)
    assert set(study.lesion_slices) == to_codes(labels)
    blood = (study.hu > 55) & (study.hu < 90) & (np.abs(normal_small.hu - study.hu) > 15)
    assert blood.sum() > 2000  # a thick crescent


def test_metal_saturates_and_streaks() -> None:
    study = generate_study(np.random.default_rng(5), SMALL, only("penetrating_foreign_body"))
    assert study.hu.max() > 3000


def test_generation_is_fast() -> None:
    generate_study(np.random.default_rng(0))
    start = time.perf_counter()
    generate_study(np.random.default_rng(1))
    assert time.perf_counter() - start < 1.0


def test_package_does_not_import_torch() -> None:
    code = "import sys, synth; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


# --- DICOM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "rle", "jpeg2000"])
@pytest.mark.parametrize("representation", ["unsigned", "signed"])
def test_dicom_round_trip(tmp_path: Path, compression: str, representation: str) -> None:
    options = SynthOptions(
        slices=6, matrix=64, compression=compression, pixel_representation=representation
    )
    rng = np.random.default_rng(21)
    study = generate_study(rng, options, labels=only("epidural_hematoma", "ich_any"))
    paths = write_study(study, tmp_path, options, rng)
    assert [p.name for p in paths] == [f"{i:04d}.dcm" for i in range(1, 7)]
    series = read_series(paths)
    assert list(series) == [2]
    files = series[2]
    syntax = {"none": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg2000": JPEG2000Lossless}
    z = [float(ds.ImagePositionPatient[2]) for ds in files]
    assert z == sorted(z) and np.allclose(np.diff(z), options.slice_thickness_mm)
    for ds, truth in zip(files, study.hu, strict=True):
        assert ds.file_meta.TransferSyntaxUID == syntax[compression]
        assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "CT" and ds.StudyInstanceUID == study.study_uid
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.PixelSpacing[0]) == pytest.approx(study.pixel_spacing_mm)
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 5.0
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 16
        assert ds.PixelRepresentation == (representation == "signed")
        assert ds.BitsStored == (16 if representation == "signed" else 12)
        assert ds.RescaleType == "HU" and (float(ds.WindowCenter), float(ds.WindowWidth)) == (
            40.0,
            80.0,
        )
        assert str(ds.PatientName).startswith("SYNTHETIC^PHANTOM")
        assert ds.Manufacturer == "headct-triage synthetic"
        assert "SYNTHETIC" in ds.StudyDescription and "SYNTHETIC" in ds.SeriesDescription
        assert ds.PatientID and ds.PatientBirthDate and ds.PatientSex in ("M", "F")
        assert ds.AccessionNumber and ds.StudyDate and ds.StudyTime and ds.KVP
        np.testing.assert_allclose(to_hu(ds), truth, atol=0.5 + 1e-3)


@pytest.mark.parametrize(
    "encoding",
    [
        Encoding(False, 1.0, -1024.0),
        Encoding(True, 1.0, 0.0),
        Encoding(True, 1.0, -1000.0),
        Encoding(True, 0.5, -1024.0),
    ],
)
def test_every_rescale_is_lossless_within_rounding(encoding: Encoding) -> None:
    hu = np.random.default_rng(0).uniform(-1024.0, 3071.0, 10_000).astype(np.float32)
    back = encoding.to_stored(hu) * encoding.slope + encoding.intercept
    assert np.abs(back - hu).max() <= 0.5 + 1e-4


def test_slice_order_changes_file_order_not_instances(tmp_path: Path) -> None:
    written = {}
    for order in ("ascending", "descending", "shuffled"):
        options = SynthOptions(slices=10, matrix=64, slice_order=order)
        rng = np.random.default_rng(4)
        study = generate_study(rng, options)
        paths = write_study(study, tmp_path / order, options, rng)
        datasets = [pydicom.dcmread(p) for p in paths]
        written[order] = datasets
        numbers = [int(ds.InstanceNumber) for ds in datasets]
        assert sorted(numbers) == list(range(1, 11))
        for ds in datasets:  # instance numbers stay anatomical: 1 is the lowest slice
            np.testing.assert_allclose(to_hu(ds), study.hu[int(ds.InstanceNumber) - 1], atol=0.5)
    assert [int(ds.InstanceNumber) for ds in written["descending"]] == list(range(10, 0, -1))
    assert [int(ds.InstanceNumber) for ds in written["shuffled"]] != list(range(1, 11))

    def by_instance(datasets: list[pydicom.Dataset]) -> dict[int, tuple[float, bytes]]:
        return {
            int(ds.InstanceNumber): (float(ds.ImagePositionPatient[2]), ds.PixelData)
            for ds in datasets
        }

    assert by_instance(written["shuffled"]) == by_instance(written["ascending"])


@pytest.mark.parametrize("compression", ["none", "jpeg2000"])
def test_extra_series_are_localizer_thin_and_bone(tmp_path: Path, compression: str) -> None:
    options = SynthOptions(slices=8, matrix=64, extra_series=True, compression=compression)
    rng = np.random.default_rng(9)
    study = generate_study(rng, options)
    series = read_series(write_study(study, tmp_path, options, rng))
    assert sorted(series) == [1, 2, 3, 4]
    assert len({s[0].SeriesInstanceUID for s in series.values()}) == 4
    localizer, main, thin, bone = series[1], series[2], series[3], series[4]
    assert len(localizer) == 1 and list(localizer[0].ImageType)[2] == "LOCALIZER"
    assert [len(main), len(thin), len(bone)] == [8, 16, 8]
    for s in (main, thin, bone):
        assert all(list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"] for ds in s)
    assert main[0].ConvolutionKernel == thin[0].ConvolutionKernel == "H31s"
    assert bone[0].ConvolutionKernel == "H70h"
    assert float(main[0].SliceThickness) == 5.0 and float(thin[0].SliceThickness) == 2.5
    assert [ds.ImagePositionPatient for ds in bone] == [ds.ImagePositionPatient for ds in main]
    z_main = np.mean([float(ds.ImagePositionPatient[2]) for ds in main])
    z_thin = np.mean([float(ds.ImagePositionPatient[2]) for ds in thin])
    assert z_thin == pytest.approx(z_main)  # same anatomy covered
    assert len({ds.FrameOfReferenceUID for s in series.values() for ds in s}) == 1


# --- data sets ------------------------------------------------------------------------------


def test_synthesize_writes_labels_and_annotations_deterministically(tmp_path: Path) -> None:
    labels_path = synthesize(tmp_path / "a", studies=3, seed=5, options=TINY)
    synthesize(tmp_path / "b", studies=3, seed=5, options=TINY)
    with labels_path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["study_uid", *FINDING_CODES]
    assert len(rows) == 4 and all(set(r[1:]) <= {"0", "1"} for r in rows[1:])
    annotations = json.loads((tmp_path / "a" / "annotations.json").read_text())
    assert annotations["synthetic"] is True and annotations["options"]["slices"] == 8
    for row in rows[1:]:
        uid, values = row[0], row[1:]
        positive = {code for code, v in zip(FINDING_CODES, values, strict=True) if v == "1"}
        assert set(annotations[uid]) == positive
        assert len(list((tmp_path / "a" / uid).glob("*.dcm"))) == 8

    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_synth_command_counts_in_english(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    args = ["synth", "--out", str(tmp_path), "--slices", "4", "--matrix", "64", "--studies"]
    one = CliRunner().invoke(app, [*args, "1"])
    assert one.exit_code == 0, one.output
    assert one.output.startswith("wrote 1 synthetic study;")
    two = CliRunner().invoke(app, [*args, "2", "--seed", "1"])
    assert two.output.startswith("wrote 2 synthetic studies;")
