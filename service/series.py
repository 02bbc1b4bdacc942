"""Grouping instances into series and choosing the one series to triage, with reasons for each.

A study often holds more than the axial soft-tissue series the model wants: a localizer, thin
and thick reconstructions, a bone-kernel series, dose reports. The rules here are explicit and
configurable, and every series gets a report saying why it was or was not chosen.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments

from service.dicom_io import LoadedFile
from service.errors import (
    CorruptDicomError,
    InconsistentGeometryError,
    NoAxialSeriesError,
    NoPixelDataError,
    NotCTError,
    TooFewSlicesError,
    TruncatedDicomError,
)

ENHANCED_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2.1"

# The plausibility envelope of a head CT image: a series outside it is not eligible, so nothing
# downstream sizes its work by an absurd matrix or spacing. Frames beyond MAX_FRAMES in one
# object are refused before they are looped over.
MIN_MATRIX, MAX_MATRIX = 16, 4096
MIN_PIXEL_SPACING_MM, MAX_PIXEL_SPACING_MM = 0.05, 10.0
MAX_SPACING_RATIO = 4.0
MAX_FRAMES = 4096
# Decoding (JPEG, JPEG 2000, JPEG-LS, RLE) is bounded like any decompression: the size the header
# declares (frames x rows x columns x samples x bytes) at most MAX_DECODED_BYTES per object, and
# at most MAX_DECODE_RATIO times the encapsulated bytes present, checked before decoding.
MAX_DECODED_BYTES = 1024 * 1024 * 1024
MAX_DECODE_RATIO = 1000

# Coded values a message may quote. Anything else in Modality or ImageType (code strings that a
# site could fill with an identifier) is named by its tag only, never echoed.
_MODALITIES = frozenset(
    "CT MR PT NM US CR DX MG IO PX XA RF RG OT SR KO PR SEG REG DOC ECG SM XC ES OP OPT OPM OPV "  # noqa: SIM905
    "OAM IVUS IVOCT RTIMAGE RTDOSE RTSTRUCT RTPLAN RTRECORD PLAN BI HD AU EPS BMD LS TG GM "
    "M3D FID RWV SMR TEXTUREMAP POS".split()
)
_IMAGE_TYPES = frozenset(
    {"ORIGINAL", "DERIVED", "PRIMARY", "SECONDARY", "AXIAL", "OTHER", "HELIX", "HELICAL", "SPIRAL"}
    | {"VOLUME", "MPR", "CURVED", "CT_SOM5 SPI", "NORMAL", "RECON"}
)


def _shown_modality(modality: str) -> str:
    if not modality:
        return "missing"
    return modality if modality in _MODALITIES else "not a DICOM modality code"


def _shown_image_type(values: Sequence[str], rules: SelectionRules) -> str:
    known = _IMAGE_TYPES | set(rules.excluded_image_types)
    return "\\".join(v if v in known else "*" for v in values) or "missing"


# Reconstruction kernels, by vendor naming: sharp (bone, lung) kernels make brain parenchyma noisy.
_BONE_KERNEL_MARKERS = ("BONE", "SHARP", "LUNG", "DETAIL", "EDGE", "YC", "YD", "FC30", "FC81")
_SOFT_KERNEL_MARKERS = ("STANDARD", "SOFT", "BRAIN", "STND", "SMOOTH", "UB", "FC2", "FC4", "J3")


@dataclass(frozen=True, slots=True)
class SelectionRules:
    """How the series to triage is chosen; each rejecting rule says so in the report."""

    modalities: tuple[str, ...] = ("CT",)
    # ImageType value 1: many scanners label axial reconstructions from thin data DERIVED\PRIMARY,
    # so ORIGINAL is preferred, and required only when asked.
    require_original: bool = False
    require_primary: bool = True
    # ImageType values that mark maps, projections and reformats rather than a reconstruction.
    excluded_image_types: tuple[str, ...] = (
        "LOCALIZER",
        "SCOUT",
        "PERFUSION",
        "MIP",
        "MINIP",
        "PROJECTION IMAGE",
        "REFORMATTED",
        "VOLUME_RENDER",
        "SCREEN SAVE",
    )
    axial_tolerance_deg: float = 30.0
    min_slices: int = 16
    target_thickness_mm: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.axial_tolerance_deg < 90:
            raise ValueError("axial_tolerance_deg must be in [0, 90): the angle off the z axis")
        if self.min_slices < 1:
            raise ValueError("min_slices must be at least 1")
        if self.target_thickness_mm <= 0:
            raise ValueError("target_thickness_mm must be positive")


@dataclass(frozen=True, slots=True)
class SliceRef:
    """One image plane: a single-frame instance, or one frame of a multi-frame object."""

    dataset: Dataset
    frame: int | None
    source: str
    position: tuple[float, ...] | None  # ImagePositionPatient, 3 values
    orientation: tuple[float, ...] | None  # ImageOrientationPatient, 6 values
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    slope: float
    intercept: float
    rows: int
    columns: int


@dataclass
class Series:
    uid: str
    number: int | None
    modality: str
    image_type: tuple[str, ...]
    kernel: str
    sop_class: str
    slices: list[SliceRef] = field(default_factory=list)
    non_image_instances: int = 0

    @property
    def thickness(self) -> float | None:
        values = [s.thickness for s in self.slices if s.thickness]
        return float(np.median(values)) if values else None

    @property
    def normal(self) -> np.ndarray | None:
        orientation = next((s.orientation for s in self.slices if s.orientation), None)
        return None if orientation is None else slice_normal(orientation)

    @property
    def kernel_class(self) -> str:
        kernel = self.kernel.upper()
        if any(m in kernel for m in _BONE_KERNEL_MARKERS) or _siemens_sharpness(kernel) >= 60:
            return "bone"
        if any(m in kernel for m in _SOFT_KERNEL_MARKERS) or 0 < _siemens_sharpness(kernel) < 60:
            return "soft_tissue"
        return "unknown"


def _siemens_sharpness(kernel: str) -> int:
    """Siemens kernels read like H31s, J40s, Br38: a letter or two, then sharpness."""
    digits = "".join(c for c in kernel[1:4] if c.isdigit())
    if kernel[:1] in "HJBQ" and len(digits) == 2:
        return int(digits)
    return 0


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise ValueError("degenerate ImageOrientationPatient")
    n = n / norm
    return n if n[2] >= 0 else -n


def plane_name(normal: np.ndarray | None) -> str:
    if normal is None:
        return "unknown"
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


@dataclass
class SeriesReport:
    """Why a series was or was not chosen. Holds no patient identifiers and no free-text tag
    (SeriesDescription is left out: sites put names and notes there)."""

    series_uid: str
    series_number: int | None
    modality: str
    image_type: list[str]
    kernel: str
    kernel_class: str
    plane: str
    slices: int
    thickness_mm: float | None
    eligible: bool
    selected: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid,
            "series_number": self.series_number,
            "modality": self.modality,
            "image_type": self.image_type,
            "kernel": self.kernel,
            "kernel_class": self.kernel_class,
            "plane": self.plane,
            "slices": self.slices,
            "thickness_mm": self.thickness_mm,
            "eligible": self.eligible,
            "selected": self.selected,
            "reasons": self.reasons,
        }


# ---- building series from datasets ---------------------------------------------------------


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(values) != n or not all(math.isfinite(v) for v in values):
        return None
    return values


def _spacing(value: Any) -> tuple[float, float] | None:
    """PixelSpacing, if it is two positive numbers."""
    spacing = _floats(value, 2)
    if spacing is None or min(spacing) <= 0:
        return None
    return spacing[0], spacing[1]


def _float(value: Any, default: float | None) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _first(ds: Dataset | None, sequence: str) -> Dataset | None:
    if ds is None:
        return None
    items = ds.get(sequence)
    return items[0] if items else None


def _frame_slices(ds: Dataset, source: str, frames: int) -> list[SliceRef]:
    """Enhanced (functional-group) multi-frame objects: geometry per frame, shared or per-frame."""
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []

    def lookup(frame: int, sequence: str, keyword: str) -> Any:
        for group in (per_frame[frame] if frame < len(per_frame) else None, shared):
            item = _first(group, sequence)
            if item is not None and keyword in item:
                return item.get(keyword)
        return ds.get(keyword)

    out = []
    for i in range(frames):
        spacing = _spacing(lookup(i, "PixelMeasuresSequence", "PixelSpacing"))
        out.append(
            SliceRef(
                dataset=ds,
                frame=i,
                source=f"{source}#{i + 1}",
                position=_floats(lookup(i, "PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=_floats(
                    lookup(i, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
                ),
                pixel_spacing=spacing,
                thickness=_float(lookup(i, "PixelMeasuresSequence", "SliceThickness"), None),
                slope=_float(lookup(i, "PixelValueTransformationSequence", "RescaleSlope"), 1.0)
                or 1.0,
                intercept=_float(
                    lookup(i, "PixelValueTransformationSequence", "RescaleIntercept"), 0.0
                )
                or 0.0,
                rows=int(ds.Rows),
                columns=int(ds.Columns),
            )
        )
    return out


def _check_declared_frames(ds: Dataset, source: str, frames: int) -> None:
    """Declared sizes must fit the pixel data actually present (and, decoded, the caps), checked
    before anything is allocated, decoded or looped over per frame (a 133 KB file declaring 2**31
    frames must not run, nor a 1 MB JPEG 2000 declaring gigabytes of pixels)."""
    if frames < 1 or frames > MAX_FRAMES:
        raise CorruptDicomError(
            f"{source} declares {frames} frames (NumberOfFrames); 1 to {MAX_FRAMES} are read."
        )
    pixels = ds.get("PixelData")
    if not isinstance(pixels, bytes | bytearray):
        return
    samples = int(_float(ds.get("SamplesPerPixel"), 1) or 1)
    bits = int(_float(ds.get("BitsAllocated"), 16) or 16)
    frame_bytes = int(ds.Rows) * int(ds.Columns) * samples * max(1, bits // 8)
    declared = frames * frame_bytes
    if declared > MAX_DECODED_BYTES:
        raise CorruptDicomError(
            f"{source} declares {frames} frames of {frame_bytes} bytes (Rows, Columns, "
            f"SamplesPerPixel, BitsAllocated), over the limit of {MAX_DECODED_BYTES} bytes."
        )
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_encapsulated:
        if declared > MAX_DECODE_RATIO * len(pixels):
            raise CorruptDicomError(
                f"{source}: its {len(pixels)} bytes of compressed pixel data would decode to "
                f"{declared} bytes, over {MAX_DECODE_RATIO} times their size; refused undecoded."
            )
        if frames == 1:
            return
        try:
            fragments, _ = parse_fragments(pixels)
        except (ValueError, TypeError, EOFError, struct.error):
            message = f"{source}: the encapsulated pixel data is malformed."
            raise CorruptDicomError(message) from None
        if frames > fragments:
            raise CorruptDicomError(
                f"{source} declares {frames} frames but its pixel data holds {fragments} "
                "fragments (each frame needs at least one)."
            )
        return
    if frames > 1 and declared > len(pixels):
        raise CorruptDicomError(
            f"{source} declares {frames} frames of {frame_bytes} bytes, but its pixel data holds "
            f"{len(pixels)} bytes."
        )


def _instance_slices(ds: Dataset, source: str) -> list[SliceRef]:
    frames = int(_float(ds.get("NumberOfFrames"), 1) or 1)
    _check_declared_frames(ds, source, frames)
    if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return _frame_slices(ds, source, frames)
    return [
        SliceRef(
            dataset=ds,
            frame=None,
            source=source,
            position=_floats(ds.get("ImagePositionPatient"), 3),
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            pixel_spacing=_spacing(ds.get("PixelSpacing")),
            thickness=_float(ds.get("SliceThickness"), None),
            slope=_float(ds.get("RescaleSlope"), 1.0) or 1.0,
            intercept=_float(ds.get("RescaleIntercept"), 0.0) or 0.0,
            rows=int(ds.Rows),
            columns=int(ds.Columns),
        )
    ]


def _kernel(ds: Dataset) -> str:
    kernel = ds.get("ConvolutionKernel")
    if kernel is None:
        recon = _first(_first(ds, "SharedFunctionalGroupsSequence"), "CTReconstructionSequence")
        kernel = recon.get("ConvolutionKernel") if recon is not None else None
    if kernel is None:
        return ""
    if isinstance(kernel, str):
        return kernel
    return "\\".join(str(k) for k in kernel)


def group_series(files: Sequence[LoadedFile]) -> list[Series]:
    """Group instances by SeriesInstanceUID, in order of first appearance."""
    by_uid: dict[str, Series] = {}
    for file in files:
        ds = file.dataset
        try:
            uid = str(ds.get("SeriesInstanceUID") or f"no-series-uid:{file.name}")
            series = by_uid.get(uid)
            if series is None:
                image_type = ds.get("ImageType") or []
                if isinstance(image_type, str):
                    image_type = image_type.split("\\")
                number = ds.get("SeriesNumber")
                series = Series(
                    uid=uid,
                    number=int(number) if number not in (None, "") else None,
                    modality=str(ds.get("Modality") or "").upper(),
                    image_type=tuple(str(t).strip().upper() for t in image_type),
                    kernel=_kernel(ds),
                    sop_class=str(ds.get("SOPClassUID") or ""),
                )
                by_uid[uid] = series
            if "PixelData" not in ds and "FloatPixelData" not in ds:
                if ds.get("Rows") and ds.get("BitsAllocated"):
                    # Image attributes but no pixels: the file stopped before its pixel data.
                    raise TruncatedDicomError(
                        f"{file.name} describes an image but ends before its pixel data."
                    )
                series.non_image_instances += 1
                continue
            if not ds.get("Rows") or not ds.get("Columns"):
                raise CorruptDicomError(f"{file.name} has pixel data but no image size.")
            series.slices.extend(_instance_slices(ds, file.name))
        except CorruptDicomError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
            # The exception's text can quote a header value (a free-text tag may hold an
            # identifier): name the file and the kind of failure only.
            raise CorruptDicomError(
                f"{file.name} has a malformed header (a value of the wrong type or form: "
                f"{type(exc).__name__})."
            ) from None
    return list(by_uid.values())


# ---- choosing the series to triage ---------------------------------------------------------


def _rejections(series: Series, rules: SelectionRules) -> list[tuple[str, str]]:
    """(rule, sentence) for every rule the series breaks."""
    if not series.slices:
        return [("pixels", "no pixel data (not an image series)")]
    reasons = []
    if series.modality not in rules.modalities:
        wanted = "/".join(rules.modalities)
        shown = _shown_modality(series.modality)
        reasons.append(("modality", f"modality {shown} is not {wanted}"))
    shown = _shown_image_type(series.image_type, rules)
    excluded = [t for t in series.image_type if t in rules.excluded_image_types]
    if excluded:
        kind = "localizer (scout)" if excluded[0] in ("LOCALIZER", "SCOUT") else excluded[0].lower()
        reasons.append(("image_type", f"{kind} image (ImageType {shown})"))
    elif rules.require_original and series.image_type[:1] != ("ORIGINAL",):
        reasons.append(("image_type", f"ImageType {shown} is not ORIGINAL"))
    elif rules.require_primary and series.image_type[1:2] != ("PRIMARY",):
        reasons.append(("image_type", f"ImageType {shown} is not PRIMARY (a secondary image)"))
    normal = series.normal
    if normal is None:
        reasons.append(("plane", "no ImageOrientationPatient: the plane cannot be known"))
    else:
        angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
        if angle > rules.axial_tolerance_deg:
            reasons.append(
                (
                    "plane",
                    f"{plane_name(normal)} plane, {angle:.0f} degrees off axial "
                    f"(tolerance {rules.axial_tolerance_deg:.0f})",
                )
            )
    outside = _outside_envelope(series)
    if outside:
        reasons.append(("envelope", outside))
    if len(series.slices) < rules.min_slices:
        reasons.append(
            ("slices", f"{len(series.slices)} slices, fewer than the {rules.min_slices} required")
        )
    return reasons


def _outside_envelope(series: Series) -> str | None:
    """Why a series' image geometry lies outside what a head CT can be (resampling cost must
    depend on the model grid, not on a spacing of 1e-6 mm), or None."""
    for ref in series.slices:
        if not (MIN_MATRIX <= ref.rows <= MAX_MATRIX and MIN_MATRIX <= ref.columns <= MAX_MATRIX):
            return (
                f"a {ref.rows} x {ref.columns} matrix, outside the head CT envelope "
                f"({MIN_MATRIX} to {MAX_MATRIX})"
            )
        if ref.pixel_spacing is not None:
            low, high = min(ref.pixel_spacing), max(ref.pixel_spacing)
            if low < MIN_PIXEL_SPACING_MM or high > MAX_PIXEL_SPACING_MM:
                return (
                    f"pixel spacing {ref.pixel_spacing[0]:g} x {ref.pixel_spacing[1]:g} mm, "
                    f"outside the head CT envelope ({MIN_PIXEL_SPACING_MM:g} to "
                    f"{MAX_PIXEL_SPACING_MM:g} mm)"
                )
            if high / low > MAX_SPACING_RATIO:
                return (
                    f"pixel spacing {ref.pixel_spacing[0]:g} x {ref.pixel_spacing[1]:g} mm: "
                    f"rows and columns differ more than {MAX_SPACING_RATIO:g}-fold"
                )
    return None


def _preference(series: Series, rules: SelectionRules) -> tuple[int, float, int, int]:
    """Lower is better: soft-tissue kernel, thickness nearest the target, ORIGINAL over DERIVED,
    then more slices."""
    kernel_rank = {"soft_tissue": 0, "unknown": 1, "bone": 2}[series.kernel_class]
    thickness = series.thickness or rules.target_thickness_mm
    distance = round(abs(math.log(thickness / rules.target_thickness_mm)), 3)
    derived = 0 if series.image_type[:1] == ("ORIGINAL",) else 1
    return kernel_rank, distance, derived, -len(series.slices)


def report_series(series: Series, rules: SelectionRules) -> SeriesReport:
    rejections = _rejections(series, rules)
    thickness = series.thickness
    return SeriesReport(
        series_uid=series.uid,
        series_number=series.number,
        modality=_shown_modality(series.modality),
        image_type=_shown_image_type(series.image_type, rules).split("\\"),
        kernel=series.kernel,
        kernel_class=series.kernel_class,
        plane=plane_name(series.normal),
        slices=len(series.slices),
        thickness_mm=None if thickness is None else round(thickness, 3),
        eligible=not rejections,
        reasons=[sentence for _, sentence in rejections],
    )


def select_series(
    all_series: Sequence[Series], rules: SelectionRules
) -> tuple[Series, list[SeriesReport]]:
    """The series to triage and a report for every series; raises if none qualifies."""
    reports = [report_series(s, rules) for s in all_series]
    eligible = [(s, r) for s, r in zip(all_series, reports, strict=True) if r.eligible]
    if eligible:
        chosen, chosen_report = min(eligible, key=lambda sr: _preference(sr[0], rules))
        chosen_report.selected = True
        why = f"selected: {chosen.kernel_class.replace('_', '-')} kernel"
        if chosen.thickness:
            why += f", {chosen.thickness:g} mm slices (target {rules.target_thickness_mm:g} mm)"
        why += f", {len(chosen.slices)} slices"
        if len(eligible) > 1:
            why += f", preferred over {len(eligible) - 1} other eligible series"
        chosen_report.reasons.append(why)
        for series, report in eligible:
            if series is not chosen:
                report.reasons.append("eligible, but another series was preferred")
        return chosen, reports
    raise _no_usable_series_error(all_series, reports, rules)


def _no_usable_series_error(
    all_series: Sequence[Series], reports: list[SeriesReport], rules: SelectionRules
) -> Exception:
    """The most specific reason the study as a whole cannot be read, with every series' report."""
    details = {"series": [r.to_dict() for r in reports]}
    images = [s for s in all_series if s.slices]
    if not images:
        return NoPixelDataError("No file in the study holds pixel data.", **details)
    ct = [s for s in images if s.modality in rules.modalities]
    if not ct:
        found = ", ".join(sorted({_shown_modality(s.modality) for s in images}))
        return NotCTError(f"The study holds no CT images (modality {found}).", **details)
    short = [s for s in ct if {rule for rule, _ in _rejections(s, rules)} == {"slices"}]
    if short:
        most = max(len(s.slices) for s in short)
        return TooFewSlicesError(
            f"The largest original axial CT series has {most} slices; at least "
            f"{rules.min_slices} are needed to cover the head.",
            **details,
        )
    return NoAxialSeriesError(
        "The study holds no original axial CT series (only localizers, derived images or "
        "other planes).",
        **details,
    )


def require_consistent(series: Series) -> None:
    """All planes of the series share one size, orientation and pixel spacing."""
    first = series.slices[0]
    for s in series.slices[1:]:
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise InconsistentGeometryError(
                f"Series {series.number} mixes image sizes {first.rows}x{first.columns} and "
                f"{s.rows}x{s.columns}."
            )
        if (
            s.orientation is None
            or first.orientation is None
            or not np.allclose(s.orientation, first.orientation, atol=1e-3)
        ):
            raise InconsistentGeometryError(
                f"Series {series.number} mixes image orientations (or lacks them)."
            )
        if s.pixel_spacing != first.pixel_spacing and not (
            s.pixel_spacing
            and first.pixel_spacing
            and np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-3)
        ):
            raise InconsistentGeometryError(f"Series {series.number} mixes pixel spacings.")
