"""Writing a synthetic study as the DICOM files a CT scanner sends (CT Image Storage).

One file per instance, with the geometry, rescale and display attributes that ingest relies on,
and patient and institution attributes that say plainly the data are a synthetic phantom.
Stored values are rounded so HU survive the round trip within half a unit, uncompressed, RLE
Lossless or JPEG 2000 Lossless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from synth.cooccurrence import to_codes
from synth.imaging import bone_kernel, lateral_localizer, thin_slices
from synth.options import SynthOptions

MANUFACTURER = "headct-triage synthetic"
DISCLAIMER = "SYNTHETIC PHANTOM - NOT PATIENT DATA - NOT FOR CLINICAL USE"
_TRANSFER_SYNTAX = {
    "none": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
}
_PLUGIN = {"none": "", "rle": "pydicom", "jpeg2000": "pylibjpeg"}
_AGE_FINDINGS = {
    "global_atrophy",
    "small_vessel_disease",
    "chronic_lacunar_infarcts",
    "vascular_calcification",
    "subdural_hematoma_chronic",
}


@dataclass(frozen=True)
class Encoding:
    """How HU become stored values: rescale and bit depth."""

    signed: bool
    slope: float
    intercept: float

    @property
    def bits_stored(self) -> int:
        return 16 if self.signed else 12

    def to_stored(self, hu: np.ndarray) -> np.ndarray:
        stored = np.rint((hu.astype(np.float64) - self.intercept) / self.slope)
        if self.signed:
            return np.clip(stored, -32768, 32767).astype(np.int16)
        return np.clip(stored, 0, 4095).astype(np.uint16)


@dataclass(frozen=True)
class Series:
    """One series to write: its pixels (HU) and what distinguishes it."""

    number: int
    description: str
    kernel: str
    image_type: tuple[str, ...]
    hu: np.ndarray  # [n, rows, cols]
    thickness_mm: float
    spacing_mm: float  # between slices
    first_z_offset_mm: float = 0.0  # position of slice 0 relative to the main series' slice 0
    localizer: bool = False


def choose_encoding(options: SynthOptions, rng: np.random.Generator) -> Encoding:
    if options.pixel_representation == "unsigned":
        return Encoding(False, 1.0, -1024.0)
    slope, intercept = [(1.0, 0.0), (1.0, -1000.0), (1.0, -1024.0), (0.5, -1024.0)][
        int(rng.integers(4))
    ]
    return Encoding(True, slope, intercept)


def _uid(rng: np.random.Generator) -> str:
    return str(generate_uid(entropy_srcs=[rng.bytes(16).hex()]))


def _study_header(study_uid: str, labels: np.ndarray, rng: np.random.Generator) -> Dataset:
    """Study and (synthetic) patient attributes shared by every file of the study."""
    elderly = bool(to_codes(labels) & _AGE_FINDINGS)
    age = int(rng.integers(65, 95) if elderly else rng.integers(18, 90))
    day = date(2019, 1, 1) + timedelta(days=int(rng.integers(0, 7 * 365)))
    birth = day - timedelta(days=365 * age + int(rng.integers(0, 365)))
    seconds = int(rng.integers(0, 24 * 3600))
    time = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
    number = int(rng.integers(1, 10000))
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.AccessionNumber = f"SYN{int(rng.integers(0, 10**9)):09d}"
    ds.StudyID = f"{number:04d}"
    ds.StudyDescription = "CT HEAD WO CONTRAST - SYNTHETIC PHANTOM"
    ds.ReferringPhysicianName = ""
    ds.PatientName = f"SYNTHETIC^PHANTOM{number:04d}"
    ds.PatientID = f"SYN{int(rng.integers(0, 10**8)):08d}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = "M" if rng.random() < 0.5 else "F"
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom: no patient"  # required once identity is removed
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "headct-triage phantom"
    ds.InstitutionName = "SYNTHETIC DATA"
    ds.Modality = "CT"
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.KVP = "120"
    ds.ImageComments = DISCLAIMER
    return ds


def write_dicom_study(
    study_uid: str,
    hu: np.ndarray,
    labels: np.ndarray,
    pixel_spacing_mm: float,
    slice_thickness_mm: float,
    folder: Path,
    options: SynthOptions,
    rng: np.random.Generator,
) -> list[Path]:
    """Write the main series (and, with ``options.extra_series``, a localizer, a thin and a
    bone-kernel series) into ``folder`` as 0001.dcm, 0002.dcm, ...; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    header = _study_header(study_uid, labels, rng)
    encoding = choose_encoding(options, rng)
    frame_uid = _uid(rng)
    origin = (float(rng.uniform(-5, 5)), float(rng.uniform(-30, 0)), float(rng.uniform(-60, 0)))
    t = slice_thickness_mm
    series = [
        Series(
            2,
            f"Head {t:g}mm H31s soft tissue SYNTHETIC",
            "H31s",
            ("ORIGINAL", "PRIMARY", "AXIAL"),
            hu,
            t,
            t,
        )
    ]
    if options.extra_series:
        # about square pixels, and at least 64 rows (JPEG 2000 needs room for its levels)
        rows_per_slice = max(1, round(t / pixel_spacing_mm), -(-64 // hu.shape[0]))
        scout = lateral_localizer(hu, pixel_spacing_mm, rows_per_slice)[None]
        series += [
            Series(
                1,
                "Topogram lateral SYNTHETIC",
                "T20s",
                ("ORIGINAL", "PRIMARY", "LOCALIZER"),
                scout,
                pixel_spacing_mm,
                t / rows_per_slice,
                localizer=True,
            ),
            Series(
                3,
                f"Head {t / 2:g}mm H31s thin SYNTHETIC",
                "H31s",
                ("ORIGINAL", "PRIMARY", "AXIAL"),
                thin_slices(hu, rng),
                t / 2,
                t / 2,
                first_z_offset_mm=-t / 4,
            ),
            Series(
                4,
                f"Head {t:g}mm H70h bone SYNTHETIC",
                "H70h",
                ("ORIGINAL", "PRIMARY", "AXIAL"),
                bone_kernel(hu, rng),
                t,
                t,
            ),
        ]
    paths: list[Path] = []
    for s in series:
        order = _file_order(s.hu.shape[0], options, rng)
        series_uid = _uid(rng)
        for index in order:
            ds = _instance(
                header,
                s,
                index,
                series_uid,
                frame_uid,
                origin,
                pixel_spacing_mm,
                encoding,
                _uid(rng),
            )
            path = folder / f"{len(paths) + 1:04d}.dcm"
            _encode(ds, s.hu[index], encoding, options)
            dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
    return paths


def _file_order(count: int, options: SynthOptions, rng: np.random.Generator) -> list[int]:
    if options.slice_order == "descending":
        return list(range(count - 1, -1, -1))
    if options.slice_order == "shuffled":
        return [int(i) for i in rng.permutation(count)]
    return list(range(count))


def _instance(
    header: Dataset,
    s: Series,
    index: int,
    series_uid: str,
    frame_uid: str,
    origin: tuple[float, float, float],
    pixel_spacing_mm: float,
    encoding: Encoding,
    sop_uid: str,
) -> Dataset:
    ds = Dataset()
    ds.update(header)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = list(s.image_type)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = s.number
    ds.SeriesDescription = s.description
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ConvolutionKernel = s.kernel
    ds.BurnedInAnnotation = "NO"
    rows, cols = s.hu.shape[1:]
    x0, y0, z0 = origin
    half = (cols - 1) / 2 * pixel_spacing_mm
    if s.localizer:
        top = z0 + s.spacing_mm * (rows - 1)
        ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
        ds.ImagePositionPatient = [x0, round(y0 - half, 4), round(top, 4)]
        ds.PixelSpacing = [round(s.spacing_mm, 6), round(pixel_spacing_mm, 6)]
    else:
        z = z0 + s.first_z_offset_mm + index * s.spacing_mm
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [round(x0 - half, 4), round(y0 - half, 4), round(z, 4)]
        ds.SliceLocation = round(z, 4)
        ds.PixelSpacing = [round(pixel_spacing_mm, 6), round(pixel_spacing_mm, 6)]
        ds.SliceThickness = s.thickness_mm
        ds.SpacingBetweenSlices = s.spacing_mm
        ds.ReconstructionDiameter = round(cols * pixel_spacing_mm, 3)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = int(encoding.signed)
    ds.RescaleIntercept = encoding.intercept
    ds.RescaleSlope = encoding.slope
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = (40, 80) if not s.localizer else (0, 2000)
    ds.WindowCenterWidthExplanation = "BRAIN" if not s.localizer else "SCOUT"
    return ds


def _encode(ds: Dataset, hu: np.ndarray, encoding: Encoding, options: SynthOptions) -> None:
    stored = encoding.to_stored(hu)
    if options.compression == "none":
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = stored.tobytes()
        return
    ds.compress(
        _TRANSFER_SYNTAX[options.compression],
        stored,
        encoding_plugin=_PLUGIN[options.compression],
        generate_instance_uid=False,
    )
