"""Where a batch run's studies come from, found without reading pixel data.

- A folder tree (any depth; files of many studies mixed, a study split across folders) or zip
  archives (each holding one study or many): every file's header is read up to the Study Instance
  UID (``stop_before_pixels``, ``specific_tags``), in the worker processes, and the files are
  grouped by that UID. A file that is not DICOM is counted and left out; one whose header cannot
  be read, or that has no Study Instance UID, is counted and named in the summary.
- A DICOMweb server: QIDO-RS lists the studies with a CT series (``ModalitiesInStudy=CT``); each
  worker retrieves its study with WADO-RS.

A ``StudyJob`` names one study's instances; a worker turns it into the pipeline's sources
(``service.dicom_io.StudySource``), so every study goes through the same ingest as an upload.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pydicom
from pydicom.dataset import Dataset

from service.dicom_io import DICOM_HEAD_BYTES, StudySource, could_be_dicom, is_dicomdir, is_zip

DICOMWEB_PREFIX = "dicomweb:"
# Enough of a zip entry to hold a header up to the Study Instance UID; longer headers are read
# whole (decompressing the entry once more).
ZIP_HEAD_BYTES = 64 * 1024
# QIDO-RS page size; a server may return fewer (its own cap): pages are read until one is empty.
QIDO_PAGE = 100
STUDY_UID_TAG = 0x0020000D


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``: the studies whose UID hashes there (stable across runs,
    machines and Python versions: SHA-256, not ``hash``)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard {self.index}/{self.count}: need COUNT >= 1 and 0 <= INDEX < COUNT"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``INDEX/COUNT``, as in ``--shard 2/8``."""
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"shard {text!r}: write it INDEX/COUNT, for example 0/4")
        return cls(int(index), int(count))

    def holds(self, study_uid: str) -> bool:
        digest = hashlib.sha256(study_uid.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, slots=True)
class StudyJob:
    """One study's instances: files on disk, entries of zip archives, or a DICOMweb study."""

    study_uid: str
    files: tuple[Path, ...] = ()
    zip_entries: tuple[tuple[Path, str], ...] = ()
    dicomweb_url: str | None = None

    @property
    def instances(self) -> int | None:
        """How many files the scan found (None for DICOMweb: known once retrieved)."""
        return None if self.dicomweb_url else len(self.files) + len(self.zip_entries)

    def sources(self) -> list[StudySource]:
        """The pipeline's sources for this study; reads zip entries and retrieves over DICOMweb
        (raising on a server error), so a worker calls it."""
        if self.dicomweb_url:
            return [(f"instance-{i}", ds) for i, ds in enumerate(self._retrieve())]
        sources: list[StudySource] = list(self.files)
        by_archive: dict[Path, list[str]] = {}
        for archive, entry in self.zip_entries:
            by_archive.setdefault(archive, []).append(entry)
        for archive, entries in by_archive.items():
            with zipfile.ZipFile(archive) as handle:
                sources.extend((f"{archive.name}:{e}", handle.read(e)) for e in entries)
        return sources

    def _retrieve(self) -> list[Dataset]:
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(str(self.dicomweb_url))
        # In the transfer syntax the server holds (no transcoding): ingest decodes them all.
        datasets: list[Dataset] = client.retrieve_study(
            self.study_uid, media_types=(("application/dicom", "*"),)
        )
        return datasets


@dataclass
class ScanReport:
    """What the scan of a folder or zips found besides studies."""

    files: int = 0
    not_dicom: int = 0
    unreadable: list[str] = field(default_factory=list)  # display names, never header values
    without_study_uid: list[str] = field(default_factory=list)

    def add(self, other: ScanReport) -> None:
        self.files += other.files
        self.not_dicom += other.not_dicom
        self.unreadable.extend(other.unreadable)
        self.without_study_uid.extend(other.without_study_uid)

    def to_dict(self, shown: int = 20) -> dict[str, object]:
        return {
            "files": self.files,
            "not_dicom": self.not_dicom,
            "unreadable": len(self.unreadable),
            "unreadable_examples": sorted(self.unreadable)[:shown],
            "without_study_uid": len(self.without_study_uid),
            "without_study_uid_examples": sorted(self.without_study_uid)[:shown],
        }


# A file on disk, or (archive, entry)
Locator = Path | tuple[Path, str]


