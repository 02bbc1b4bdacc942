"""Training step cost: seconds per step and peak memory for the linear probe, LoRA and MoLRE.

On the tiny test backbone and on a ViT-B-size DINOv2 (random weights: only the cost is measured),
with the parameter table. LoRA and MoLRE use the same rank and targets, so the ratio MoLRE/LoRA is
the router's and the extra experts' cost (target: at most 1.3x).

Each (backbone, adapter) runs in its own process (peak RSS is per process), rounds interleave the
configurations, and the medians are compared as ratios. Run: ``python -m bench.training``;
results in bench/results/training.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = {
    # backbone: (slices per study, studies per step, grid size)
    "tiny_dinov2": (32, 2, 64),
    "demo_vit": (32, 2, 128),  # the demo model v3-v7 backbone
    "demo_vit_conv": (32, 2, 128),  # demo_vit with a convolutional stem
    "dinov2_base": (4, 1, 224),
}
ADAPTERS = ("probe", "lora", "molre")


def _one(backbone: str, adapter: str, steps: int) -> dict[str, float]:
    import torch

    from training.losses import masked_multilabel_loss
    from training.model import build_model
    from training.molre import MoLREConfig

    torch.manual_seed(0)
    slices, batch, size = CASES[backbone]
    molre = MoLREConfig() if adapter == "molre" else None
    if adapter == "lora":
        molre = MoLREConfig(experts=1)
    model = build_model(backbone, adapter=adapter, molre=molre)  # type: ignore[arg-type]
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    volume = torch.randint(-1024, 1500, (batch, slices, size, size), dtype=torch.int16)
    labels = (torch.rand(batch, 75) < 0.1).float()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators
        start = time.perf_counter()
        loss = masked_multilabel_loss(model(volume).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds_per_step": statistics.median(times[1:]),
        "peak_rss_mib": peak / 1024,
        "step_rss_growth_mib": (peak - base_rss) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("BACKBONE", "ADAPTER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one[0], args.one[1], args.steps)))
        return

    from bench.common import write_result
    from training.params import format_table, parameter_table

    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        b: {a: [] for a in ADAPTERS} for b in CASES
    }
    for _ in range(args.rounds):
        for backbone in CASES:
            for adapter in ADAPTERS:
                command = [sys.executable, "-m", "bench.training", "--one", backbone, adapter,
                           "--steps", str(args.steps)]  # fmt: skip
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                samples[backbone][adapter].append(json.loads(out.stdout.strip().splitlines()[-1]))

    results: dict[str, dict[str, dict[str, float]]] = {}
    lines = [
        "# Training step benchmark (CPU; random weights; medians of interleaved rounds)",
        "",
        "| backbone | slices x studies | adapter | s/step | peak RSS MiB | vs LoRA |",
        "|---|---|---|---|---|---|",
    ]
    for backbone, by_adapter in samples.items():
        results[backbone] = {}
        for adapter, runs in by_adapter.items():
            results[backbone][adapter] = {
                "seconds_per_step": statistics.median(r["seconds_per_step"] for r in runs),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            }
        lora = results[backbone]["lora"]["seconds_per_step"]
        slices, batch, _ = CASES[backbone]
        for adapter, r in results[backbone].items():
            r["ratio_to_lora"] = r["seconds_per_step"] / lora
            lines.append(
                f"| {backbone} | {slices} x {batch} | {adapter} | {r['seconds_per_step']:.3f} | "
                f"{r['peak_rss_mib']:.0f} | {r['ratio_to_lora']:.2f}x |"
            )
    lines += ["", "Target: MoLRE at most 1.3x the step time of LoRA at the same rank.", ""]
    table_rows = parameter_table()
    lines += ["## Parameters", "", "```", format_table(table_rows), "```", ""]
    table = "\n".join(lines)
    path = write_result("training", {"cases": results, "rounds": args.rounds}, table)
    print(table)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
