"""Reading a study's files (folders, single files, zip archives, bytes or parsed datasets) into
pydicom datasets.

Every way a file can fail to be DICOM ends here as a specific :class:`IngestError`; nothing below
this module sees raw bytes. Files on disk are read one at a time as they are reached, so a study
is held once, as datasets. Archives are read entry by entry and never extracted, so entry names
cannot escape anywhere (the gateway adds its own limits on sizes before calling this).

A file that is not DICOM at all (a ``notes.txt``, a JPEG, a PDF report exported beside the images)
is left out with a warning when the rest of the study is DICOM; a file that claims to be DICOM
(the ``DICM`` marker) but cannot be read is a damaged part of the study and stops it.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble

from service.errors import CorruptDicomError, EmptyStudyError, NotDicomError, TruncatedDicomError

# Media Storage Directory (DICOMDIR): an index of the files, not an image.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
DEFLATED_UID = "1.2.840.10008.1.2.1.99"
# The bytes that say whether a file can be DICOM: the 128-byte preamble and "DICM".
DICOM_HEAD_BYTES = 132
# A data set without the preamble starts with its lowest tag; one that ``_looks_like_dicom`` can
# accept starts in the meta group (0002) up to the study group (0020), in either byte order.
_FIRST_GROUPS = range(0x0002, 0x0021, 2)
# A deflated data set may inflate to at most this many bytes and this many times its size.
MAX_INFLATED_BYTES = 512 * 1024 * 1024
MAX_INFLATE_RATIO = 50

# A file, folder or zip on disk (named by its file name); one file or zip in memory ("upload"); or
# a named file or zip in memory or on disk (spooled uploads, stored instances). The name is what
# messages and warnings call the file.
FileSource = Path | str | bytes | tuple[str, bytes | Path]
# ... or a named dataset already parsed (a DIMSE listener's).
StudySource = FileSource | tuple[str, Dataset]


@dataclass(frozen=True, slots=True)
class StudyFile:
    """One file of a study: a display name (never a patient identifier) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class LoadedFile:
    name: str
    dataset: Dataset


