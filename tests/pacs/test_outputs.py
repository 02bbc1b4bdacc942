"""The DICOM SR and key image built for a study the demo model triaged: they validate with dcmtk's
dsrdump and dicom3tools' dciodvfy, carry the result (75 findings, priority, model, router
weights, key slice, disclaimer), belong to the study as new series, and are the same objects for
the same result."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from service.findings import FINDINGS
from service.pacs.outputs import (
    SCHEME,
    build_key_image,
    build_outputs,
    build_sr,
)
from service.pacs.render import PRIORITY_COLOURS, WARNING_COLOUR, window
from service.schemas import TriageResult
from testing.studies import Patient
from testing.triaged import TriagedStudy, triage_synthetic_study

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PATIENT = Patient(name="Qzxv^Orlanda", patient_id="PID-55113-OUT", birth_date="19020304")


@pytest.fixture(scope="module")
def triaged(tmp_path_factory: pytest.TempPathFactory) -> TriagedStudy:
    return triage_synthetic_study(tmp_path_factory.mktemp("study"), seed=5, patient=PATIENT)


@pytest.fixture(scope="module")
def outputs(triaged: TriagedStudy) -> list[Dataset]:
    return build_outputs(triaged.result, triaged.card, triaged.evidence)


@pytest.fixture(scope="module")
def written(outputs: list[Dataset], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("outputs")
    paths = [folder / "sr.dcm", folder / "key_image.dcm"]
    for ds, path in zip(outputs, paths, strict=True):
        ds.save_as(path, enforce_file_format=True)
    return paths


def _dciodvfy(path: Path) -> list[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return (done.stdout + done.stderr).splitlines()


def _items(container: Dataset) -> Iterator[Dataset]:
    """Every content item under ``container``, depth first."""
    for item in container.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _name(item: Dataset) -> str:
    concept = item.ConceptNameCodeSequence[0]
    return str(concept.get("CodeValue") or concept.get("LongCodeValue"))


def _code(item: Dataset) -> str:
    concept = item.ConceptCodeSequence[0]
    return str(concept.get("CodeValue") or concept.get("LongCodeValue"))


def _groups(sr: Dataset) -> list[Dataset]:
    return [i for i in _items(sr) if i.ValueType == "CONTAINER" and _name(i) == "125007"]


def _children(group: Dataset, name: str) -> list[Dataset]:
    return [i for i in group.ContentSequence if _name(i) == name]


def _number(item: Dataset) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def test_the_sr_passes_dsrdump_and_dciodvfy(written: list[Path]) -> None:
    dump = subprocess.run(["dsrdump", str(written[0])], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert not [line for line in dump.stderr.splitlines() if line.startswith(("E:", "F:"))]
    assert "Comprehensive 3D SR Document" in dump.stdout
    lines = _dciodvfy(written[0])
    assert lines and lines[0] == "Comprehensive3DSR"
    assert not [line for line in lines if line.startswith("Error")], "\n".join(lines)
    # The only warnings: dciodvfy does not know the private coding scheme (declared in the SR).
    assert {line for line in lines[1:]} <= {
        f"Warning - Unrecognized defined term <{SCHEME}> for value 1 of attribute "
        "<Coding Scheme Designator>"
    }


def test_the_key_image_passes_dciodvfy(written: list[Path]) -> None:
    lines = _dciodvfy(written[1])
    assert lines == ["SCImage"], "\n".join(lines)


def test_the_sr_carries_the_75_findings_in_card_order(
    outputs: list[Dataset], triaged: TriagedStudy
) -> None:
    sr = outputs[0]
    findings = [g for g in _groups(sr) if _code(_children(g, "121071")[0]) != "triage"]
    assert [_code(_children(g, "121071")[0]) for g in findings] == [f.code for f in FINDINGS]
    for group, finding in zip(findings, triaged.result.findings, strict=True):
        (presence,) = _children(group, "121052")
        assert _code(presence) == ("121053" if finding.positive else "121054")
        (probability,) = _children(group, "122157")
        (threshold,) = _children(group, "122411")
        assert _number(probability) == pytest.approx(finding.probability, abs=1e-9)
        assert _number(threshold) == pytest.approx(finding.threshold, abs=1e-9)
        (version,) = _children(group, "111003")
        assert version.TextValue == str(triaged.card.version)
    assert any(f.positive for f in triaged.result.findings)
    assert any(not f.positive for f in triaged.result.findings)
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == SCHEME


def test_the_sr_carries_priority_model_router_key_slice_and_disclaimer(
    outputs: list[Dataset], triaged: TriagedStudy
) -> None:
    sr, result, card = outputs[0], triaged.result, triaged.card
    (triage,) = [g for g in _groups(sr) if _code(_children(g, "121071")[0]) == "triage"]
    (priority,) = _children(triage, "260870009")
    assert _code(priority) == result.triage.priority.value
    (name,) = _children(triage, "111001")
    (version,) = _children(triage, "111003")
    assert (name.TextValue, version.TextValue) == (card.name, str(card.version))
    weights = [
        _number(_children(triage, f"expert_{k}_weight")[0]) for k in range(card.adapter.experts)
    ]
    assert weights == pytest.approx(result.router.study_weights, abs=1e-9)
    (source,) = _children(triage, "121112")  # Source of Measurement
    assert (
        source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == result.slices.key_sop_instance_uid
    )
    (comment,) = _children(triage, "121106")
    assert comment.TextValue == card.intended_use
    assert "synthetic" in comment.TextValue
    library = [i for i in _items(sr) if i.ValueType == "IMAGE"]
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in library} == {
        result.slices.key_sop_instance_uid
    }


def test_both_are_new_series_of_the_study_with_its_patient(
    outputs: list[Dataset], triaged: TriagedStudy
) -> None:
    sr, key_image = outputs
    source = triaged.evidence[0]
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert key_image.SOPClassUID == SecondaryCaptureImageStorage
    assert ComprehensiveSRStorage != sr.SOPClassUID  # the 3D flavour, which TID 1500 needs
    source_series = {ds.SeriesInstanceUID for ds in triaged.evidence}
    for ds in outputs:
        assert ds.StudyInstanceUID == triaged.result.study_uid == source.StudyInstanceUID
        assert ds.SeriesInstanceUID not in source_series
        assert (ds.PatientName, ds.PatientID) == (PATIENT.name, PATIENT.patient_id)
        assert str(ds.PatientBirthDate) == PATIENT.birth_date
        assert ds.AccessionNumber == source.AccessionNumber
        assert "NOT FOR CLINICAL USE" in ds.SeriesDescription
    assert sr.SeriesInstanceUID != key_image.SeriesInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in evidence.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in triaged.evidence}
    assert (sr.PreliminaryFlag, sr.CompletionFlag, sr.VerificationFlag) == (
        "PRELIMINARY",
        "COMPLETE",
        "UNVERIFIED",
    )


def test_the_key_image_shows_the_key_slice_priority_and_warning(
    outputs: list[Dataset], triaged: TriagedStudy
) -> None:
    key_image = outputs[1]
    assert key_image.SourceImageSequence[0].ReferencedSOPInstanceUID == (
        triaged.result.slices.key_sop_instance_uid
    )
    assert key_image.BurnedInAnnotation == "YES"
    pixels = key_image.pixel_array
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
    colour = PRIORITY_COLOURS[triaged.result.triage.priority.value]
    assert tuple(pixels[2, 2]) == colour  # the header band
    assert tuple(pixels[-1, 2]) == WARNING_COLOUR  # the not-for-clinical-use banner


def test_a_card_not_trained_on_phantoms_gets_no_synthetic_banner(triaged: TriagedStudy) -> None:
    real = triaged.card.model_copy(
        update={"provenance": triaged.card.provenance.model_copy(update={"synthetic": False})}
    )
    image = build_key_image(triaged.result, real, triaged.key_slice())
    assert tuple(image.pixel_array[-1, 2]) != WARNING_COLOUR
    assert "NOT FOR CLINICAL USE" not in image.SeriesDescription


def test_the_same_result_gives_the_same_instances_and_another_result_new_ones(
    outputs: list[Dataset], triaged: TriagedStudy
) -> None:
    sr, key_image = outputs
    again = build_sr(triaged.result, triaged.card, triaged.evidence)
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (
        sr.SOPInstanceUID,
        sr.SeriesInstanceUID,
    )
    changed = triaged.result.model_copy(deep=True)
    changed.findings[0].probability = 0.5 * changed.findings[0].probability
    other = build_key_image(changed, triaged.card, triaged.key_slice())
    assert other.SOPInstanceUID != key_image.SOPInstanceUID
    assert other.SeriesInstanceUID != key_image.SeriesInstanceUID
    retimed = triaged.result.model_copy(deep=True)
    retimed.timing_ms.total += 1000.0
    same = build_key_image(retimed, triaged.card, triaged.key_slice())
    assert same.SOPInstanceUID == key_image.SOPInstanceUID


def test_a_result_without_a_key_instance_gets_the_sr_alone(triaged: TriagedStudy) -> None:
    result = triaged.result.model_copy(deep=True)
    result.slices.key_sop_instance_uid = None
    (sr,) = build_outputs(result, triaged.card, triaged.evidence)
    assert not [i for i in _items(sr) if i.ValueType == "IMAGE"]


def test_a_multi_frame_key_instance_gets_the_sr_alone(triaged: TriagedStudy) -> None:
    key = triaged.key_slice()
    enhanced = copy.deepcopy(key)
    enhanced.NumberOfFrames = 2
    enhanced.PixelData = key.PixelData * 2
    evidence = [enhanced if ds is key else ds for ds in triaged.evidence]
    (sr,) = build_outputs(triaged.result, triaged.card, evidence)
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    with pytest.raises(ValueError, match="multi-frame"):
        build_key_image(triaged.result, triaged.card, enhanced)


def test_evidence_must_hold_the_triaged_series_and_key_slice(triaged: TriagedStudy) -> None:
    with pytest.raises(ValueError, match="triaged series"):
        build_sr(triaged.result, triaged.card, [])
    headers = [ds for ds in triaged.evidence if ds.SOPInstanceUID != _key_uid(triaged.result)]
    with pytest.raises(ValueError, match="key slice"):
        build_outputs(triaged.result, triaged.card, headers)
    without_pixels = pydicom.dcmread(
        next(
            p
            for p, ds in zip(triaged.files, triaged.evidence, strict=True)
            if ds is triaged.key_slice()
        ),
        stop_before_pixels=True,
    )
    with pytest.raises(ValueError, match="pixel data"):
        build_key_image(triaged.result, triaged.card, without_pixels)


def _key_uid(result: TriageResult) -> str:
    assert result.slices.key_sop_instance_uid is not None
    return result.slices.key_sop_instance_uid


def test_brain_window() -> None:
    hu = np.array([-1000, 0, 40, 80, 2000])
    assert window(hu).tolist() == [0, 0, 128, 255, 255]
