"""A real PACS for tests: Debian's Orthanc with its DICOMweb plugin, on free loopback ports.

Orthanc runs in the foreground from a configuration written into ``workdir`` (storage and index
there too), with remote access and authentication off, the DICOMweb plugin under ``/dicom-web/``,
the called AE title checked (a wrong one is refused, as a hospital PACS does), and the DICOM
modalities it may push to. dcmtk's ``storescu`` pushes files into it.

    with orthanc_server(tmp_path, modalities={"HEADCT": ("HEADCT", "127.0.0.1", port)}) as pacs:
        storescu(files, port=pacs.dicom_port, called_aet=pacs.aet)
        httpx2.get(pacs.rest_url + "/studies").json()
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

from testing.gateway_process import free_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
LOG_TAIL_CHARS = 4000


class OrthancStartError(RuntimeError):
    """Orthanc exited, or did not answer ``GET /system`` in time; the message ends with its log."""


class StoreSCUError(RuntimeError):
    """dcmtk's storescu failed; the message carries its output."""


@dataclass(frozen=True)
class OrthancServer:
    rest_url: str  # http://127.0.0.1:PORT (Orthanc's own REST API)
    dicomweb_url: str  # rest_url + "/dicom-web" (QIDO-RS, WADO-RS, STOW-RS)
    dicom_port: int
    aet: str
    process: subprocess.Popen[bytes]
    log: Path


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else "(no log)"


def _write_config(
    workdir: Path,
    *,
    aet: str,
    http_port: int,
    dicom_port: int,
    modalities: Mapping[str, tuple[str, str, int]],
) -> Path:
    config = {
        "Name": f"headct-test-{aet}",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _answers(rest_url: str) -> bool:
    try:
        return httpx2.get(rest_url + "/system", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def orthanc_server(
    workdir: Path,
    *,
    modalities: Mapping[str, tuple[str, str, int]] = {},
    aet: str = "ORTHANC",
    startup_timeout_s: float = 30.0,
) -> Iterator[OrthancServer]:
    """Start Orthanc with its files under ``workdir`` and stop it when the block ends.

    ``modalities`` maps a name to (AE title, host, port) of a DICOM node Orthanc may store to.
    Raises ``OrthancStartError`` with the tail of Orthanc's log if it does not start."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = _distinct_free_ports(2)
    config = _write_config(
        workdir, aet=aet, http_port=http_port, dicom_port=dicom_port, modalities=modalities
    )
    rest_url = f"http://127.0.0.1:{http_port}"
    log = workdir / "orthanc.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [ORTHANC, str(config)], stdout=output, stderr=subprocess.STDOUT, cwd=workdir
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _answers(rest_url):
            if process.poll() is not None or time.monotonic() > deadline:
                reason = (
                    f"exited with {process.returncode}"
                    if process.poll() is not None
                    else f"did not answer GET /system within {startup_timeout_s:g} s"
                )
                raise OrthancStartError(f"Orthanc {reason}; log:\n{_log_tail(log)}")
            time.sleep(0.1)
        yield OrthancServer(rest_url, rest_url + "/dicom-web", dicom_port, aet, process, log)
    finally:
        _stop(process)


def storescu(
    files: Sequence[Path],
    *,
    port: int,
    called_aet: str,
    calling_aet: str = "STORESCU",
    host: str = "127.0.0.1",
    timeout_s: float = 120.0,
) -> None:
    """Store ``files`` with dcmtk's storescu (one association); raises ``StoreSCUError`` with its
    output when any store fails or the association is refused."""
    command = [
        "storescu",
        "--aetitle",
        calling_aet,
        "--call",
        called_aet,
        "--required",  # propose only the SOP classes and transfer syntaxes the files have
        host,
        str(port),
        *map(str, files),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    output = done.stdout + done.stderr
    # storescu exits 0 even when the peer answers a store with a failure status; it logs them.
    if done.returncode != 0 or "E: " in output:
        raise StoreSCUError(f"storescu exited with {done.returncode}:\n{output[-LOG_TAIL_CHARS:]}")
