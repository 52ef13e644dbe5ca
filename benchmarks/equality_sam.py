"""The canonical SAM encoder computes what segment-anything's ``ImageEncoderViT`` computes.

    python benchmarks/equality_sam.py [--variant vit_b] [--seed 0] [--device cpu] [--tolerance 1e-5]

Builds the official encoder configuration with seeded random weights (no checkpoint is
needed; the zero-initialised absolute and relative positions are filled with random values
too, so that every path of the maths counts), records ``image_encoder(x)`` for one seeded
1024x1024 image, canonicalises the very same encoder in place (``SamViT``: windowed blocks,
neck) and prints the largest absolute difference to ``forward_dense(x).final``, in float32.
Exits 1 when it is above the tolerance. vit_b takes about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from adaptbench.backbones.families.sam import SamViT, build_image_encoder
from adaptbench.backbones.families.sam_names import SAM_VARIANTS


def random_encoder(variant: str, seed: int) -> torch.nn.Module:
    """The official ``variant`` encoder, seeded, with no parameter left at zero by its init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_image_encoder(SAM_VARIANTS[variant].encoder_config())
        with torch.no_grad():
            for name, param in encoder.named_parameters():
                if "pos" in name:  # pos_embed, rel_pos_h, rel_pos_w start at zero
                    param.normal_(std=0.02)
    return encoder.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="vit_b", choices=sorted(SAM_VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args(argv)

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 on both sides, also on GPUs
    torch.backends.cudnn.allow_tf32 = False
    encoder = random_encoder(args.variant, args.seed).to(args.device)
    image = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    with torch.no_grad():
        start = time.perf_counter()
        reference = encoder(image)
        reference_s = time.perf_counter() - start
        backbone = SamViT(f"sam:{args.variant}", encoder, f"random:{args.seed}")
        start = time.perf_counter()
        canonical = backbone.forward_dense(image).final
        canonical_s = time.perf_counter() - start
    difference = (canonical - reference).abs().max().item()
    print(f"sam:{args.variant} {tuple(reference.shape)} on {args.device}: max |image_encoder(x) - canonical| = "
          f"{difference:.3e} (tolerance {args.tolerance:g}); forward {reference_s:.1f} s vs {canonical_s:.1f} s")
    return 0 if difference <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
