"""The adapter catalogue in one table: parameters at full scale, speed on a tiny backbone.

    python benchmarks/adapter_report.py [--adapters lora ssf ...] [--backbone clip:ViT-B-16 sam:vit_b]

One table per ``--backbone`` (default: timm ViT-B/16; any family member, built with random
weights); the speed column is measured on the tiny backbone of the same family
(``--speed-backbone`` overrides it). Pairs an adapter declares impossible read ``n/a``.

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

from adaptbench.adapters import adapter_class, build_adapter
from adaptbench.backbones import load_backbone
from adaptbench.registry import ADAPTERS
from adaptbench.adapters.accounting import parameter_report
from throughput import images_per_second, make_step

VIT_B = "timm:vit_base_patch16_224"
# the tiny backbone of each family, for the speed column
TINY_OF_FAMILY = {"timm": "vit_micro", "clip": "clip_tiny_test", "sam": "sam_tiny_test"}


def not_applicable(anatomy, name: str) -> str | None:
    cls = adapter_class(name)
    return cls.unsupported(anatomy, cls.config_class())


def parameter_row(base, name: str) -> dict | None:
    """Parameter accounting of adapter ``name`` attached to a copy of ``base`` (None: n/a)."""
    if not_applicable(base.anatomy, name) is not None:
        return None
    backbone = copy.deepcopy(base)
    adapter = build_adapter(name, backbone)
    report = parameter_report(adapter)
    return {"trainable": report.trainable, "extra": report.extra_inference,
            "extra_merged": report.extra_inference_merged, "bytes": report.checkpoint_bytes}


def speed_ratios(backbone_name: str, names: list[str], batch_size: int, steps: int, rounds: int) -> dict[str, float]:
    """Median train img/s of every adapter divided by the linear probe's, interleaved rounds."""
    torch.manual_seed(0)
    probe = load_backbone(backbone_name)
    batch = torch.randn(batch_size, 3, *probe.data_config.input_size)
    labels = torch.randint(0, 10, (batch_size,))
    names = [name for name in names if not_applicable(probe.anatomy, name) is None]
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
    parser.add_argument("--backbone", "--params-backbone", nargs="*", default=[VIT_B], dest="backbones",
                        help="backbones to count parameters on (random weights), one table each")
    parser.add_argument("--speed-backbone", default=None, help="default: the tiny backbone of each family")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = args.adapters or ADAPTERS.names()
    for backbone_name in args.backbones:
        report(backbone_name, names, args)


def report(backbone_name: str, names: list[str], args: argparse.Namespace) -> None:
    base = load_backbone(backbone_name, weights="random")
    speed_backbone = args.speed_backbone or TINY_OF_FAMILY[base.anatomy.family]
    rows = {name: parameter_row(base, name) for name in names}
    ratios = speed_ratios(speed_backbone, names, args.batch_size, args.steps, args.rounds)
    print(f"\nparameters: {backbone_name} at {base.data_config.input_size[0]}, head excluded; "
          f"speed: {speed_backbone}, batch {args.batch_size}, {args.steps} steps x {args.rounds} "
          f"rounds, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| method | trainable (M) | extra inference | after merge | checkpoint bytes | train img/s x linear |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        row = rows[name]
        if row is None:
            print(f"| {name} | n/a: {not_applicable(base.anatomy, name)} | | | | |")
            continue
        ratio = f"{ratios[name]:.2f}" if name in ratios else "n/a"
        print(f"| {name} | {row['trainable'] / 1e6:.3f} | {row['extra']:,} | {row['extra_merged']:,} "
              f"| {row['bytes']:,} | {ratio} |")


if __name__ == "__main__":
    main()
