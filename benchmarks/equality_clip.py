"""Equality of the canonical clip: backbone with open_clip's ``encode_image`` on ViT-B-16.

Builds open_clip's ViT-B-16 with random weights (nothing is downloaded), draws its biases, norm
and class/position parameters at random too (open_clip starts biases at zero, which would let a
bias bug through), records ``encode_image`` on a batch, canonicalises the very same image tower
(no weight copied) and prints the largest absolute difference of the canonical forward. Exits
non-zero when it exceeds the tolerance.

    python benchmarks/equality_clip.py [--model ViT-B-16] [--batch 2] [--tolerance 1e-5]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def random_clip(model_name: str, seed: int):
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(model_name, pretrained=None).eval()
        with torch.no_grad():
            for param in model.visual.parameters():
                if param.dim() == 1:
                    param.add_(0.1 * torch.randn_like(param))
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from adaptbench.backbones.families.clip import OpenClipViT

    start = time.perf_counter()
    model = random_clip(args.model, args.seed)
    size = model.visual.image_size
    images = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        expected = model.encode_image(images)
        backbone = OpenClipViT(args.model, model.visual, f"random:{args.seed}").eval()
        backbone.seal_weights()
        got = backbone(images)
    difference = (got - expected).abs().max().item()
    ok = got.shape == expected.shape and difference <= args.tolerance
    print(f"{args.model}: batch {args.batch} at {size[0]}x{size[1]}, features {tuple(got.shape)}, "
          f"max |encode_image - canonical| = {difference:.3e} (tolerance {args.tolerance:g}) "
          f"{'OK' if ok else 'FAIL'} in {time.perf_counter() - start:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
