"""What goes back to the PACS for a triaged study: a DICOM SR and a key image, in its study.

- ``build_sr``: a Comprehensive 3D SR holding a TID 1500 Measurement Report (highdicom). One
  measurement group carries the triage priority, the router's study weights, the key slice's
  attention and the model card's intended use, with the key slice as its source image; then one
  group per finding (75, in card order): Present or Absent at the card's operating threshold,
  the probability and the threshold. The model is the algorithm (name, version) of every group
  and the observing device. Findings and priorities are coded in the private scheme ``99HEADCT``
  (declared in the SR's Coding Scheme Identification Sequence); everything else in DCM, SCT, UCUM.
- ``build_key_image``: a Secondary Capture of the key slice (``service.pacs.render``).

Both are new series of the study they describe, with its patient and study modules copied from
its instances, and are marked preliminary and unverified: a model's reading awaits a
radiologist's. Their UIDs derive from the result (timings aside), so the same result always gives
the same instances and a re-delivery replaces rather than duplicates; a new result (new
instances, another model version) gives new ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.pixels.processing import apply_rescale
from pydicom.pixels.utils import pixel_array
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import service
from service.model_card import ModelCard
from service.pacs.render import BRAIN_WINDOW, KeyImageText, render_key_image
from service.schemas import FindingResult, TriageResult

MANUFACTURER = "headct-triage"
SCHEME = "99HEADCT"
SCHEME_NAME = "headct-triage findings and priorities"
SR_SERIES_NUMBER = 9901
KEY_IMAGE_SERIES_NUMBER = 9902
KEY_IMAGE_FINDINGS = 5  # positive findings listed on the key image, most probable first
NOT_FOR_CLINICAL_USE_BANNER = "NOT FOR CLINICAL USE - synthetic demo model"

DEIDENTIFICATION = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)

PRIORITY = codes.SCT.Priority
PRESENCE = codes.DCM.PresenceOfProperty
PRESENT = codes.DCM.Present
ABSENT = codes.DCM.Absent
PROBABILITY = codes.DCM.Probability
THRESHOLD = codes.DCM.ThresholdValue
UNITLESS = codes.UCUM.NoUnits
KEY_SLICE_ATTENTION = CodedConcept("key_slice_attention", SCHEME, "Attention weight of key slice")
TRIAGE = CodedConcept("triage", SCHEME, "Head CT triage")


def finding_concept(code: str, name: str) -> CodedConcept:
    return CodedConcept(code, SCHEME, name)


def expert_weight_concept(expert: int) -> CodedConcept:
    return CodedConcept(
        f"expert_{expert}_weight", SCHEME, f"Router study weight of expert {expert}"
    )


def priority_concept(priority: str) -> CodedConcept:
    return CodedConcept(priority, SCHEME, f"{priority.capitalize()} priority")


def _uid(result: TriageResult, role: str) -> str:
    """A UID fixed by the result's content (not its timings) and the object's role."""
    content = result.model_dump(mode="json", exclude={"timing_ms"})
    return str(generate_uid(entropy_srcs=[json.dumps(content, sort_keys=True), role]))


def _key_slice(result: TriageResult, evidence: Sequence[Dataset]) -> Dataset | None:
    uid = result.slices.key_sop_instance_uid
    if uid is None:
        return None
    for ds in evidence:
        if ds.SOPInstanceUID == uid:
            return ds
    raise ValueError(f"the key slice {uid} is not among the {len(evidence)} evidence instances")


def _algorithm(card: ModelCard) -> AlgorithmIdentification:
    return AlgorithmIdentification(
        name=card.name,
        version=str(card.version),
        family=codes.cid7162.ArtificialIntelligence,
        manufacturer=MANUFACTURER,
    )


def _device_context(card: ModelCard) -> ObservationContext:
    device = DeviceObserverIdentifyingAttributes(
        uid=str(generate_uid(entropy_srcs=[MANUFACTURER, card.name, str(card.version)])),
        name=f"{card.name} v{card.version}",
        manufacturer_name=MANUFACTURER,
        model_name=card.name,
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def _triage_group(
    result: TriageResult, card: ModelCard, key_slice: Dataset | None
) -> MeasurementsAndQualitativeEvaluations:
    weights = [
        Measurement(name=expert_weight_concept(k), value=w, unit=UNITLESS)
        for k, w in enumerate(result.router.study_weights)
    ]
    attention = result.slices.attention[result.slices.key_slice]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=_uid(result, "triage"), identifier="triage"),
        finding_type=TRIAGE,
        algorithm_id=_algorithm(card),
        measurements=[
            *weights,
            Measurement(name=KEY_SLICE_ATTENTION, value=attention, unit=UNITLESS),
        ],
        qualitative_evaluations=[
            QualitativeEvaluation(PRIORITY, priority_concept(result.triage.priority.value))
        ],
        source_images=(
            [SourceImageForMeasurementGroup(key_slice.SOPClassUID, key_slice.SOPInstanceUID)]
            if key_slice is not None
            else None
        ),
    )
    group[0].ContentSequence.append(
        TextContentItem(
            name=codes.DCM.Comment,
            value=card.intended_use,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group


def _finding_group(
    result: TriageResult, card: ModelCard, finding: FindingResult
) -> MeasurementsAndQualitativeEvaluations:
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=_uid(result, f"finding {finding.code}"), identifier=finding.code
        ),
        finding_type=finding_concept(finding.code, finding.name),
        finding_category=CodedConcept(
            finding.category, SCHEME, finding.category.replace("_", " ").capitalize()
        ),
        algorithm_id=_algorithm(card),
        measurements=[
            Measurement(name=PROBABILITY, value=finding.probability, unit=UNITLESS),
            Measurement(name=THRESHOLD, value=finding.threshold, unit=UNITLESS),
        ],
        qualitative_evaluations=[
            QualitativeEvaluation(PRESENCE, PRESENT if finding.positive else ABSENT)
        ],
    )


def _copy_deidentification(source: Dataset, target: Dataset) -> None:
    """The source's statement that its patient identity was removed, and how, travels with it:
    highdicom copies the patient module's identifiers, not these."""
    for keyword in DEIDENTIFICATION:
        if keyword in source:
            target[keyword] = source[keyword]


