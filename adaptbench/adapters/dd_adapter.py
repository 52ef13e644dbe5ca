"""DD adapter: the depthwise-dilated convolutional adapter of DD-SAM2.

Xu, Kabat, Zhang, "Depthwise-Dilated Convolutional Adapters for Medical Object Tracking and
Segmentation Using the Segment Anything Model 2", Machine Learning: Science and Technology
(2025), arXiv:2507.14613. Official code: github apple1986/DD-SAM2, ``sam2/adapter_ap.py``
(class ``DD_Adapter``, inserted by ``add_adapters_to_imgenc(..., apt_flag="dd_adapter")``;
its training scripts, e.g. ``train_sam2_1_echocard_video_1024.py``, adapt SAM2.1 Hiera-T).

After each adapted image-encoder block (``Y = block(X)``, tokens of width d):

    H = GELU(W1 Y + b1)                                  pointwise (1x1 conv), d -> d/2
    M = sum_{r in (1, 3)} GELU(DWConv3x3_r(H))           depthwise 3x3, dilation = padding = r
    DD(Y) = GELU(W2 M + b2)                              pointwise (1x1 conv), d/2 -> d
    block'(X) = Y + s * DD(Y)

The parallel dilated branches are summed (not concatenated) before the pointwise fusion, and
every convolution is followed by a GELU, the output one included (as in ``DD_Adapter``). The
1x1 convolutions act per token, so they run as linears on the token sequence; only the
depthwise convolutions need the patch grid.

Defaults (official code): bottleneck width ``d // 2`` (``reduction = 2``; the ``adapter_dim=64``
argument of ``DD_Adapter`` is unused), dilations (1, 3), GELU, scale 1 (the official adds
``x + adapter(x)``), adapters after the first 6 blocks (``num_adp = 6`` in the training
scripts, on Hiera-T's 12 blocks; the paper ablates 0-12). The paper itself could not be read
here; every fact is from the official code.

Initialisation: PyTorch's default (Kaiming-uniform, a = sqrt(5); bias uniform in
+-1/sqrt(fan_in)) for ``W1``, ``b1`` and the depthwise convolutions, as in the official code;
``W2`` and ``b2`` zero, so ``DD(Y) = GELU(0) = 0`` and the adapted model is the frozen one at
initialisation.

Departures from the official code, and why:

* The official ``W2`` is default-initialised, so DD-SAM2 does not start from the frozen model;
  ``W2 = b2 = 0`` here makes the adapter the identity at initialisation (this package's
  contract for additive adapters) while keeping the paper's structure.
* SAM / SAM2 image encoders have no prefix tokens. On a (B, N, C) sequence (timm, CLIP) every
  prefix token (class, register, prompt) is convolved alone as a 1x1 image (the Convpass
  convention): the depthwise taps other than the centre see only padding, so prefix tokens
  get a per-token update and never touch the grid.
* ``scale`` (default 1, the official value) is exposed to make the adapter's strength a
  tunable like the other parallel/sequential adapters'.
* The official ``DD_Adapter_other_rate`` (used only for the dilation-rate ablation) chains the
  branches residually (``H <- H + GELU(DWConv_r(H))``); this module follows ``DD_Adapter``, the
  adapter of the main results, whatever the dilation rates.

Layouts: (B, N, C) token sequences and SAM's (B, H, W, C) grids (``anatomy.token_layout``).
Not mergeable: the GELUs make the adapter non-linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import AdaptbenchError
from ..registry import register_adapter
from .base import Adapter, AdapterConfig, blocks_of, require

from ..backbones.geometry import GeometryContext
from .layers import ACTIVATIONS, Bottleneck, SequentialBranch, convolve_tokens


@dataclass
class DDAdapterConfig(AdapterConfig):
    reduction: int = field(default=2, metadata={"help": "bottleneck width = embed_dim // reduction"})
    dilations: tuple[int, ...] = field(
        default=(1, 3), metadata={"help": "dilation rates of the parallel depthwise 3x3 convolutions (summed)"}
    )
    scale: float = field(default=1.0, metadata={"help": "s: each adapted block returns y + s * DD(y)"})
    act: str = field(
        default="gelu", metadata={"help": f"activation after every convolution, one of {', '.join(ACTIVATIONS)}"}
    )
    first_blocks: int = field(
        default=6,
        metadata={"help": "adapt the first n blocks (clipped to the backbone depth); ignored when blocks is set"},
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "explicit block indices to adapt (default: the first first_blocks blocks)"}
    )

    def validate(self) -> None:
        require(self.reduction >= 1, f"dd_adapter option reduction={self.reduction}: expected an integer >= 1")
        require(len(self.dilations) > 0, "dd_adapter option dilations: expected at least one dilation rate")
        for rate in self.dilations:
            require(int(rate) == rate and rate >= 1, f"dd_adapter dilation {rate!r}: expected an integer >= 1")
        require(len(set(self.dilations)) == len(self.dilations),
                f"dd_adapter option dilations={self.dilations}: expected distinct rates")
        require(math.isfinite(self.scale) and self.scale != 0,
                f"dd_adapter option scale={self.scale}: expected a finite non-zero number")
        require(self.act in ACTIVATIONS,
                f"dd_adapter option act={self.act!r}: expected one of {sorted(ACTIVATIONS)}")
        require(self.first_blocks >= 1,
                f"dd_adapter option first_blocks={self.first_blocks}: expected an integer >= 1")


class DepthwiseDilatedBottleneck(Bottleneck):
    """``act(up(sum_r act(dwconv_r(act(down(x))))))``, the depthwise convs on the patch grid."""

    def __init__(self, dim: int, hidden: int, dilations: tuple[int, ...], geometry: GeometryContext,
                 act: str = "gelu", device=None, dtype=None):
        super().__init__(dim, hidden, act=act, dropout=0.0, device=device, dtype=dtype)
        # The official first pointwise conv keeps PyTorch's default init, bias included
        # (Bottleneck zeroes it); up stays zero so the adapter starts at exactly 0.
        self.down.reset_parameters()
        self.branches = nn.ModuleList(
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=rate, dilation=rate, groups=hidden,
                      device=device, dtype=dtype)
            for rate in dilations
        )
        self.geometry = geometry  # the backbone's: read at every forward, never frozen here

    def multi_scale(self, grid: torch.Tensor) -> torch.Tensor:
        """Sum of the activated dilated depthwise convolutions of a (B, h, H, W) grid."""
        return sum(self.act(branch(grid)) for branch in self.branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.down(x))
        hidden = convolve_tokens(self.multi_scale, hidden, self.geometry.current)
        return self.act(self.up(hidden))


def chosen_blocks(config: DDAdapterConfig, backbone) -> list[int]:
    if config.blocks is not None:
        return blocks_of(config.blocks, backbone)
    return list(range(min(config.first_blocks, backbone.anatomy.num_blocks)))


class DDAdapter(Adapter):
    """DD adapter (DD-SAM2): multi-dilation depthwise conv bottleneck on the patch grid"""

    def _attach(self, backbone) -> None:
        config: DDAdapterConfig = self.config
        anatomy = backbone.anatomy
        hidden = anatomy.embed_dim // config.reduction
        if hidden < 1:
            raise AdaptbenchError(
                f"dd_adapter option reduction={config.reduction}: backbone {backbone.name!r} has "
                f"embed_dim {anatomy.embed_dim}, leaving no bottleneck channel; "
                f"expected reduction <= {anatomy.embed_dim}"
            )
        reference = next(backbone.parameters())
        for block in chosen_blocks(config, backbone):
            adapter = DepthwiseDilatedBottleneck(
                anatomy.embed_dim, hidden, tuple(int(r) for r in config.dilations), backbone.geometry,
                act=config.act, device=reference.device, dtype=reference.dtype,
            )
            self.wrap_site("block", block, lambda base, m=adapter: SequentialBranch(base, m, config.scale))
            for name, param in adapter.named_parameters():
                self.declare(f"blocks.{block}.block.{name}", param)


register_adapter("dd_adapter", DDAdapterConfig, DDAdapter)
