"""PACS intake and the way back: 40-slice 512x512 synthetic head CT studies, the demo model
(embedded onnx), Debian's Orthanc and dcmtk on loopback.

(a) instances per second accepted by ``headct listen`` (C-STORE SCP; each instance fsync'd and
    recorded before its answer) from dcmtk's ``storescu`` (one association per study), and by the
    gateway's STOW-RS (``POST /dicomweb/studies``, one multipart request per study, the body built
    beforehand), against ``storescu`` into Orthanc on the same machine, interleaved study by study
    (each target gets each study once, so none is a duplicate). Target: the listener >= 0.8x
    Orthanc's rate. The store's quiet period is long here, so no triage competes with intake.
(b) from the last instance acknowledged to the SR visible in Orthanc (QIDO-RS), less the quiet
    period: ``headct listen`` with Orthanc as its DIMSE destination; the claim (worker poll), the
    triage, the SR and key image build, the delivery (delivery poll) and Orthanc's storing. p50
    and p95 over a handful of studies, sent one at a time.

Run: ``python -m bench.pacs``. Results go to bench/results/pacs.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pydicom

from bench.common import median, write_result
from service.settings import DEFAULT_MODEL_REPOSITORY
from testing.gateway_process import gateway_process
from testing.listener_process import listener_process
from testing.orthanc import OrthancServer, orthanc_server, storescu
from testing.studies import multipart_related, write_synthetic_study

ROOT = Path(__file__).resolve().parent.parent
SLICES, MATRIX = 40, 512
AE_TITLE = "HEADCT"
LISTEN = [sys.executable, "-m", "service.cli", "listen"]
SERVE = [sys.executable, "-m", "service.cli", "serve"]
LATENCY_QUIET_S = 2.0
POLL_S = 0.2
TIMEOUT_S = 180.0


def _env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HEADCT_MODEL_REPOSITORY": str(DEFAULT_MODEL_REPOSITORY),
        "HEADCT_DATA_DIR": str(data_dir),
        "HEADCT_WORKER_POLL_S": str(POLL_S),
        "HEADCT_LISTEN_AE_TITLE": AE_TITLE,
        "HEADCT_LOG_LEVEL": "WARNING",
    }
    env.update({"HEADCT_" + k.upper(): v for k, v in settings.items()})
    return env


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _stow(url: str, body: bytes, content_type: str) -> None:
    response = httpx2.post(
        url + "/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=TIMEOUT_S,
    )
    if response.status_code != 200:
        raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.text[:500]}")


def throughput(studies: list[list[Path]], workdir: Path) -> dict[str, Any]:
    """Seconds per study for each target, interleaved study by study."""
    quiet = {"study_quiet_s": "3600"}
    times: dict[str, list[float]] = {"orthanc": [], "listener": [], "stowrs": []}
    with (
        orthanc_server(workdir / "orthanc-a") as pacs,
        listener_process(
            LISTEN,
            log=workdir / "listener-a.log",
            env=_env(workdir / "listener-a", **quiet),
            cwd=ROOT,
            ae_title=AE_TITLE,
            calling_ae="STORESCU",
        ) as listener,
        gateway_process(
            SERVE, log=workdir / "gateway.log", env=_env(workdir / "gateway", **quiet), cwd=ROOT
        ) as gateway,
    ):
        for files in studies:
            body, content_type = multipart_related([p.read_bytes() for p in files])
            times["orthanc"].append(
                _timed(lambda f=files: storescu(f, port=pacs.dicom_port, called_aet=pacs.aet))
            )
            times["listener"].append(
                _timed(lambda f=files: storescu(f, port=listener.port, called_aet=AE_TITLE))
            )
            times["stowrs"].append(_timed(lambda b=body, c=content_type: _stow(gateway.url, b, c)))
    rates = {name: [SLICES / s for s in seconds] for name, seconds in times.items()}
    return {
        "instances_per_s": {
            name: {
                "median": round(median(r), 1),
                "min": round(min(r), 1),
                "max": round(max(r), 1),
            }
            for name, r in rates.items()
        },
        "seconds_per_study": {name: [round(s, 3) for s in v] for name, v in times.items()},
        "listener_vs_orthanc": round(median(rates["listener"]) / median(rates["orthanc"]), 2),
        "stowrs_vs_orthanc": round(median(rates["stowrs"]) / median(rates["orthanc"]), 2),
    }


def _sr_in(pacs: OrthancServer, study_uid: str) -> bool:
    response = httpx2.get(
        f"{pacs.dicomweb_url}/studies/{study_uid}/series",
        params={"Modality": "SR"},
        headers={"Accept": "application/dicom+json"},
        timeout=10,
    )
    return response.status_code == 200 and bool(response.content) and bool(response.json())


def latency(studies: list[list[Path]], workdir: Path) -> dict[str, Any]:
    """Seconds from the last instance acknowledged to the SR in Orthanc, less the quiet period."""
    seconds: list[float] = []
    with orthanc_server(workdir / "orthanc-b") as pacs:
        env = _env(
            workdir / "listener-b",
            study_quiet_s=str(LATENCY_QUIET_S),
            pacs_destinations=f"dimse:{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
        )
        with listener_process(
            LISTEN,
            log=workdir / "listener-b.log",
            env=env,
            cwd=ROOT,
            ae_title=AE_TITLE,
            calling_ae="STORESCU",
        ) as listener:
            for files in studies:
                uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                storescu(files, port=listener.port, called_aet=AE_TITLE)
                last_instance = time.perf_counter()
                while not _sr_in(pacs, uid):
                    if time.perf_counter() - last_instance > TIMEOUT_S:
                        raise RuntimeError(f"no SR in Orthanc; see {listener.log}")
                    time.sleep(0.05)
                seconds.append(time.perf_counter() - last_instance - LATENCY_QUIET_S)
    return {
        "seconds": [round(s, 2) for s in seconds],
        "p50_s": round(float(np.percentile(seconds, 50)), 2),
        "p95_s": round(float(np.percentile(seconds, 95)), 2),
        "mean_s": round(statistics.mean(seconds), 2),
    }


def _table(payload: dict[str, Any]) -> str:
    rate = payload["throughput"]["instances_per_s"]
    lat = payload["latency"]
    before, after = payload["load_average_before_after"]
    rows = "\n".join(
        f"| {label} | {rate[name]['median']} | {rate[name]['min']} | {rate[name]['max']} |"
        for name, label in (
            ("orthanc", "`storescu` into Orthanc (the anchor)"),
            ("listener", "`storescu` into `headct listen`"),
            ("stowrs", "STOW-RS into the gateway (one request per study)"),
        )
    )
    ratio = payload["throughput"]["listener_vs_orthanc"]
    verdict = "meets" if ratio >= 0.8 else "misses"
    return f"""# PACS benchmark ({payload["study"]})

