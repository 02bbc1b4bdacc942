"""The abuse campaign as one command, against a real gateway process on loopback.

    PYTHONPATH=. python -m bench.abuse [--budget-s 1800] [--fuzz 10000] [--workers 4] [--note TEXT]
        [--model demo|fixture]

Starts ``headct serve`` (the embedded model) on a free port with its own upload folder, then:

- real files: every DICOM file pydicom and pydicom-data ship, each as a raw body;
- bombs: declared frames, uneven pixel spacing, a deflate bomb, a zip bomb, 600 MB of zeros,
  a DICOMDIR in a zip; as raw, multipart and zip bodies where they apply;
- malformed HTTP framing over raw sockets;
- slow clients: 16 connections (each from its own loopback address) trickling 1 KB/s while a
  normal study is posted, and 10 from one address (over the per-client cap);
- fuzz: mutated studies (header fields, sizes, truncation, byte flips, transfer syntaxes, mixed
  studies) built from small ``synth`` studies, as multipart, zip and raw bodies, until ``--fuzz``
  are sent or the budget is spent.

It writes bench/results/abuse.md (and .json): requests, outcomes by status, p50/p99 latency,
hangs (answers over 10 s), the server's peak RSS above its idle RSS, and the files left in the
upload folder. Targets: no 5xx, no hangs except valid studies under load, growth < 512 MiB,
nothing left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import psutil
import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

from bench.common import machine_busy_s, others_share, write_result
from bench.gateway import RssSampler, _model_repository
from synth import SynthOptions, generate_study, write_study
from testing.gateway_process import gateway_process
from tests.conftest import real_dicom_files

ROOT = Path(__file__).resolve().parent.parent
HANG_S = 10.0
MIB = 1024 * 1024
Body = tuple[str, bytes | Callable[[], Iterator[bytes]]]  # content type, bytes or a generator


@dataclass
class Phase:
    name: str
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    hangs: int = 0
    notes: list[str] = field(default_factory=list)

    def record(self, status: str, latency: float) -> None:
        self.statuses[status] += 1
        self.latencies.append(latency)
        self.hangs += latency > HANG_S

    def row(self) -> str:
        lat = np.array(self.latencies or [0.0]) * 1e3
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"| {self.name} | {len(self.latencies)} | {codes} | {np.percentile(lat, 50):.0f} | "
            f"{np.percentile(lat, 99):.0f} | {lat.max():.0f} | {self.hangs} |"
        )


# ---- bodies ----


def multipart(files: list[tuple[str, bytes]], boundary: str = "abuse0b0und") -> Body:
    out = io.BytesIO()
    for name, data in files:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/dicom\r\n\r\n".encode()
        )
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", out.getvalue()


def zipped(files: list[tuple[str, bytes]]) -> Body:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(f"study/{name}", data)
    return "application/zip", buffer.getvalue()


def as_bodies(files: list[tuple[str, bytes]]) -> list[Body]:
    return [multipart(files), zipped(files), ("application/dicom", files[0][1])]


def post(
    client: httpx2.Client,
    url: str,
    body: Body,
    phase: Phase,
    timeout: float = 60,
    label: str = "",
) -> int:
    content_type, content = body
    content = content() if callable(content) else content
    started = time.perf_counter()
    try:
        response = client.post(
            url + "/v1/triage",
            content=content,
            headers={"Content-Type": content_type},
            timeout=timeout,
        )
        status = str(response.status_code)
        if response.status_code >= 400 and "problem+json" not in response.headers.get(
            "content-type", ""
        ):
            phase.notes.append(f"{status} without problem+json")
    except httpx2.HTTPError as exc:
        status = f"no answer ({type(exc).__name__})"
    phase.record(status, time.perf_counter() - started)
    if label:
        phase.notes.append(f"{label}: {status}")
    return int(status) if status.isdigit() else 0


# ---- studies ----


def synth_study(
    seed: int, slices: int = 16, matrix: int = 64, compression: str = "none"
) -> list[tuple[str, bytes]]:
    options = SynthOptions(slices=slices, matrix=matrix, compression=compression)
    study = generate_study(np.random.default_rng(seed), options)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_study(study, Path(tmp), options, np.random.default_rng(seed + 1))
        return [(p.name, p.read_bytes()) for p in paths]


def edit(data: bytes, **values: Any) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def deflate_bomb(base: bytes, inflated: int = 1024 * MIB) -> bytes:
    """A Deflated Explicit VR Little Endian file whose data set inflates to ``inflated`` bytes."""
    ds = pydicom.dcmread(io.BytesIO(base))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    # the file meta group as pydicom writes it, then our own deflated data set: one private OB
    # element of zeros
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    element = b"\x09\x00\x10\x10OB\x00\x00" + (inflated).to_bytes(4, "little")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(64 * MIB)
    payload = compressor.compress(element)
    for _ in range(inflated // len(chunk)):
        payload += compressor.compress(chunk)
    payload += compressor.flush()
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + payload


def zip_bomb(entry: int = 2048 * MIB) -> bytes:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("study/bomb.dcm", "w", force_zip64=True) as handle,
    ):
        chunk = bytes(64 * MIB)
        for _ in range(entry // len(chunk)):
            handle.write(chunk)
    return buffer.getvalue()


def dicomdir_zip(files: list[tuple[str, bytes]]) -> Body:
    from pydicom.fileset import FileSet

    with tempfile.TemporaryDirectory() as tmp:
        fs = FileSet()
        for _, data in files:
            fs.add(pydicom.dcmread(io.BytesIO(data)))
        fs.write(tmp)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for path in Path(tmp).rglob("*"):
                if path.is_file():
                    archive.write(path, str(path.relative_to(tmp)))
        return "application/zip", buffer.getvalue()


# ---- fuzz ----

_FIELDS: dict[str, list[Any]] = {
    "Rows": [0, 1, 65535, 4097, 15],
    "Columns": [0, 1, 65535, 8192],
    "BitsAllocated": [0, 1, 7, 32, 64],
    "BitsStored": [0, 17, 64],
    "PixelRepresentation": [1, 2],
    "SamplesPerPixel": [0, 3, 9],
    "NumberOfFrames": [0, -1, 2, 1000, 2147483647],
    "PixelSpacing": [[1, 1e-6], [0, 0], [1e6, 1e6], [1, 0.0001], [-1, 1]],
    "SliceThickness": [0, -5, 1e9],
    "ImagePositionPatient": [[0, 0, 1e12], [0, 0, float("nan")], [0, 0]],
    "ImageOrientationPatient": [[0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0], [1, 0]],
    "RescaleSlope": [0, 1e30, -1],
    "RescaleIntercept": [1e30, -1e30],
    "Modality": ["MR", "", "PHI987654"],
    "SeriesNumber": ["PHI987654", "", "-1"],
    "InstanceNumber": ["x", "99999999999"],
    "PhotometricInterpretation": ["RGB", "PALETTE COLOR", "YBR_FULL", "x"],
    "SeriesInstanceUID": ["1.2.3", "", "not a uid"],
}
_SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.1.99",
    "1.2.3.4.5",
]


def fuzzed(rng: random.Random, studies: list[list[tuple[str, bytes]]]) -> tuple[str, Body]:
    files = list(rng.choice(studies))
    kind = rng.choice(["field", "field", "flip", "truncate", "size", "syntax", "mixed", "valid"])
    index = rng.randrange(len(files))
    name, data = files[index]
    if kind == "field":
        for _ in range(rng.randint(1, 3)):
            keyword = rng.choice(list(_FIELDS))
            target = rng.sample(range(len(files)), k=rng.randint(1, len(files)))
            value = rng.choice(_FIELDS[keyword])
            for i in target:
                with contextlib.suppress(Exception):  # pydicom refused to write it: keep it
                    files[i] = (files[i][0], edit(files[i][1], **{keyword: value}))
    elif kind == "flip":
        mutable = bytearray(data)
        for _ in range(rng.randint(1, 64)):
            mutable[rng.randrange(len(mutable))] ^= 1 << rng.randrange(8)
        files[index] = (name, bytes(mutable))
    elif kind == "truncate":
        files[index] = (name, data[: rng.randrange(len(data))])
    elif kind == "size":
        files = rng.choice(
            [files[: rng.randint(1, len(files))], files * rng.randint(2, 4), [files[0]] * 40]
        )
    elif kind == "syntax":
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.file_meta.TransferSyntaxUID = rng.choice(_SYNTAXES)
        out = io.BytesIO()
        try:
            ds.save_as(out, enforce_file_format=False)
            files[index] = (name, out.getvalue())
        except Exception:
            files[index] = (name, data)
    elif kind == "mixed":
        other = rng.choice(studies)
        files = files[: len(files) // 2] + other[len(other) // 2 :]
    bodies = as_bodies(files)
    return kind, rng.choice(bodies[:2]) if len(files) > 1 else rng.choice(bodies)


# ---- slow clients and framing (raw sockets) ----


def raw_exchange(host: str, port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=15, source_address=(source, 0)) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def trickle(host: str, port: int, source: str, phase: Phase, rate: int = 1024) -> None:
    """A 1 MB zip body at ``rate`` bytes/s until the server answers or 60 s pass."""
    started = time.perf_counter()
    status = "no answer"
    try:
        with socket.create_connection((host, port), timeout=60, source_address=(source, 0)) as s:
            s.sendall(
                b"POST /v1/triage HTTP/1.1\r\nHost: x\r\nContent-Type: application/zip\r\n"
                b"Content-Length: 1048576\r\n\r\nPK\x03\x04"
            )
            s.setblocking(False)
            deadline = time.monotonic() + 60
            answer = b""
            while time.monotonic() < deadline:
                try:
                    answer += s.recv(65536)
                    if answer:
                        break
                except BlockingIOError:
                    pass
                with contextlib.suppress(OSError):  # BlockingIOError included
                    s.send(bytes(rate // 10))
                time.sleep(0.1)
            if answer:
                status = answer.split(b" ", 2)[1].decode()
    except OSError as exc:
        status = f"no answer ({type(exc).__name__})"
    phase.record(status, time.perf_counter() - started)


# ---- the campaign ----


class CpuShare:
    """The share of the machine's CPU time that processes other than the server and this campaign
    used from now until ``others()``: system busy time minus theirs. Says whether the campaign
    ran alone, instead of a sentence written by hand."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self.own = psutil.Process()
        self.started = time.monotonic()
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        server, own = self.server.cpu_times(), self.own.cpu_times()
        return machine_busy_s(), server.user + server.system, own.user + own.system

    def others(self) -> float:
        busy, server, own = (b - a for a, b in zip(self.start, self._sample(), strict=True))
        return others_share(busy, server + own, time.monotonic() - self.started)