@dataclass
class LoadedStudy:
    """The DICOM instances of a study, and a warning for each file left out as not DICOM."""

    files: list[LoadedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _ignored_entry(name: str) -> bool:
    """Archive and folder clutter that is never part of a study (macOS forks, dotfiles)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or not parts


def is_zip(data: bytes) -> bool:
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _zip_entries(name: str, archive_file: bytes | Path) -> Iterator[StudyFile]:
    try:
        handle = io.BytesIO(archive_file) if isinstance(archive_file, bytes) else archive_file
        with zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                if info.is_dir() or _ignored_entry(info.filename):
                    continue
                yield StudyFile(f"{name}:{info.filename}", archive.read(info))
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, ValueError) as exc:
        raise CorruptDicomError(f"{name} is a damaged or unsupported zip ({exc}).") from None


def _file_entries(name: str, content: bytes | Path) -> Iterator[StudyFile]:
    """One file (read now, if on disk), or the entries of a zip (read one by one)."""
    if isinstance(content, bytes):
        head = content[:4]
    else:
        with content.open("rb") as handle:
            head = handle.read(4)
    if is_zip(head):
        yield from _zip_entries(name, content)
    else:
        yield StudyFile(name, content if isinstance(content, bytes) else content.read_bytes())


def iter_study_files(sources: Iterable[FileSource]) -> Iterator[StudyFile]:
    """Expand folders (recursively) and zip archives into the individual files of a study."""
    for source in sources:
        if isinstance(source, tuple):
            name, content = source
        elif isinstance(source, bytes):
            name, content = "upload", source
        else:
            content = Path(source)
            name = content.name
        if isinstance(content, Path):
            if content.is_dir():
                children = sorted(p for p in content.rglob("*") if p.is_file())
                yield from iter_study_files(
                    p for p in children if not _ignored_entry(str(p.relative_to(content)))
                )
                continue
            if not content.is_file():
                raise NotDicomError(f"{name} does not exist or is not a file.")
        yield from _file_entries(name, content)


def check_inflated_size(file: StudyFile) -> None:
    """A file in Deflated Explicit VR Little Endian inflates before pydicom parses it: inflate it
    here first, stopping at MAX_INFLATED_BYTES or MAX_INFLATE_RATIO times its size, so that a
    1 MB file cannot become 1 GiB (the upload's own size and zip limits do not apply inside a
    DICOM file)."""
    if DEFLATED_UID.encode() not in file.data[:4096]:
        return
    stream = io.BytesIO(file.data)
    try:
        read_preamble(stream, True)
        meta = _read_file_meta_info(stream)
    except Exception:
        return  # not a readable meta header: read_dataset says what is wrong
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED_UID:
        return
    compressed = file.data[stream.tell() :]
    limit = min(MAX_INFLATED_BYTES, max(1, len(compressed)) * MAX_INFLATE_RATIO)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(compressed, limit + 1)
    except zlib.error:
        raise CorruptDicomError(f"{file.name}: its deflated data set is damaged.") from None
    if len(inflated) > limit:
        raise CorruptDicomError(
            f"{file.name}: its deflated data set inflates past {limit} bytes "
            f"({MAX_INFLATE_RATIO}x its size, at most {MAX_INFLATED_BYTES}); refused unread."
        )


def could_be_dicom(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first DICOM_HEAD_BYTES, or all of a shorter
    file) can be one ``read_dataset`` accepts: the Part 10 marker, or a first tag in the groups
    a preamble-less data set starts with. Zeros, text, JPEG or PDF bytes cannot."""
    if head[128:132] == b"DICM":
        return True
    if len(head) < 4:
        return False
    little, big = int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")
    return little in _FIRST_GROUPS or big in _FIRST_GROUPS


def read_dataset(file: StudyFile) -> Dataset:
    """Parse one file. Files without the 128-byte preamble are accepted if they parse as DICOM."""
    if len(file.data) == 0:
        raise NotDicomError(f"{file.name} is empty.")
    if not could_be_dicom(file.data[:DICOM_HEAD_BYTES]):
        raise NotDicomError(f"{file.name} is not a DICOM file.")
    check_inflated_size(file)
    try:
        try:
            ds = pydicom.dcmread(io.BytesIO(file.data))
        except InvalidDicomError:
            ds = pydicom.dcmread(io.BytesIO(file.data), force=True)
        if not (_looks_like_dicom(ds) or is_dicomdir(ds)):
            raise NotDicomError(f"{file.name} is not a DICOM file.")
    except NotDicomError:
        raise
    except (EOFError, BufferError):
        raise TruncatedDicomError(f"{file.name} ends before its last element.") from None
    except Exception as exc:  # pydicom raises many types for garbage; each means "not readable"
        # Not the exception's text: it can quote a header value (which may identify a patient).
        raise NotDicomError(
            f"{file.name} could not be parsed as DICOM ({type(exc).__name__})."
        ) from None
    # pydicom keeps the buffer it read from, for deferred reads (none here: every value is read
    # at once). Let it go, or each file would be held twice, as its bytes and as its values.
    ds.buffer = None
    return ds


def is_dicomdir(ds: Dataset) -> bool:
    """A Media Storage Directory (DICOMDIR): an index of a file set, not an image."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
    try:
        return sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds
    except Exception:
        return False


def _looks_like_dicom(ds: Dataset) -> bool:
    """A forced parse of arbitrary bytes often 'succeeds'; require real identifying tags."""
    try:
        keys = set(ds.keys())
    except Exception:
        return False
    identifying = {0x00080016, 0x00080018, 0x00080060, 0x0020000D, 0x0020000E, 0x7FE00010}
    return len(keys & identifying) >= 2 and all(k.group >= 0x0002 for k in keys)


def _claims_dicom(file: StudyFile) -> bool:
    """The Part 10 marker after the 128-byte preamble: the file says it is DICOM."""
    return file.data[128:132] == b"DICM"


def load_study(
    sources: Iterable[StudySource], checkpoint: Callable[[], None] | None = None
) -> LoadedStudy:
    """Read every file of a study. DICOMDIR indexes are skipped; files that are not DICOM at all
    are skipped with a warning while something else is DICOM. Raises on the first damaged file.
    ``checkpoint`` is called before each file (zip entries included); it raises to stop."""
    study = LoadedStudy()
    strays: list[NotDicomError] = []
    for source in sources:
        if isinstance(source, tuple):
            name, content = source
            if isinstance(content, Dataset):
                if not is_dicomdir(content):
                    study.files.append(LoadedFile(name, content))
                continue
            source = (name, content)
        for file in iter_study_files([source]):
            if checkpoint is not None:
                checkpoint()
            try:
                ds = read_dataset(file)
            except NotDicomError as exc:
                if _claims_dicom(file):
                    raise
                strays.append(exc)
                study.warnings.append(f"skipped {file.name}: not DICOM")
                continue
            if not is_dicomdir(ds):
                study.files.append(LoadedFile(file.name, ds))
    if not study.files:
        if len(strays) == 1:
            raise strays[0]
        if strays:
            raise NotDicomError(f"None of the {len(strays)} files is DICOM.")
        raise EmptyStudyError("The upload holds no DICOM files.")
    return study
