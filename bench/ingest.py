"""Ingest throughput: a 40-slice 512x512 synthetic head CT, uncompressed and JPEG 2000 lossless.

(a) floor: pydicom read + decode of every file, nothing else;
(b) ours: ``service.ingest.ingest_study`` to the default 32x256x256 model grid (series grouping
    and selection, ordering, HU, resampling);
(c) MONAI ``LoadImage(reader="PydicomReader")`` on the folder plus ``Resize`` to the same grid,
    timed in its own process (with torch imported, numpy in that process runs slower).

Targets: (b) within 1.3x of (a) uncompressed, and faster than (c). Run: ``python -m bench.ingest``.
Results go to bench/results/ingest.{json,md}. Times are medians of interleaved rounds; compare
the ratios, not the absolute numbers (the machines are shared).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from bench.common import interleaved, median, write_result
from service.ingest import ingest_study
from service.preprocess import ModelGrid
from synth import SynthOptions, generate_study, write_study

GRID = ModelGrid(depth=32, height=256, width=256)


def _floor(files: list[Path]) -> None:
    for path in files:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the point


def _ours(folder: Path) -> None:
    ingest_study([folder], grid=GRID)


def _monai(folder: Path) -> Callable[[], None]:
    from monai.transforms import LoadImage, Resize

    loader = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)
    resize = Resize(spatial_size=(GRID.width, GRID.height, GRID.depth), mode="area")

    def run() -> None:
        resize(loader(str(folder)))

    return run


def _monai_times(folder: Path, rounds: int) -> list[float]:
    """MONAI timed in its own process: importing torch beside our ingest slows numpy there
    (about 1.5x, measured), and the gateway that runs our ingest never imports torch."""
    command = [sys.executable, "-m", "bench.ingest", "--monai-worker", str(folder),
               "--rounds", str(rounds)]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [float(t) for t in json.loads(out.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--monai-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.monai_worker:
        times = interleaved({"monai": _monai(args.monai_worker)}, args.rounds)["monai"]
        print(json.dumps(times))
        return

    rows = []
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for compression in ("none", "jpeg2000"):
            options = SynthOptions(slices=args.slices, matrix=512, compression=compression)
            study = generate_study(rng, options)
            folder = Path(tmp) / compression
            files = write_study(study, folder, options, rng)
            cases = {"floor": lambda f=files: _floor(f), "ours": lambda d=folder: _ours(d)}
            times = interleaved(cases, args.rounds)
            times["monai"] = _monai_times(folder, args.rounds)
            per_second = {k: len(files) / median(v) for k, v in times.items()}
            entry = {
                "slices": len(files),
                "median_s": {k: median(v) for k, v in times.items()},
                "slices_per_s": per_second,
                "ours_over_floor_time": median(times["ours"]) / median(times["floor"]),
            }
            if "monai" in times:
                entry["monai_over_ours_time"] = median(times["monai"]) / median(times["ours"])
            results[compression] = entry
            rows.append((compression, entry))

    lines = [
        "# Ingest benchmark (synthetic 512x512 head CT; 32x256x256 model grid)",
        "",
        "| input | slices | (a) floor slices/s | (b) ours slices/s | (c) MONAI slices/s "
        "| (b)/(a) time | (c)/(b) time |",
        "|---|---|---|---|---|---|---|",
    ]
    for compression, e in rows:
        sps = e["slices_per_s"]
        lines.append(
            f"| {compression} | {e['slices']} | {sps['floor']:.0f} | {sps['ours']:.0f} | "
            f"{sps.get('monai', float('nan')):.0f} | {e['ours_over_floor_time']:.2f}x | "
            f"{e.get('monai_over_ours_time', float('nan')):.2f}x |"
        )
    lines += ["", "Targets: (b)/(a) <= 1.3x for uncompressed input; (c)/(b) > 1.", ""]
    table = "\n".join(lines)
    path = write_result("ingest", {"grid": [GRID.depth, GRID.height, GRID.width], **results}, table)
    print(table)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