def run(
    budget_s: float, fuzz: int, workers: int, note: str = "", model: str = "demo"
) -> dict[str, Any]:
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="headct-abuse-"))
    upload_dir = tmp / "uploads"
    upload_dir.mkdir()
    if model == "fixture":
        from testing.onnx_fixture import write_fixture_repository

        write_fixture_repository(tmp / "repo", depth=32, height=128, width=128)
        repository, model_note = (
            tmp / "repo",
            (
                "test fixture model (window means, near-zero inference: the campaign measures the "
                "gateway's bounds, and the fuzz rate is then set by ingest, not by the model)"
            ),
        )
    else:
        repository, model_note = _model_repository(tmp)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HEADCT_LOG_LEVEL": "WARNING",
        "HEADCT_UPLOAD_DIR": str(upload_dir),
        "HEADCT_SPOOL_MEMORY_BYTES": str(MIB),
        "HEADCT_ONNX_INTRA_OP_THREADS": "1",
    }
    command = [sys.executable, "-m", "service.cli", "serve", "--model-repository", str(repository)]
    studies = [synth_study(1), synth_study(2, compression="rle"), synth_study(3, slices=20)]
    studies.append(synth_study(4, compression="jpeg2000"))
    normal = multipart(studies[0])
    phases: list[Phase] = []
    with gateway_process(command, log=tmp / "server.log", env=env, cwd=ROOT) as server:
        url = server.url
        host, port = url.removeprefix("http://").split(":")
        with RssSampler(server.process.pid) as rss, httpx2.Client() as client:
            time.sleep(0.5)
            idle_rss = min(rss.samples)
            cpu = CpuShare(server.process.pid)

            phase = Phase("real files (raw application/dicom)")
            phases.append(phase)
            for path in real_dicom_files():
                post(client, url, ("application/dicom", path.read_bytes()), phase)

            phase = Phase("bombs (frames, spacing, deflate, zip, zeros, DICOMDIR)")
            phases.append(phase)
            slice0 = studies[0][0][1]
            frames = [("frames.dcm", edit(slice0, NumberOfFrames=v)) for v in (2147483647, 10**6)]
            for file, frame_count in zip(frames, (2147483647, 10**6), strict=True):
                for body, how in zip(as_bodies([file]), ("multipart", "zip", "raw"), strict=True):
                    post(client, url, body, phase, label=f"{frame_count} frames, {how}")
            for spacing in ([1, 1e-6], [1, 0.0001], [1e-6, 1]):
                files = [(n, edit(d, PixelSpacing=spacing)) for n, d in studies[0]]
                for body, how in zip(as_bodies(files)[:2], ("multipart", "zip"), strict=True):
                    post(client, url, body, phase, label=f"PixelSpacing {spacing}, {how}")
            bomb = deflate_bomb(slice0)
            phase.notes.append(f"deflate bomb: {len(bomb) // 1024} KB inflating to 1 GiB")
            for body, how in zip(
                as_bodies([("deflate.dcm", bomb)]), ("multipart", "zip", "raw"), strict=True
            ):
                post(client, url, body, phase, label=f"deflate bomb, {how}")
            four = [(f"deflate{i}.dcm", bomb) for i in range(4)] + studies[0]
            post(client, url, multipart(four), phase, label="4 deflate bombs + a study")
            zbomb = zip_bomb()
            phase.notes.append(f"zip bomb: {len(zbomb) // 1024} KB inflating to 2 GiB")
            post(client, url, ("application/zip", zbomb), phase, label="zip bomb, raw")
            post(client, url, multipart([("bomb.zip", zbomb)]), phase, label="zip bomb, multipart")

            def zeros() -> Iterator[bytes]:
                for _ in range(600):
                    yield bytes(MIB)

            for kind in ("application/dicom", "application/zip"):
                post(client, url, (kind, zeros), phase, label=f"600 MB of zeros as {kind}")
            post(client, url, dicomdir_zip(studies[0]), phase, label="a study with its DICOMDIR")

            phase = Phase("malformed framing (raw sockets)")
            phases.append(phase)
            for data in (
                b"POST /v1/triage HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                b"POST /v1/triage HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                b"\x16\x03\x01 garbage \xff\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n",
            ):
                started = time.perf_counter()
                answer = raw_exchange(host, int(port), data)
                status = answer.split(b" ", 2)[1].decode() if answer else "no answer"
                if b"application/problem+json" not in answer:
                    phase.notes.append(f"{status} without problem+json")
                phase.record(status, time.perf_counter() - started)

            phase = Phase("slow clients: 16 trickling at 1 KB/s")
            phases.append(phase)
            normal_phase = Phase("normal study while 16 trickle")
            phases.append(normal_phase)
            threads = [
                threading.Thread(target=trickle, args=(host, int(port), f"127.0.0.{10 + i}", phase))
                for i in range(16)
            ]
            for thread in threads:
                thread.start()
            time.sleep(2)
            post(client, url, normal, normal_phase)
            for thread in threads:
                thread.join()
            phase = Phase("one address, 10 trickling (cap 8)")
            phases.append(phase)
            threads = [
                threading.Thread(target=trickle, args=(host, int(port), "127.0.0.9", phase))
                for _ in range(10)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

            phase = Phase("fuzzed uploads")
            phases.append(phase)
            kinds: Counter[str] = Counter()
            stop_at = began + budget_s - 20
            rng = random.Random(0)
            lock = threading.Lock()

            def fuzz_one(i: int) -> None:
                if time.monotonic() > stop_at:
                    return
                with lock:
                    seed = rng.random()
                kind, body = fuzzed(random.Random(seed), studies)
                with lock:
                    kinds[kind] += 1
                with httpx2.Client() as own:
                    post(own, url, body, phase)

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(fuzz_one, range(fuzz)))
            phase.notes.append(
                "mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            )
            healthz = client.get(url + "/healthz", timeout=5).status_code
            peak_rss = max(rss.samples)
            others_cpu = cpu.others()
        left = sorted(str(p.relative_to(upload_dir)) for p in upload_dir.rglob("*"))
    return {
        "model": model_note,
        "budget_s": budget_s,
        "elapsed_s": round(time.monotonic() - began, 1),
        "fuzz_requested": fuzz,
        "phases": [
            {
                "name": p.name,
                "requests": len(p.latencies),
                "statuses": dict(p.statuses),
                "p50_ms": float(np.percentile(p.latencies or [0], 50) * 1e3),
                "p99_ms": float(np.percentile(p.latencies or [0], 99) * 1e3),
                "hangs": p.hangs,
                "notes": p.notes,
            }
            for p in phases
        ],
        "rows": [p.row() for p in phases],
        "idle_rss_mib": round(idle_rss / MIB, 1),
        "peak_rss_mib": round(peak_rss / MIB, 1),
        "healthz_after": healthz,
        "files_left": left,
        "cpus": os.cpu_count(),
        "others_cpu_share": round(others_cpu, 3),
        "note": note,
    }


def table(result: dict[str, Any]) -> str:
    total = Counter[str]()
    for phase in result["phases"]:
        total.update(phase["statuses"])
    fivexx = sum(v for k, v in total.items() if k.startswith("5"))
    lines = [
        "# Abuse campaign against a real gateway process (`python -m bench.abuse`)",
        "",
        f"Model: {result['model']}. Ran {result['elapsed_s']} s of a {result['budget_s']:g} s "
        f"budget; {result['fuzz_requested']} fuzzed uploads requested. Machine: "
        f"{result['cpus']} cores; processes other than the server and the campaign used "
        f"{result['others_cpu_share']:.0%} of its CPU time during the run (measured). "
        "Latencies are upper bounds under the campaign's own load, not benchmarks."
        + (f" {result['note']}" if result["note"] else ""),
        "",
        "| phase | requests | outcomes by status | p50 ms | p99 ms | max ms | hangs (> 10 s) |",
        "|---|---|---|---|---|---|---|",
        *result["rows"],
        "",
        f"- requests: {sum(total.values())}; responses 5xx: {fivexx}; outcomes: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(total.items())),
        f"- server RSS: idle {result['idle_rss_mib']} MiB, peak {result['peak_rss_mib']} MiB "
        f"(growth {result['peak_rss_mib'] - result['idle_rss_mib']:.1f} MiB)",
        f"- /healthz after the campaign: {result['healthz_after']}",
        f"- files left in the upload folder: {len(result['files_left'])}",
    ]
    for phase in result["phases"]:
        for note in phase["notes"]:
            lines.append(f"- {phase['name']}: {note}")
    return "\n".join(lines) + "\n"


def main() -> None:
    warnings.filterwarnings("ignore")  # pydicom and zipfile on the mutated files: expected
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=1800.0)
    parser.add_argument("--fuzz", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--note", default="", help="A sentence for the results (conditions).")
    parser.add_argument(
        "--model",
        choices=("demo", "fixture"),
        default="demo",
        help="demo: the shipped model; fixture: a near-zero-cost test model (more fuzz per s)",
    )
    args = parser.parse_args()
    result = run(args.budget_s, args.fuzz, args.workers, args.note, args.model)
    path = write_result("abuse", {k: v for k, v in result.items() if k != "rows"}, table(result))
    print(path.read_text())
    print(json.dumps({"files_left": result["files_left"]}))


if __name__ == "__main__":
    main()