**Shared 2-core machine**: other jobs ran at the same time (1-minute load average {before}
before, {after} after), so compare ratios, not absolute rates.

## Instances accepted per second ({payload["rounds"]} studies each, interleaved)

| target | median | min | max |
|---|---|---|---|
{rows}

`headct listen` / Orthanc at the median: **{ratio}x** ({verdict} the 0.8x target); STOW-RS /
Orthanc: **{payload["throughput"]["stowrs_vs_orthanc"]}x**. Every instance we accept is written,
fsync'd (file and folder) and committed to SQLite (synchronous=FULL) before it is acknowledged.
Orthanc runs with its default configuration.

## Last instance to the SR in Orthanc ({len(lat["seconds"])} studies, one at a time)

p50 **{lat["p50_s"]} s**, p95 **{lat["p95_s"]} s** (each: {", ".join(map(str, lat["seconds"]))} s),
with the {LATENCY_QUIET_S:g} s quiet period taken off. It covers waiting for the worker's poll
({POLL_S:g} s), the triage by the demo model (embedded onnxruntime), reading the stored instances
back, building the SR and key image (highdicom), the delivery loop's poll ({POLL_S:g} s), the
C-STORE into Orthanc, and the QIDO-RS poll that saw it (50 ms).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="studies per throughput target")
    parser.add_argument("--latency-studies", type=int, default=6)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as tmp:
        workdir = Path(tmp)
        count = args.rounds + args.latency_studies
        studies = [
            write_synthetic_study(
                workdir / f"study-{i}", seed=100 + i, slices=SLICES, matrix=MATRIX
            )
            for i in range(count)
        ]
        upload_mb = sum(p.stat().st_size for p in studies[0]) / 1e6
        payload: dict[str, Any] = {
            "study": f"{SLICES}-slice {MATRIX}x{MATRIX} synthetic, {upload_mb:.1f} MB per study",
            "rounds": args.rounds,
            "throughput": throughput(studies[: args.rounds], workdir),
            "latency": latency(studies[args.rounds :], workdir),
        }
    load_after = os.getloadavg()
    payload["load_average_before_after"] = [round(load_before[0], 2), round(load_after[0], 2)]
    payload["cpus"] = os.cpu_count()
    path = write_result("pacs", payload, _table(payload))
    print(path.read_text())


if __name__ == "__main__":
    main()
