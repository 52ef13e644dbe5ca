"""Token geometry: what the token stream of the forward in progress looks like.

Adapters that need the patch grid (Convpass, the DD adapter, dense heads, later temporal
adapters that need the number of frames) must not guess it from tensor shapes, nor freeze
it when they are attached: the input size can change between forwards (timm's
``dynamic_img_size``, dense tasks at other resolutions, multi-scale evaluation), and prompt
tokens change the number of tokens in front of the patches. So the backbone computes a
:class:`TokenGeometry` from the real patch-embedding output at every forward and publishes it
on its :class:`GeometryContext`; wrappers hold a reference to that context and read
``context.current``; prompt wrappers update the prefix count as they insert or strip tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from ..errors import AdaptbenchError

LAYOUTS = ("BNC", "BHWC")


@dataclass(frozen=True)
class TokenGeometry:
    """The token stream of one forward.

    ``batch`` counts images through the blocks (clips x frames for video), ``frames`` the
    frames per clip (1 for images), ``grid`` the patch grid (H', W'), ``prefix`` the tokens
    before the patch tokens (class and register tokens, plus prompts while they are in the
    sequence; always 0 in the "BHWC" layout, which holds patches only).
    """

    batch: int
    grid: tuple[int, int]
    prefix: int = 0
    layout: str = "BNC"
    frames: int = 1

    @property
    def num_tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]


class GeometryContext:
    """The geometry of the forward in progress, owned by one backbone, read by its wrappers.

    A stack, so that a forward run inside another one (mask tuning's gradient probe) sees its
    own geometry and leaves the outer one as it was.
    """

    def __init__(self) -> None:
        self._stack: list[TokenGeometry] = []

    @property
    def current(self) -> TokenGeometry:
        if not self._stack:
            raise AdaptbenchError("no backbone forward is in progress: token geometry is only known during one")
        return self._stack[-1]

    @property
    def active(self) -> bool:
        return bool(self._stack)

    @contextmanager
    def publish(self, geometry: TokenGeometry) -> Iterator[TokenGeometry]:
        self._stack.append(geometry)
        try:
            yield geometry
        finally:
            self._stack.pop()

    def update(self, **changes) -> TokenGeometry:
        """Change the current geometry (a prompt wrapper adding or removing prefix tokens)."""
        self._stack[-1] = replace(self.current, **changes)
        return self._stack[-1]


def tokens_to_grid(x: torch.Tensor, geometry: TokenGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Split tokens into (prefix tokens (B, P, C), patch grid (B, C, H', W')).

    "BNC": the P prefix tokens come first, then the H'W' patches in row-major order (timm and
    CLIP order); "BHWC" (SAM): every token is a patch. The token count must match the
    geometry: a mismatch means a wrapper changed the sequence without saying so.
    """
    height, width = geometry.grid
    if geometry.layout == "BHWC":
        if tuple(x.shape[1:3]) != (height, width):
            raise AdaptbenchError(f"tokens of shape {tuple(x.shape)} do not hold the {height}x{width} grid "
                                  f"of this forward")
        return x.new_zeros(x.shape[0], 0, x.shape[-1]), x.permute(0, 3, 1, 2)
    batch, tokens, channels = x.shape
    if tokens != geometry.num_tokens:
        raise AdaptbenchError(f"{tokens} tokens, but this forward has {geometry.prefix} prefix tokens and a "
                              f"{height}x{width} patch grid ({geometry.num_tokens} tokens)")
    prefix = geometry.prefix
    patches = x[:, prefix:].reshape(batch, height, width, channels).permute(0, 3, 1, 2)
    return x[:, :prefix], patches


def grid_to_tokens(prefix: torch.Tensor, patches: torch.Tensor, layout: str = "BNC") -> torch.Tensor:
    """Inverse of :func:`tokens_to_grid`."""
    if layout == "BHWC":
        return patches.permute(0, 2, 3, 1)
    return torch.cat([prefix, patches.flatten(2).transpose(1, 2)], dim=1)
