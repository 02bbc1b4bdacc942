"""Where results go: a PACS's DICOMweb endpoint (STOW-RS) or a DICOM node (C-STORE), written in
settings as ``dicomweb:http://host:port/dicom-web`` or ``dimse:AET@host:port``.

Parsed at start-up (``service.settings``), so a mistyped destination stops the deployment with a
sentence that says what is wrong, not the first delivery. Nothing here opens a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

MAX_AE_TITLE_CHARS = 16
DEFAULT_CALLING_AET = "HEADCT"  # our AE title toward a DIMSE destination, unless configured


class DestinationKind(StrEnum):
    DICOMWEB = "dicomweb"
    DIMSE = "dimse"


@dataclass(frozen=True)
class DicomwebDestination:
    """A DICOMweb service root; instances are stored with ``POST {url}/studies``."""

    url: str

    @property
    def kind(self) -> DestinationKind:
        return DestinationKind.DICOMWEB

    def __str__(self) -> str:
        return f"dicomweb:{self.url}"


@dataclass(frozen=True)
class DimseDestination:
    """A DICOM node: its AE title (the called AE), host and port."""

    ae_title: str
    host: str
    port: int

    @property
    def kind(self) -> DestinationKind:
        return DestinationKind.DIMSE

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"dimse:{self.ae_title}@{host}:{self.port}"


Destination = DicomwebDestination | DimseDestination

EXAMPLES = "dicomweb:http://pacs:8042/dicom-web or dimse:PACS@pacs:104"


def check_ae_title(value: str, what: str) -> str:
    """An AE title as DICOM allows it: 1 to 16 characters of the default character repertoire,
    no backslash or control characters, not only spaces (PS3.5 6.2, AE)."""
    if not value.strip() or len(value) > MAX_AE_TITLE_CHARS:
        raise ValueError(f"{what} {value!r} must be 1 to {MAX_AE_TITLE_CHARS} characters")
    if "\\" in value or not value.isascii() or not value.isprintable():
        raise ValueError(f"{what} {value!r} may hold only printable ASCII without backslashes")
    return value


def _dicomweb(text: str, address: str) -> DicomwebDestination:
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r}: the DICOMweb root must be an http(s) URL, as in {EXAMPLES}")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError:
        raise ValueError(f"{text!r}: the port of {address!r} is not a number") from None
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: the DICOMweb root takes no query or fragment")
    return DicomwebDestination(address.rstrip("/"))


def _dimse(text: str, address: str) -> DimseDestination:
    ae_title, at, node = address.rpartition("@")
    host, colon, port = node.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not at or not colon or not host:
        raise ValueError(f"{text!r}: a DIMSE destination is AET@host:port, as in {EXAMPLES}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return DimseDestination(check_ae_title(ae_title, "the AE title"), host, int(port))


def parse_destination(text: str) -> Destination:
    """``dicomweb:URL`` or ``dimse:AET@host:port``; raises ``ValueError`` saying what is wrong."""
    kind, colon, address = text.strip().partition(":")
    if kind == DestinationKind.DICOMWEB and colon:
        return _dicomweb(text, address)
    if kind == DestinationKind.DIMSE and colon:
        return _dimse(text, address)
    raise ValueError(f"{text!r} is not a destination: write {EXAMPLES}")
