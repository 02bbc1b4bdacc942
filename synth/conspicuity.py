"""How much of each finding's signature reaches the model grid, measured on paired phantoms.

The generator's random streams are split so that forcing a finding into a study changes only
that finding's voxels (``synth.study``): the same seed drawn once with no finding and once with
the finding alone (plus what it implies) gives two volumes whose difference is the signature
itself, free of noise. Both are area-averaged to the model grid, as the service resamples, and
the difference is compared with the image noise at that grid: the voxels that change by more
than three noise standard deviations (within the HU span that the model's windows show), the
grid slices they lie on, the peak change, and the ideal observer's detectability d' of the
known signature (its norm over the noise SD). Large or dense findings change thousands of grid
voxels; a signature with a small d' is at the grid's limit whatever model reads it. d' is a
bound, not a prediction: a model must also tell the signature from the variation between heads,
which the pairs remove.

Run: ``python -m synth.conspicuity --out bench/results/demo_model/signatures``. SYNTHETIC.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.findings import FINDING_CODES, FINDINGS
from synth.cooccurrence import close_implications, to_vector
from synth.imaging import form_image
from synth.options import SynthOptions
from synth.study import generate_study

# The span of HU the model's three windows show (brain, subdural, bone: -800 to 2000 HU).
SHOWN_HU = (-800.0, 2000.0)
NOISE_SIGMA_HU = 4.5  # the middle of the generator's 3-6 HU soft-tissue noise
THRESHOLD_SD = 3.0


@dataclass(frozen=True)
class Signature:
    code: str
    implied: list[str]  # other findings drawn with it (its implications)
    studies: int  # pairs measured (a pair whose scan range moved is left out)
    voxels: float  # mean grid voxels changed by more than THRESHOLD_SD noise SDs
    slices: float  # mean grid slices holding such voxels
    peak_hu: float  # mean over pairs of the largest change at the grid
    # Mean over pairs of the ideal observer's detectability of the known signature in white
    # noise at the grid, d' = ||change|| / noise SD: it counts faint but wide changes too.
    detectability: float


def grid_noise_sd(factor: int, rng: np.random.Generator, size: int = 64) -> float:
    """The noise SD (HU) after area averaging ``factor`` x ``factor`` pixels, measured on a flat
    volume reconstructed the way the generator does."""
    flat = np.zeros((4, size * factor, size * factor), np.float32)
    image = form_image(flat, np.ones(4, np.float32), NOISE_SIGMA_HU, rng)
    return float(_area(image, factor)[:, 2:-2, 2:-2].std())


def _area(volume: np.ndarray, factor: int) -> np.ndarray:
    d, h, w = volume.shape
    return volume.reshape(d, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def measure(
    code: str, seeds: int, options: SynthOptions, grid_matrix: int, noise_sd: float
) -> Signature:
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {seeds}")
    if options.matrix % grid_matrix:
        raise ValueError(f"matrix {options.matrix} is not a multiple of the grid {grid_matrix}")
    factor = options.matrix // grid_matrix
    labels = close_implications(to_vector({code}))
    implied = [c for c, v in zip(FINDING_CODES, labels, strict=True) if v and c != code]
    voxels, slices, peaks, snr = [], [], [], []
    for seed in range(seeds):
        pair = [
            generate_study(np.random.default_rng([900, seed]), options, labels=vector)
            for vector in (np.zeros(len(FINDING_CODES), np.uint8), labels)
        ]
        low, high = SHOWN_HU
        a, b = (_area(np.clip(s.hu, low, high), factor) for s in pair)
        change = np.abs(b - a)
        seen = change > THRESHOLD_SD * noise_sd
        voxels.append(int(seen.sum()))
        slices.append(int(seen.any(axis=(1, 2)).sum()))
        peaks.append(float(change.max()))
        snr.append(float(np.sqrt(np.square(change, dtype=np.float64).sum()) / noise_sd))
    return Signature(
        code=code,
        implied=implied,
        studies=seeds,
        voxels=float(np.mean(voxels)),
        slices=float(np.mean(slices)),
        peak_hu=float(np.mean(peaks)),
        detectability=float(np.mean(snr)),
    )


def measure_all(
    seeds: int = 4,
    options: SynthOptions = SynthOptions(),
    grid_matrix: int = 128,
    codes: list[str] | None = None,
) -> dict[str, Any]:
    factor = options.matrix // grid_matrix
    noise_sd = grid_noise_sd(factor, np.random.default_rng(0))
    rows = [measure(c, seeds, options, grid_matrix, noise_sd) for c in codes or FINDING_CODES]
    return {
        "synthetic": True,
        "options": asdict(options),
        "grid": [options.slices, grid_matrix, grid_matrix],
        "noise_sd_hu_at_grid": noise_sd,
        "threshold_sd": THRESHOLD_SD,
        "seeds": seeds,
        "findings": {r.code: asdict(r) for r in rows},
    }


def markdown(result: dict[str, Any], ceiling: dict[str, float] | None = None) -> str:
    findings: dict[str, dict[str, Any]] = result["findings"]
    grid = "x".join(str(x) for x in result["grid"])
    lines = [
        f"# How much of each finding reaches the {grid} grid (paired phantoms)",
        "",
        "**Synthetic phantoms, not patient data.** Each finding is drawn alone (with what it "
        f"implies) into {result['seeds']} phantoms, and each phantom is drawn again with no "
        "finding from the same seed, so that the difference is the signature alone. Both are "
        f"area-averaged to the grid, where the noise is {result['noise_sd_hu_at_grid']:.1f} HU "
        "(SD). d': the ideal observer's detectability of the known signature in white noise (its "
        "norm over the noise SD), a bound that ignores the variation between heads. Voxels: grid "
        f"voxels that change by more than {result['threshold_sd']:g} SDs within the -800 to "
        "2000 HU that the model's windows show; slices: grid slices holding them (means over "
        "phantoms). Smallest d' first."
        + (" Ceiling: the reference CNN's study AUC (`ceiling.md`)." if ceiling else ""),
        "",
        "| finding | category | d' | voxels | slices | peak change (HU) | drawn with |"
        + (" ceiling AUC |" if ceiling else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if ceiling else ""),
    ]
    category = {f.code: f.category.value for f in FINDINGS}
    for code, row in sorted(findings.items(), key=lambda kv: kv[1]["detectability"]):
        implied = ", ".join(f"`{c}`" for c in row["implied"]) or "-"
        cells = (
            f"| `{code}` | {category[code]} | {row['detectability']:,.0f} | "
            f"{row['voxels']:,.0f} | {row['slices']:.1f} | {row['peak_hu']:.0f} | {implied} |"
        )
        if ceiling:
            auc = ceiling.get(code)
            cells += f" {'n/a' if auc is None else f'{auc:.2f}'} |"
        lines.append(cells)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--matrix", type=int, default=256, help="Generated matrix.")
    parser.add_argument("--grid-matrix", type=int, default=128, help="Model grid rows/columns.")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument(
        "--ceiling",
        type=Path,
        default=Path("bench/results/demo_model/ceiling.json"),
        help="headct ceiling's ceiling.json, for its per-finding AUC beside each signature.",
    )
    args = parser.parse_args()
    options = SynthOptions(slices=args.slices, matrix=args.matrix)
    result = measure_all(args.seeds, options, args.grid_matrix)
    ceiling = None
    if args.ceiling.is_file():
        data = json.loads(args.ceiling.read_text())
        ceiling = {c: r["study_auc"] for c, r in data["per_finding"].items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "signatures.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "signatures.md").write_text(markdown(result, ceiling))
    print(args.out / "signatures.md")


if __name__ == "__main__":
    main()
