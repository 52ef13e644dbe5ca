"""What a kept backbone saves a cell: building a real-scale backbone against copying a kept one.

    python benchmarks/backbone_kept.py [--backbones timm:vit_base_patch16_224 ...] [--repeats 3]

Per backbone, in this process, side by side: the median seconds of ``load_backbone(name,
"random:0")`` (create the model, initialise it, hash its state for ``weights_id``) over
``--repeats`` builds, against the median of ``load_backbone_kept(name, "random:0", keep=1)``
once the backbone is kept (a deep copy: what a long-lived worker's later cells pay,
``backbones/kept.py``). Random weights, since pretrained files cannot be downloaded here;
reading and checking a checkpoint adds to a build, not to a copy, so with real weights the
saving is larger. Also printed: the kept copy's memory (the state's bytes, held once per
worker on the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

DEFAULT_BACKBONES = ("timm:vit_base_patch16_224", "clip:ViT-B-16/openai", "sam:vit_b")


def seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from adaptbench.backbones import load_backbone
    from adaptbench.backbones.kept import forget_kept_backbones, load_backbone_kept

    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'backbone':<28}{'params M':>10}{'build s':>10}{'kept copy s':>13}{'x faster':>10}{'kept MB':>9}")
    for name in args.backbones:
        built = seconds(lambda: load_backbone(name, weights="random:0"), args.repeats)
        forget_kept_backbones()
        backbone, _ = load_backbone_kept(name, "random:0", keep=1)  # builds and keeps it
        copied = seconds(lambda: load_backbone_kept(name, "random:0", keep=1), args.repeats)
        assert load_backbone_kept(name, "random:0", keep=1)[1], f"{name} was not kept"
        params = sum(p.numel() for p in backbone.parameters()) / 1e6
        megabytes = sum(v.numel() * v.element_size() for v in backbone.state_dict().values()) / 2**20
        print(f"{name:<28}{params:>10.1f}{built:>10.2f}{copied:>13.2f}{built / copied:>10.1f}{megabytes:>9.0f}")
        forget_kept_backbones()


if __name__ == "__main__":
    main()