def _coding_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def _description(card: ModelCard, kind: str) -> str:
    note = " NOT FOR CLINICAL USE" if card.provenance.synthetic else ""
    return f"AI {kind} {card.name} v{card.version}{note}"[:64]


def build_sr(result: TriageResult, card: ModelCard, evidence: Sequence[Dataset]) -> Dataset:
    """The study's triage as a Comprehensive 3D SR (TID 1500), evidenced by the triaged series."""
    series = [ds for ds in evidence if ds.SeriesInstanceUID == result.series_uid]
    if not series:
        raise ValueError(f"no evidence instance belongs to the triaged series {result.series_uid}")
    key_slice = _key_slice(result, series)
    report = MeasurementReport(
        observation_context=_device_context(card),
        procedure_reported=codes.SCT.ComputedTomographyOfHead,
        imaging_measurements=[
            _triage_group(result, card, key_slice),
            *(_finding_group(result, card, f) for f in result.findings),
        ],
        referenced_images=[key_slice] if key_slice is not None else None,
    )
    sr = Comprehensive3DSR(
        evidence=series,
        content=report[0],
        series_instance_uid=_uid(result, "sr series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid(result, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=_description(card, "triage SR"),
        software_versions=service.__version__,
    )
    sr.CodingSchemeIdentificationSequence = [_coding_scheme()]
    _copy_deidentification(series[0], sr)
    return sr


def _multi_frame(ds: Dataset) -> bool:
    return int(ds.get("NumberOfFrames") or 1) > 1


def _patient_orientation(key_slice: Dataset) -> tuple[str, str]:
    """The letters of the row and column directions (PS3.3 C.7.6.1.1.1), dominant axis only."""
    orientation = key_slice.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return ("L", "P")  # the axial default: rows run to the patient's left, columns posterior

    def letter(cosines: list[float]) -> str:
        axis = int(np.argmax(np.abs(cosines)))
        return ("L", "P", "H")[axis] if cosines[axis] >= 0 else ("R", "A", "F")[axis]

    values = [float(v) for v in orientation]
    return (letter(values[:3]), letter(values[3:]))


def _finding_lines(result: TriageResult) -> list[str]:
    """The findings that set the priority first, then the other positives, most probable first
    within each; at most ``KEY_IMAGE_FINDINGS`` lines, and a count of the rest."""
    drivers = set(result.triage.findings)
    positives = sorted(
        (f for f in result.findings if f.positive),
        key=lambda f: (f.code not in drivers, -f.probability),
    )
    lines = [
        f"{f.name}: p {f.probability:.2f} (threshold {f.threshold:.2f})"
        for f in positives[:KEY_IMAGE_FINDINGS]
    ]
    if len(positives) > KEY_IMAGE_FINDINGS:
        lines.append(f"... and {len(positives) - KEY_IMAGE_FINDINGS} more positive findings")
    return lines or ["No finding at or above its operating threshold"]


def build_key_image(result: TriageResult, card: ModelCard, key_slice: Dataset) -> Dataset:
    """The key slice in a brain window with the priority, the top findings and the per-slice
    attention burned in, as a Secondary Capture in a new series of the study."""
    if key_slice.SOPInstanceUID != result.slices.key_sop_instance_uid:
        raise ValueError("key_slice is not the result's key SOP instance")
    if "PixelData" not in key_slice:
        raise ValueError("key_slice was read without its pixel data")
    if _multi_frame(key_slice):
        raise ValueError("the key instance is multi-frame, and the result names no frame")
    hu = apply_rescale(pixel_array(key_slice), key_slice)
    slices = result.slices
    text = KeyImageText(
        priority=result.triage.priority.value,
        model=f"{card.name} v{card.version} - preliminary, awaiting radiologist review",
        caption=(
            f"Key slice: series image {slices.key_source_index + 1} of {slices.source_count}, "
            f"brain window W{BRAIN_WINDOW.width:g} L{BRAIN_WINDOW.center:g}; attention is per "
            "slice, not a location"
        ),
        findings=_finding_lines(result),
        warning=NOT_FOR_CLINICAL_USE_BANNER if card.provenance.synthetic else None,
    )
    pixels = render_key_image(hu, slices.attention, slices.key_slice, text)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=key_slice,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=_uid(result, "key image series"),
        series_number=KEY_IMAGE_SERIES_NUMBER,
        sop_instance_uid=_uid(result, "key image"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=_patient_orientation(key_slice),
        series_description=_description(card, "key image"),
        software_versions=service.__version__,
    )
    image.BurnedInAnnotation = "YES"
    if "BodyPartExamined" in key_slice:  # tells validators the body part is unpaired (HEAD)
        image.BodyPartExamined = key_slice.BodyPartExamined
    _copy_deidentification(key_slice, image)
    image.ImageType = ["DERIVED", "SECONDARY", "KEY_IMAGE"]
    source = Dataset()
    source.ReferencedSOPClassUID = key_slice.SOPClassUID
    source.ReferencedSOPInstanceUID = key_slice.SOPInstanceUID
    image.SourceImageSequence = [source]
    return image


def build_outputs(
    result: TriageResult, card: ModelCard, evidence: Sequence[Dataset]
) -> list[Dataset]:
    """[SR, key image] for a triaged study; [SR] alone when the result names no key instance,
    or names a multi-frame one (an Enhanced CT) without saying which frame.

    ``evidence``: the study's instances; headers are enough except for the key slice, whose
    pixels the key image shows."""
    sr = build_sr(result, card, evidence)
    key_slice = _key_slice(result, evidence)
    if key_slice is None or _multi_frame(key_slice):
        return [sr]
    return [sr, build_key_image(result, card, key_slice)]
