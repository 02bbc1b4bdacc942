"""Receiving a study upload: streamed to disk under limits, zips checked before anything reads them.

A request body (multipart ``files`` parts, or one raw zip or DICOM file; for STOW-RS, the
``application/dicom`` parts of a ``multipart/related`` body) is written part by part,
counting bytes and files as it arrives, so an oversized one is refused as soon as it crosses a
limit. Parts stay in memory while the request's total is under a small budget (a typical study is
a few MB, and creating dozens of files costs more than the gateway's whole HTTP overhead); past
it they go to a private temporary folder, so a large study never sits in memory twice. Zip archives
are inspected from their central directory (declared sizes bound what ``zipfile`` will inflate):
too many entries, too much uncompressed data, a suspicious compression ratio (a zip bomb), or an
entry with an absolute or ``..`` path are refused before ingest opens the archive. The folder is
removed when the upload is closed, on every path.

Content is judged from its first bytes (``service.dicom_io.could_be_dicom``, the same test ingest
applies): a raw body that is neither a zip nor DICOM is refused as soon as its first 132 bytes
have arrived, without reading the rest; a multipart part that is neither (a ``notes.txt`` beside
the images) keeps only those first bytes, so ingest can skip it with a warning naming it, and the
rest of it is counted and dropped (more than ``MAX_STRAY_BYTES`` of it in one request is refused).
The body's arrival is paced (``paced``): a deadline for the whole of it, and a minimum average
rate after a grace period, so a client trickling bytes is cut off rather than held for minutes.

Nothing here knows HTTP; the errors (``service.errors``) carry their status for the API layer.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, TYPE_CHECKING

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.dicom_io import DICOM_HEAD_BYTES, could_be_dicom, is_zip
from service.errors import (
    EmptyUploadError,
    MalformedUploadError,
    NotDicomError,
    TooManyFilesError,
    UnsafeZipEntryError,
    UnsupportedMediaTypeError,
    UploadTimeoutError,
    UploadTooLargeError,
    ZipRatioError,
    ZipTooLargeError,
)

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MULTIPART = "multipart/form-data"
RELATED = "multipart/related"  # STOW-RS: one application/dicom part per instance
ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
DICOM_TYPE = "application/dicom"
ACCEPTED_TYPES = (MULTIPART, *ZIP_TYPES, DICOM_TYPE)
FILES_FIELD = "files"
# Bytes of multipart parts that are neither DICOM nor zip (reports, notes, images beside a study)
# a request may carry; they are dropped as they arrive, past this the request is refused.
MAX_STRAY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_bytes: int
    max_files: int
    max_zip_uncompressed_bytes: int
    max_zip_ratio: float
    timeout_s: float | None = None  # the whole body
    min_rate_bytes_s: float = 0.0  # average, once grace_s have passed; 0: none
    grace_s: float = 0.0


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """One uploaded file: on disk at ``path``, or (small uploads) held in ``data``."""

    name: str  # as the client named it; shown in error messages, never logged
    size: int
    head: bytes  # the first DICOM_HEAD_BYTES, to recognise a zip or DICOM without reopening it
    path: Path | None = None
    data: bytes | None = None

    @property
    def content(self) -> bytes | Path:
        """Its bytes if it stayed in memory, else the path it was spooled to."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path

    def open(self) -> IO[bytes]:
        content = self.content
        return io.BytesIO(content) if isinstance(content, bytes) else content.open("rb")


@dataclass
class Upload:
    """The spooled files of one request. Close it (or use ``with``) to delete them.

    The temporary folder (under ``spool_dir``) is made when the first file goes to disk."""

    spool_dir: Path | None = None
    files: list[UploadedFile] = field(default_factory=list)
    received_bytes: int = 0
    zip_entries: int = 0
    _folder: Path | None = None

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="headct-upload-", dir=self.spool_dir))
        return self._folder

    @property
    def on_disk(self) -> bool:
        return self._folder is not None

    def sources(self) -> list[tuple[str, bytes | Path]]:
        """The files as study sources (``service.dicom_io.StudySource``): each with its client
        name, and its bytes if it stayed in memory or its spooled path if not. Ingest reads a
        spooled file when it reaches it, so a study is never held as bytes and as datasets at
        once."""
        return [(f.name, f.content) for f in self.files]

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_media_type(content_type: str | None) -> str:
    """The body's media type if ``POST /v1/triage`` takes it."""
    kind = media_type(content_type)
    if kind not in ACCEPTED_TYPES:
        raise UnsupportedMediaTypeError(
            f"Content-Type {kind or 'missing'!r} is not accepted; send multipart/form-data with "
            f"'{FILES_FIELD}' parts, or a raw application/zip or application/dicom body.",
            accepted=list(ACCEPTED_TYPES),
        )
    return kind


