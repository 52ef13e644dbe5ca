"""Building blocks shared by the bottleneck and convolutional adapters.

* :class:`Bottleneck` — ``up(dropout(act(down(x))))``, the module behind Houlsby/Pfeiffer
  adapters, AdaptFormer, MoSA and Bi-AdaptFormer;
* :class:`ParallelBranch` / :class:`SequentialBranch` — site wrappers that put a module beside
  or after a residual branch (the ``attn`` and ``mlp`` sites): ``base(x) + s * f(x)`` and
  ``y + s * f(y)`` with ``y = base(x)``;
* :func:`convolve_tokens` — a convolution over the patch grid of the current forward's token
  geometry (``backbones/geometry.py``), each prefix token as its own 1x1 image, so that
  convolutional adapters (Convpass, DD adapter) work on (B, N, C) sequences with class,
  register and prompt tokens, on SAM's (B, H, W, C) layout, and at any input size;
* :func:`linear_of` — the frozen linear at a site below other adapters' wrappers, for methods
  that read the weight itself (SALT's SVD, Conv-LoRA's shapes).

Every adapter in this package that needs one of these uses it from here, so that a fix to the
shared piece reaches every method.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..backbones.geometry import TokenGeometry, grid_to_tokens, tokens_to_grid
from ..errors import AdaptbenchError
from .base import SiteWrapper


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: CLIP's GELU approximation, used by Convpass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "quick_gelu": QuickGELU,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise AdaptbenchError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def init_down(weight: torch.Tensor, scheme: str) -> None:
    """Initialise a down-projection: ``kaiming`` (uniform, a = sqrt(5): the LoRA / AdaptFormer
    "lora" option and nn.Linear's own default) or ``xavier`` (uniform: Convpass, RepAdapter)."""
    if scheme == "kaiming":
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    elif scheme == "xavier":
        nn.init.xavier_uniform_(weight)
    else:
        raise AdaptbenchError(f"unknown init scheme {scheme!r}; expected 'kaiming' or 'xavier'")


class Bottleneck(nn.Module):
    """``up(dropout(act(down(x))))`` with ``up`` and every bias zero-initialised, so the module
    outputs exactly 0 at initialisation (the adapted model is the frozen one)."""

    def __init__(self, dim: int, hidden: int, act: str = "relu", dropout: float = 0.0,
                 init: str = "kaiming", bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(dim, hidden, bias=bias, device=device, dtype=dtype)
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Linear(hidden, dim, bias=bias, device=device, dtype=dtype)
        init_down(self.down.weight, init)
        nn.init.zeros_(self.up.weight)
        for layer in (self.down, self.up):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x))))


class ParallelBranch(SiteWrapper):
    """``base(x) + scale * module(v)`` at a residual-branch site (``attn`` or ``mlp``).

    ``v`` is the branch input ``x`` (``input="residual"``: AdaptFormer) or the branch's own
    pre-norm output ``base.norm(x)`` (``input="normed"``: Convpass).
    """

    INPUTS = ("residual", "normed")

    def __init__(self, base_layer: nn.Module, module: nn.Module, scale: float = 1.0,
                 input: str = "residual"):
        super().__init__(base_layer)
        if input not in self.INPUTS:
            raise AdaptbenchError(f"parallel branch input {input!r}: expected one of {self.INPUTS}")
        if input == "normed" and not hasattr(base_layer, "norm"):
            raise AdaptbenchError(
                f"parallel branch input 'normed' needs a residual branch with a norm, got {type(base_layer).__name__}"
            )
        self.adapter = module
        self.scale = scale
        self.input = input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = self.base_layer.norm(x) if self.input == "normed" else x
        return self.base_layer(x) + self.scale * self.adapter(source)


class SequentialBranch(SiteWrapper):
    """``y + scale * module(y)`` with ``y = base(x)``: an adapter after a sub-layer (Houlsby)."""

    def __init__(self, base_layer: nn.Module, module: nn.Module, scale: float = 1.0):
        super().__init__(base_layer)
        self.adapter = module
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y + self.scale * self.adapter(y)


def convolve_tokens(conv: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    geometry: TokenGeometry) -> torch.Tensor:
    """Run a same-size convolution ``conv`` ((B, C, H, W) -> (B, C', H, W)) over the patch grid
    of ``x`` and over every prefix token as its own 1x1 image (Convpass's [cls] treatment).

    ``geometry`` is the current forward's (``backbone.geometry.current``): the grid and the
    prefix count (class, register and prompt tokens) are read from it, never guessed.
    A "same"-padded k x k convolution (any dilation) of a 1x1 image reads only its centre tap,
    so prefix tokens never mix with the grid nor with each other.
    """
    prefix, patches = tokens_to_grid(x, geometry)
    patches = conv(patches)
    batch, count, channels = prefix.shape
    if count:
        prefix = conv(prefix.reshape(batch * count, channels, 1, 1)).reshape(batch, count, -1)
    else:  # keep the channel count of the output so that the concatenation lines up
        prefix = patches.new_zeros(batch, 0, patches.shape[1])
    return grid_to_tokens(prefix, patches, geometry.layout)


def linear_of(module: nn.Module, adapter: str = "") -> nn.Linear:
    """The frozen ``nn.Linear`` at a site, below any other adapter's wrappers (their
    ``base_layer``): what a method that reads the weight itself (SVD, shapes) works on."""
    while not isinstance(module, nn.Linear) and hasattr(module, "base_layer"):
        module = module.base_layer
    if not isinstance(module, nn.Linear):
        raise AdaptbenchError(f"{adapter or 'adapter'}: expected a linear layer at the site, "
                              f"found {type(module).__name__}")
    return module
