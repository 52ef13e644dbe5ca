"""The adapter catalogue in one table: parameters at ViT-B/16 scale, speed on a tiny backbone.

    python benchmarks/adapter_report.py [--adapters lora ssf ...] [--speed-backbone vit_micro]

Columns, per adapter:

* trainable parameters without the head, on ViT-B/16 at 224 (random weights: counts do not
  depend on values), in millions;
* extra inference parameters as attached, and after ``merge()`` where the adapter can merge;
* the adapter-only checkpoint size in bytes (what ``save_adapter`` writes; packed bits for
  1-bit adapters);
* train images/s on the speed backbone relative to the linear probe, measured side by side in
  this one process with ``throughput.py``'s interleaved rounds (ratios, not absolute times,
  are what carry over to another machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from adaptbench.adapters import build_adapter
from adaptbench.backbones import load_backbone
from adaptbench.registry import ADAPTERS
from throughput import images_per_second, make_step

VIT_B = "timm:vit_base_patch16_224"


def parameter_row(base, name: str) -> dict:
    """Parameter accounting of adapter ``name`` attached to a copy of ``base``."""
    backbone = copy.deepcopy(base)
    adapter = build_adapter(name, backbone)
    report = adapter.parameter_report()
    return {"trainable": report.trainable, "extra": report.extra_inference,
            "extra_merged": report.extra_inference_merged, "bytes": report.checkpoint_bytes}


def speed_ratios(backbone_name: str, names: list[str], batch_size: int, steps: int, rounds: int) -> dict[str, float]:
    """Median train img/s of every adapter divided by the linear probe's, interleaved rounds."""
    torch.manual_seed(0)
    probe = load_backbone(backbone_name)
    batch = torch.randn(batch_size, 3, *probe.data_config.input_size)
    labels = torch.randint(0, 10, (batch_size,))
    runners = {name: make_step(backbone_name, name, batch, labels) for name in ["linear", *names]}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, step in runners.items():
            samples[name].append(images_per_second(step, batch_size, steps))
    linear = statistics.median(samples["linear"])
    return {name: statistics.median(values) / linear for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", nargs="*", default=None, help="default: every registered adapter")
    parser.add_argument("--params-backbone", default=VIT_B)
    parser.add_argument("--speed-backbone", default="vit_micro")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = args.adapters or ADAPTERS.names()
    base = load_backbone(args.params_backbone, weights="random")
    rows = {name: parameter_row(base, name) for name in names}
    ratios = speed_ratios(args.speed_backbone, names, args.batch_size, args.steps, args.rounds)
    print(f"parameters: {args.params_backbone} at {base.data_config.input_size[0]}, head excluded; "
          f"speed: {args.speed_backbone}, batch {args.batch_size}, {args.steps} steps x {args.rounds} "
          f"rounds, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| method | trainable (M) | extra inference | after merge | checkpoint bytes | train img/s x linear |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        row = rows[name]
        print(f"| {name} | {row['trainable'] / 1e6:.3f} | {row['extra']:,} | {row['extra_merged']:,} "
              f"| {row['bytes']:,} | {ratios[name]:.2f} |")


if __name__ == "__main__":
    main()