def check_declared_length(content_length: str | None, limits: UploadLimits) -> None:
    """Refuse a body whose declared length is over the limit before reading a byte of it."""
    if content_length and content_length.strip().isdigit():
        declared = int(content_length)
        if declared > limits.max_bytes:
            raise UploadTooLargeError(
                f"The upload is {declared} bytes; the limit is {limits.max_bytes}.",
                limit=limits.max_bytes,
            )


# Entries smaller than this are not held to the ratio: they cannot inflate to much, and a small
# slice of air compresses very well.
_RATIO_FLOOR_BYTES = 64 * 1024

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class _Spool:
    """Writes arriving bytes into one file per part, counting bytes and files as it goes.

    While the request's total stays under ``memory_bytes`` its parts are kept in memory (a typical
    study of a few MB never touches the disk); past it, the part being written and every later
    one go to numbered files in the upload's temporary folder. Each part is judged from its first
    ``DICOM_HEAD_BYTES``: a lone body that is neither zip nor DICOM is refused there; a multipart
    part that is neither keeps those bytes only (a stray, for ingest to skip and name).
    """

    def __init__(self, upload: Upload, limits: UploadLimits, memory_bytes: int) -> None:
        self.upload = upload
        self.limits = limits
        self.memory_left = memory_bytes
        self.stray_bytes = 0
        self._handle: IO[bytes] | None = None
        self._buffer: io.BytesIO | None = None
        self._name = ""
        self._path: Path | None = None
        self._size = 0
        self._head = b""
        self._lone = False
        self._judged = False
        self._stray = False

    def add_bytes(self, count: int) -> None:
        self.upload.received_bytes += count
        if self.upload.received_bytes > self.limits.max_bytes:
            raise UploadTooLargeError(
                f"The upload exceeds the limit of {self.limits.max_bytes} bytes.",
                limit=self.limits.max_bytes,
            )

    def begin(self, name: str, *, lone: bool = False) -> None:
        """A new part; ``lone``: the whole request (a raw body), refused at once if not a study."""
        if len(self.upload.files) + 1 > self.limits.max_files:
            raise TooManyFilesError(
                f"The upload holds more than {self.limits.max_files} files.",
                limit=self.limits.max_files,
            )
        self._name, self._size, self._head = name, 0, b""
        self._lone, self._judged, self._stray = lone, False, False
        self._path = None
        if self.memory_left > 0:
            self._buffer = io.BytesIO()
        else:
            self._to_disk()

    def _to_disk(self) -> None:
        index = len(self.upload.files)
        safe = _UNSAFE_CHARS.sub("_", PurePosixPath(self._name.replace("\\", "/")).name)[:64]
        self._path = self.upload.folder / f"{index:05d}-{safe or 'file'}"
        self._handle = self._path.open("wb")
        if self._buffer is not None:
            self._handle.write(self._buffer.getbuffer())
            self._buffer = None

    def _judge(self) -> None:
        """Zip, DICOM, or neither, from the first bytes (all of them, for a shorter part)."""
        self._judged = True
        if not self._head or is_zip(self._head) or could_be_dicom(self._head):
            return
        if self._lone:
            raise NotDicomError(f"{self._name} is neither DICOM nor a zip (from its first bytes).")
        self._stray = True

    def write(self, data: bytes) -> None:
        if not self._judged:
            self._head = (self._head + data[:DICOM_HEAD_BYTES])[:DICOM_HEAD_BYTES]
            if len(self._head) == DICOM_HEAD_BYTES:
                self._judge()
                if self._stray:  # keep the head only: its bytes not yet written, from this chunk
                    keep = self._head[self._size :]
                    self._drop(len(data) - len(keep))
                    data = keep
        elif self._stray:
            self._drop(len(data))
            return
        self._size += len(data)
        if self._buffer is not None:
            self.memory_left -= len(data)
            if self.memory_left < 0:
                self._to_disk()
            else:
                self._buffer.write(data)
                return
        if self._handle is not None:
            self._handle.write(data)

    def _drop(self, count: int) -> None:
        """Bytes of a stray part not kept: counted (and refused past MAX_STRAY_BYTES)."""
        self.stray_bytes += count
        if self.stray_bytes > MAX_STRAY_BYTES:
            raise NotDicomError(
                f"The upload carries more than {MAX_STRAY_BYTES} bytes that are neither DICOM "
                f"nor a zip ({self._name}, from its first bytes)."
            )

    def end(self) -> None:
        if not self._judged:
            self._judge()
        if self._buffer is not None:
            data = self._buffer.getvalue()
            self.upload.files.append(UploadedFile(self._name, self._size, self._head, data=data))
        elif self._handle is not None:
            self._handle.close()
            self.upload.files.append(
                UploadedFile(self._name, self._size, self._head, path=self._path)
            )
        self._buffer = None
        self._handle = None

    def abort(self) -> None:
        self._buffer = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class _MultipartReader:
    """Feeds python-multipart, sending ``files`` parts to the spool and refusing other fields; or
    (``related``) every part, each ``application/dicom`` (or untyped)."""

    def __init__(self, boundary: bytes, spool: _Spool, *, related: bool = False) -> None:
        self.spool = spool
        self.related = related
        self.ended = False
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""
        self._in_file = False
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        self.parser = MultipartParser(boundary, callbacks)

    def _part_begin(self) -> None:
        self._headers = {}
        self._field = self._value = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        if self.related:
            kind = media_type(self._headers.get("content-type"))
            if kind not in ("", DICOM_TYPE):
                raise MalformedUploadError(
                    f"A part of type {kind!r}: this request carries {DICOM_TYPE} parts only."
                )
            self.spool.begin(f"part {len(self.spool.upload.files) + 1}")
            self._in_file = True
            return
        _, options = parse_options_header(self._headers.get("content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if name != FILES_FIELD:
            raise MalformedUploadError(
                f"Unexpected form field {name!r}: send the study as '{FILES_FIELD}' parts.",
            )
        self.spool.begin(filename.decode("utf-8", "replace") if filename else "file")
        self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.spool.write(data[start:end])

    def _part_end(self) -> None:
        self.spool.end()
        self._in_file = False

    def _end(self) -> None:
        self.ended = True


async def paced(chunks: AsyncIterator[bytes], limits: UploadLimits) -> AsyncIterator[bytes]:
    """The chunks, each awaited no longer than the upload's limits allow: the whole body within
    ``timeout_s``, and after ``grace_s`` an average of at least ``min_rate_bytes_s`` (a byte a
    second does not keep a connection). Raises ``UploadTimeoutError`` when either is broken."""
    started = time.monotonic()
    received = 0
    iterator = aiter(chunks)
    while True:
        limit = math.inf if limits.timeout_s is None else limits.timeout_s
        if limits.min_rate_bytes_s > 0:
            limit = min(limit, limits.grace_s + received / limits.min_rate_bytes_s)
        with anyio.move_on_after(started + limit - time.monotonic()) as waited:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
        if waited.cancelled_caught:
            raise UploadTimeoutError(_too_slow(limits, received, time.monotonic() - started))
        received += len(chunk)
        yield chunk


def _too_slow(limits: UploadLimits, received: int, elapsed: float) -> str:
    if limits.timeout_s is not None and elapsed >= limits.timeout_s:
        return f"The upload took longer than {limits.timeout_s:g} s; send it faster or in a zip."
    return (
        f"The upload arrived at {received / max(elapsed, 1e-9):.0f} bytes/s, under the minimum "
        f"of {limits.min_rate_bytes_s:g} bytes/s."
    )


async def receive_upload(
    content_type: str | None,
    chunks: AsyncIterator[bytes],
    limits: UploadLimits,
    spool_dir: Path | None = None,
    memory_bytes: int = 0,
) -> Upload:
    """Spool a request body (to memory up to ``memory_bytes`` in all, then to a temporary folder
    under ``spool_dir``), paced by the limits' deadline and rate, and check any zips in it. On
    any error the folder is removed before the error propagates. A ``multipart/related`` body
    (STOW-RS, whose route checks its media type) is read part by part; any other must be one
    ``check_media_type`` accepts."""
    kind = media_type(content_type)
    if kind != RELATED:
        check_media_type(content_type)
    chunks = paced(chunks, limits)
    upload = Upload(spool_dir)
    spool = _Spool(upload, limits, memory_bytes)
    try:
        if kind in (MULTIPART, RELATED):
            await _receive_multipart(content_type or "", chunks, spool, related=kind == RELATED)
        else:
            spool.begin("upload.zip" if kind in ZIP_TYPES else "upload.dcm", lone=True)
            async for chunk in chunks:
                spool.add_bytes(len(chunk))
                spool.write(chunk)
            spool.end()
        if not upload.files or all(f.size == 0 for f in upload.files):
            hint = "application/dicom parts" if kind == RELATED else f"'{FILES_FIELD}'"
            raise EmptyUploadError(f"The upload holds no files; send the study as {hint}.")
        check_zips(upload, limits)
    except BaseException:
        spool.abort()
        upload.close()
        raise
    return upload


async def _receive_multipart(
    content_type: str, chunks: AsyncIterator[bytes], spool: _Spool, *, related: bool
) -> None:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedUploadError(f"{media_type(content_type)} without a boundary parameter.")
    try:
        reader = _MultipartReader(boundary, spool, related=related)
        async for chunk in chunks:
            spool.add_bytes(len(chunk))
            reader.parser.write(chunk)
        reader.parser.finalize()
    except FormParserError as exc:
        raise MalformedUploadError(f"The multipart body cannot be parsed ({exc}).") from None
    if not reader.ended:
        raise MalformedUploadError("The multipart body ends before its closing boundary.")


def unsafe_entry_name(name: str) -> bool:
    """Absolute paths, drive letters and ``..`` components: names that could escape a folder."""
    normal = name.replace("\\", "/")
    return (
        normal.startswith("/")
        or bool(re.match(r"^[A-Za-z]:", normal))
        or ".." in PurePosixPath(normal).parts
    )


def check_zips(upload: Upload, limits: UploadLimits) -> None:
    """Entry names, counts, total uncompressed size and per-entry ratio of every zip uploaded."""
    total = 0
    for file in upload.files:
        if not is_zip(file.head):
            continue
        try:
            with file.open() as handle, zipfile.ZipFile(handle) as archive:
                entries = [i for i in archive.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise MalformedUploadError(f"{file.name} is a damaged zip ({exc}).") from None
        upload.zip_entries += len(entries)
        if len(upload.files) - 1 + upload.zip_entries > limits.max_files:
            raise TooManyFilesError(
                f"The upload holds more than {limits.max_files} files (zip entries included).",
                limit=limits.max_files,
            )
        for info in entries:
            if unsafe_entry_name(info.filename):
                raise UnsafeZipEntryError(
                    f"{file.name} holds an entry with an absolute or '..' path; refused."
                )
            total += info.file_size
            if total > limits.max_zip_uncompressed_bytes:
                raise ZipTooLargeError(
                    f"The zip entries unpack to more than {limits.max_zip_uncompressed_bytes} "
                    "bytes.",
                    limit=limits.max_zip_uncompressed_bytes,
                )
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > _RATIO_FLOOR_BYTES and ratio > limits.max_zip_ratio:
                raise ZipRatioError(
                    f"A zip entry expands {ratio:.0f}-fold, over the limit of "
                    f"{limits.max_zip_ratio:.0f} (a zip bomb?).",
                    limit=limits.max_zip_ratio,
                )
