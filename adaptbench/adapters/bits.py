"""Bit packing for 1-bit adapters (Bi-AdaptFormer's weights, mask tuning's masks), so that
their checkpoints store 1 bit per weight and the reported size is the real one."""

from __future__ import annotations

import torch


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Booleans -> uint8, 8 a byte, the first in the lowest bit (zero padded at the end): how
    1-bit adapters (Bi-AdaptFormer's weights, mask tuning's masks) store their tensors, so the
    file size is the real 1-bit size."""
    flat = bits.flatten().to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, -flat.numel() % 8))
    weights = 2 ** torch.arange(8, device=flat.device, dtype=torch.uint8)
    return (flat.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a boolean tensor of ``shape``."""
    count = torch.Size(shape).numel()
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    return ((packed.reshape(-1, 1) >> shifts) & 1).flatten()[:count].reshape(shape).bool()
