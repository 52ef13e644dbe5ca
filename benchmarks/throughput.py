"""Training throughput of every registered adapter, side by side in one process.

    python benchmarks/throughput.py [--backbone vit_micro] [--batch-size 64] [--steps 20]

For each adapter: images per second of a full training step (forward, backward, AdamW
update of the declared tensors and a linear head) on a fixed random batch, and the ratio
to the linear probe. Two floors are measured the same way (DESIGN.md, "Measuring"): the
frozen backbone's forward pass, and forward + backward to the input (what any adapter
inside the backbone must pay). Measurements are interleaved over several rounds and the
median kept, so that drift of a shared machine hits every method alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from adaptbench.adapters import build_adapter
from adaptbench.backbones import load_backbone
from adaptbench.registry import ADAPTERS


def make_step(backbone_name: str, adapter_name: str | None, batch: torch.Tensor, labels: torch.Tensor):
    """A closure running one timed unit of work; adapter None means a floor."""
    backbone = load_backbone(backbone_name).train()
    if adapter_name in (None, "forward", "input_grad"):
        inputs = batch.clone().requires_grad_(adapter_name == "input_grad")

        def floor_step():
            with torch.set_grad_enabled(adapter_name == "input_grad"):
                out = backbone(inputs)
            if adapter_name == "input_grad":
                out.sum().backward()

        return floor_step
    adapter = build_adapter(adapter_name, backbone)
    head = nn.Linear(backbone.anatomy.feature_dim, int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(list(adapter.trainable_parameters().values()) + list(head.parameters()), lr=1e-3)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(backbone(batch)), labels).backward()
        optimizer.step()

    return train_step


def images_per_second(step, batch_size: int, steps: int) -> float:
    step()  # warm-up: allocations, lazy init
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_micro")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--adapters", nargs="*", default=None, help="default: every registered adapter")
    args = parser.parse_args()
    torch.manual_seed(0)
    probe = load_backbone(args.backbone)
    batch = torch.randn(args.batch_size, 3, *probe.data_config.input_size)
    labels = torch.randint(0, 10, (args.batch_size,))
    names = ["forward", "input_grad"] + (args.adapters or ADAPTERS.names())
    steps = {name: make_step(args.backbone, name, batch, labels) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            samples[name].append(images_per_second(steps[name], args.batch_size, args.steps))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    reference = medians.get("linear")
    print(f"backbone {args.backbone}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'method':<14}{'img/s':>10}{'x linear':>10}")
    for name in names:
        label = {"forward": "[frozen fwd]", "input_grad": "[fwd+in-grad]"}.get(name, name)
        ratio = f"{medians[name] / reference:.2f}" if reference else "-"
        print(f"{label:<14}{medians[name]:>10.1f}{ratio:>10}")


if __name__ == "__main__":
    main()
