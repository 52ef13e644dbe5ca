"""Convpass: convolutional bypasses beside the attention and MLP branches of a ViT.

Jie & Deng, "Convolutional Bypasses Are Better Vision Transformer Adapters", arXiv preprint
(technical report, 2022), arXiv:2207.07039. Official code: github JieShibo/PETL-ViT,
``convpass/vtab/convpass.py`` (the module) and ``convpass/vtab/configs/convpass/*.yaml`` (the
per-task VTAB-1k settings).

Each adapted block computes (paper Sec. 3.2; ``forward_block`` in the official code)

    X' = X + MHSA(LN1(X)) + s * Convpass(LN1(X))
    X" = X' + MLP(LN2(X')) + s * Convpass(LN2(X'))

    Convpass(Z) = W_up dropout(q(Conv3x3(q(W_down Z + b_down)))) + b_up

with ``q`` QuickGELU (``x * sigmoid(1.702 x)``), ``W_down`` (d -> h) and ``W_up`` (h -> d)
the two 1x1 convolutions (linears on tokens), and ``Conv3x3`` (h -> h, padding 1, bias) run on
the patch grid restored from the token sequence. A prefix token is "regarded as an individual
image" (paper Fig. 3): it is convolved alone as a 1x1 image by the same convolution, so only
the centre tap (and the bias) acts on it. This gives 0.33 M parameters on ViT-B/16 (paper
Table 1), 0.16 M for Convpass-attn.

Initialisation (official ``Convpass.__init__``): ``W_down`` Xavier-uniform; ``W_up``, ``b_up``,
``b_down`` and the conv bias zero, so the model is the frozen one at initialisation; the conv
weight either zero with the identity at the centre tap (``conv_init="identity"``: the class
default ``xavier_init=False``, which the released ``convpass/vtab/configs/convpass/*.yaml`` keep
on 9 of the 19 VTAB-1k tasks) or Xavier-uniform (``conv_init="xavier"``, ``xavier_init: True``
on the other 10); ``benchmarks/vtab1k.yaml`` searches the two per task.

Defaults (ViT-B/16 on VTAB-1k): ``hidden_dim = 8`` (paper, Experiments, "Setup": h = 8),
dropout 0.1 and QuickGELU (official module), sites ``attn`` and ``mlp`` in every block
(``sites=("attn",)`` is the paper's Convpass-attn variant), ``scale = 1``. The paper searches s per task in
{0.01, 0.1, 1, 10, 100} ("Setup" and App. B.4) and ships no single value: 1 is the default of
the official ``set_Convpass(..., s=1)`` and one of the three values (with 0.1 and 10) that
the released configs pick most often (5 tasks each).

Departures from the official code, and why:

* The official forward handles exactly one class token and a hard-coded 14x14 grid. Here the
  grid and the prefix count come from the token geometry of each forward, and *every* prefix token (class, register tokens, VPT
  prompts: all tokens before the last H*W) is its own 1x1 image, as the paper treats [cls];
  on SAM's (B, H, W, C) layout there are no prefix tokens.
* The official conv identity init adds ``torch.eye(8)`` whatever the hidden width; here the
  identity matches ``hidden_dim``.
* The official block applies the block's DropPath (rate 0.1 in its train.py) to the bypass
  too; here the bypass is added beside the branch, after its ``post`` (LayerScale, DropPath),
  so it is neither dropped nor layer-scaled: the paper's formula, which has neither.

Not mergeable: the QuickGELUs make the bypass non-linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..registry import register_adapter
from ..backbones.geometry import GeometryContext
from .base import Adapter, AdapterConfig, blocks_of, require
from .layers import ACTIVATIONS, Bottleneck, ParallelBranch, convolve_tokens

CONVPASS_SITES = ("attn", "mlp")
CONV_INITS = ("identity", "xavier")


@dataclass
class ConvpassConfig(AdapterConfig):
    hidden_dim: int = field(default=8, metadata={"help": "bottleneck width h (channels of the 3x3 conv)"})
    scale: float = field(default=1.0, metadata={"help": "s: the bypass is added as s * Convpass(LN(x))"})
    conv_init: str = field(
        default="identity",
        metadata={"help": f"3x3 conv weight init, one of {', '.join(CONV_INITS)} "
                          "(identity: zero weight with the identity at the centre tap)"},
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout before the up-projection"})
    act: str = field(default="quick_gelu", metadata={"help": f"activation, one of {', '.join(ACTIVATIONS)}"})
    sites: tuple[str, ...] = field(
        default=CONVPASS_SITES,
        metadata={"help": "residual branches to bypass: attn and/or mlp (attn alone: Convpass-attn)"},
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    def validate(self) -> None:
        require(self.hidden_dim >= 1, f"convpass option hidden_dim={self.hidden_dim}: expected an integer >= 1")
        require(math.isfinite(self.scale) and self.scale != 0,
                f"convpass option scale={self.scale}: expected a finite non-zero number")
        require(self.conv_init in CONV_INITS,
                f"convpass option conv_init={self.conv_init!r}: expected one of {CONV_INITS}")
        require(0.0 <= self.dropout < 1.0, f"convpass option dropout={self.dropout}: expected 0 <= dropout < 1")
        require(self.act in ACTIVATIONS,
                f"convpass option act={self.act!r}: expected one of {sorted(ACTIVATIONS)}")
        require(len(self.sites) > 0, "convpass option sites: expected at least one of ('attn', 'mlp')")
        for site in self.sites:
            require(site in CONVPASS_SITES, f"convpass site {site!r}: expected one of {CONVPASS_SITES}")
        require(len(set(self.sites)) == len(self.sites),
                f"convpass option sites={self.sites}: expected each site once")


# -- shared with dd_adapter; a candidate for layers.py (see the task report) -----------------
class ConvBypass(Bottleneck):
    """``up(dropout(act(conv3x3(act(down(x))))))``, the conv on the patch grid."""

    def __init__(self, dim: int, hidden: int, geometry: GeometryContext,
                 act: str = "quick_gelu", dropout: float = 0.1, conv_init: str = "identity",
                 device=None, dtype=None):
        # Bottleneck gives down (Xavier), up (zero) and zero biases: the official init.
        super().__init__(dim, hidden, act=act, dropout=dropout, init="xavier", device=device, dtype=dtype)
        self.conv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, device=device, dtype=dtype)
        init_conv(self.conv, conv_init)
        self.geometry = geometry  # the backbone's: read at every forward, never frozen here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.down(x))
        hidden = convolve_tokens(self.conv, hidden, self.geometry.current)
        return self.up(self.dropout(self.act(hidden)))


@torch.no_grad()
def init_conv(conv: nn.Conv2d, scheme: str) -> None:
    """Official Convpass conv init: identity at the centre tap, or Xavier; zero bias."""
    if scheme == "identity":
        nn.init.zeros_(conv.weight)
        centre = conv.kernel_size[0] // 2, conv.kernel_size[1] // 2
        conv.weight[:, :, centre[0], centre[1]] = torch.eye(conv.out_channels, dtype=conv.weight.dtype)
    else:
        nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)


class Convpass(Adapter):
    """Convpass (Jie & Deng 2022): 3x3 convolutional bypasses beside attention and MLP"""

    def _attach(self, backbone) -> None:
        config: ConvpassConfig = self.config
        anatomy = backbone.anatomy
        reference = next(backbone.parameters())
        for block in blocks_of(config.blocks, backbone):
            for site in config.sites:
                bypass = ConvBypass(
                    anatomy.embed_dim, config.hidden_dim, backbone.geometry,
                    act=config.act, dropout=config.dropout, conv_init=config.conv_init,
                    device=reference.device, dtype=reference.dtype,
                )
                self.wrap_site(site, block,
                               lambda base, m=bypass: ParallelBranch(base, m, config.scale, input="normed"))
                for name, param in bypass.named_parameters():
                    self.declare(f"blocks.{block}.{site}.{name}", param)


register_adapter("convpass", ConvpassConfig, Convpass)
