"""Helpers shared by the adapter test files (imported as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

import torch


def images(seed: int = 0, batch: int = 2) -> torch.Tensor:
    """A seeded batch of 32x32 RGB inputs, the tiny test backbones' input size."""
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