def _ignored(parts: Sequence[str]) -> bool:
    """Folder and archive clutter that is never part of a study (macOS forks, dotfiles)."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def list_locators(paths: Iterable[Path]) -> list[Locator]:
    """Every file under the folders (recursively) and every entry of the zips, sorted."""
    found: list[Locator] = []
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not _ignored(child.relative_to(path).parts):
                    found.extend(_expand(child))
        elif path.is_file():
            found.extend(_expand(path))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return found


def _expand(path: Path) -> list[Locator]:
    with path.open("rb") as handle:
        head = handle.read(4)
    if not is_zip(head):
        return [path]
    try:
        with zipfile.ZipFile(path) as archive:
            names = [
                i.filename
                for i in archive.infolist()
                if not i.is_dir() and not _ignored(PurePosixPath(i.filename).parts)
            ]
    except (zipfile.BadZipFile, OSError):
        return [path]  # read as a file: the scan reports it unreadable
    return [(path, name) for name in names]


def _name(locator: Locator) -> str:
    return str(locator) if isinstance(locator, Path) else f"{locator[0]}:{locator[1]}"


def _header(stream: io.BufferedIOBase | io.BytesIO) -> Dataset:
    return pydicom.dcmread(
        stream, stop_before_pixels=True, specific_tags=[STUDY_UID_TAG], force=True
    )


def _read_header(locator: Locator) -> Dataset | None:
    """The header up to the Study Instance UID; None when the file is not DICOM at all."""
    if isinstance(locator, Path):
        with locator.open("rb") as handle:
            if not could_be_dicom(handle.read(DICOM_HEAD_BYTES)):
                return None
            handle.seek(0)
            return _header(handle)
    archive_path, entry = locator
    with zipfile.ZipFile(archive_path) as archive:
        with archive.open(entry) as handle:
            head = handle.read(ZIP_HEAD_BYTES)
        if not could_be_dicom(head[:DICOM_HEAD_BYTES]):
            return None
        try:
            return _header(io.BytesIO(head))
        except Exception:  # the header runs past ZIP_HEAD_BYTES: read the whole entry
            return _header(io.BytesIO(archive.read(entry)))


def study_uids_of(locators: Sequence[Locator]) -> tuple[list[tuple[Locator, str]], ScanReport]:
    """Each readable DICOM file's Study Instance UID (a worker's share of the scan)."""
    found: list[tuple[Locator, str]] = []
    report = ScanReport(files=len(locators))
    for locator in locators:
        try:
            ds = _read_header(locator)
        except Exception:  # pydicom raises many types for garbage: each means "not readable"
            report.unreadable.append(_name(locator))
            continue
        if ds is None:
            report.not_dicom += 1
            continue
        if is_dicomdir(ds):
            continue
        uid = str(ds.get("StudyInstanceUID") or "").strip()
        if uid:
            found.append((locator, uid))
        else:
            report.without_study_uid.append(_name(locator))
    return found, report


def group_studies(found: Iterable[tuple[Locator, str]]) -> list[StudyJob]:
    """One job per Study Instance UID, in UID order, its files in name order."""
    files: dict[str, list[Path]] = {}
    entries: dict[str, list[tuple[Path, str]]] = {}
    for locator, uid in found:
        if isinstance(locator, Path):
            files.setdefault(uid, []).append(locator)
        else:
            entries.setdefault(uid, []).append(locator)
    return [
        StudyJob(uid, tuple(sorted(files.get(uid, []))), tuple(sorted(entries.get(uid, []))))
        for uid in sorted(set(files) | set(entries))
    ]


def chunks(items: Sequence[Locator], size: int) -> Iterator[Sequence[Locator]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dicomweb_studies(url: str) -> list[StudyJob]:
    """The studies with a CT series on a DICOMweb server (QIDO-RS, paged), in UID order."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url)
    uids: set[str] = set()
    offset = 0
    while True:
        page = client.search_for_studies(
            search_filters={"ModalitiesInStudy": "CT"},
            fields=["StudyInstanceUID"],
            offset=offset,
            limit=QIDO_PAGE,
        )
        if not page:
            break
        for study in page:
            values = study.get(f"{STUDY_UID_TAG:08X}", {}).get("Value") or []
            if values:
                uids.add(str(values[0]))
        offset += len(page)
    return [StudyJob(uid, dicomweb_url=url) for uid in sorted(uids)]
