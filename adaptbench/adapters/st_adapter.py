"""ST-Adapter: a bottleneck with a depthwise temporal convolution before attention and/or MLP.

Pan, Lin, Zhu, Shao, Li, "ST-Adapter: Parameter-Efficient Image-to-Video Transfer Learning",
NeurIPS 2022 (arXiv:2206.13559). Official code: github linziyi96/st-adapter (commit b914b38),
``models_adapter.py`` (class ``Adapter``, lines 18-55; its placement in
``ResidualAttentionBlock.forward``, lines 117-127; the two released models
``clip_vit_base_patch16_adapter24x384`` / ``..._adapter12x384``, lines 233-271).

The adapter on the tokens ``X`` of a clip of T frames (each frame a ``(H' W')`` grid of patch
tokens of width d, plus prefix tokens):

    A(X)[patches] = W2 DWConv3d_{k x 1 x 1}(W1 X[patches] + b1) + b2      (no activation)
    A(X)[prefix]  = 0                                                      (class token skipped)
    X <- X + A(X)

``W1`` (d -> r) and ``W2`` (r -> d) are linears on tokens; ``DWConv3d`` is a depthwise (groups
= r) 3D convolution with kernel (k, 1, 1), padding (k // 2, 0, 0) and a bias over the
(T, H', W') volume of each clip: per channel, a k-tap filter along time at every patch
position, zero-padded at the clip ends; frames of different clips never mix. A pre-X adapter
runs on the residual stream just before the block's X branch (X = attention or MLP):

    X' = X + A(X);  X'' = X' + Branch(X')

which in this package's anatomy is a wrapper on the ``attn`` / ``mlp`` branch returning
``A(x) + branch(x + A(x))`` (:class:`PreBranch`): the block's own ``x + ...`` adds the rest.

Initialisation (official ``Adapter.__init__``, lines 22-34): the conv weight and bias and both
linear biases are zero; ``W1`` and ``W2`` keep ``nn.Linear``'s default init (Kaiming-uniform,
a = sqrt(5)). So ``A(X) = W2 0 + 0 = 0``: the adapted model is the frozen one at init, and the
non-zero ``W2`` lets the conv learn from the first step.

Parameters per adapter: ``d r + r`` (W1, b1) ``+ k r + r`` (conv) ``+ r d + d`` (W2, b2), i.e.
``2 d r + 5 r + d`` for k = 3: 592,512 on ViT-B/16 (d = 768, r = 384), so 7,110,144 for the
"12x384" model and 14,220,288 for "24x384" (the paper's 7.1M / 14.2M).

Defaults (official code):

* ``bottleneck`` None = ``embed_dim // 2``: 384 on ViT-B/16 (``adapter_width=384``, lines 240 and
  260), the width of both released models; the ratio keeps tiny and large backbones sensible.
* ``kernel_size`` 3 (``adapter_kernel_size=(3, 1, 1)``, lines 242 and 262).
* ``placement`` ("attn", "mlp"): one adapter before attention and one before the MLP of every
  block, the "24x384" model of the SSv2 results (``adapter_pre_attn=True, adapter_pre_mlp=True``,
  lines 243-244; ``scripts/train_ssv2_clip_vit_b16_adapter24x384.sh``). The released K400 model
  "12x384" is ``placement=mlp``: one adapter per block, before the MLP
  (``adapter_pre_attn=False``, line 263; ``scripts/train_k400_clip_vit_b16_adapter12x384.sh``).
* ``blocks`` None: every block (``adapter_layers=12`` of 12; the official option adapts the last
  ``adapter_layers`` blocks, which is ``blocks`` = those indices here).
* ``keep_unreachable`` False (see the first departure below).

Departures from the official code, and why:

* On a backbone that pools its class token (``default_pool == "cls"``: CLIP, timm ViTs with a
  class token), the pre-MLP adapter of the *last* block is left out: its update reaches the
  patch tokens only, after which only the per-token MLP runs, so it can never change the class
  token the model outputs (and the video head averages over frames): it receives no gradient.
  It is dead weight in both released models too (their head reads the class token,
  models_adapter.py:223-224), so the official counts include 592,512 parameters that never
  train; the defaults here place 23 adapters (13,627,776 parameters on ViT-B/16; "12x384": 11,
  6,517,632). ``keep_unreachable=true`` places it anyway (the official counts 7,110,144 /
  14,220,288; useful only when the patch tokens are read: dense heads, ``pool=mean``).
* The official adapter assumes exactly one class token and a square grid (``H = W =
  round(sqrt(L - 1))``). Here the prefix count (class, register, prompt tokens) and the grid come
  from the token geometry of each forward; every prefix token is left untouched (the official
  class-token treatment, extended), and on SAM's (B, H', W', C) layout every token is a patch.
* The official adapter adds in place (``x_id[:, 1:, :] += x``), also changing the tensor the
  caller passed; here the update is returned and added out of place (same value).
* On an image batch (``frames = 1``) the temporal convolution sees a one-frame clip: only its
  centre tap acts, and ST-Adapter is a per-token (frame-wise) bottleneck adapter.

Not mergeable: the convolution mixes tokens of different frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.geometry import GeometryContext
from ..errors import AdaptbenchError
from ..registry import register_adapter
from .base import Adapter, AdapterConfig, SiteWrapper, blocks_of, require

ST_ADAPTER_PLACEMENTS = ("attn", "mlp")


@dataclass
class STAdapterConfig(AdapterConfig):
    bottleneck: int | None = field(
        default=None,
        metadata={"help": "bottleneck width r (default: embed_dim // 2, i.e. 384 on ViT-B/16 as in the paper)"},
    )
    kernel_size: int = field(default=3, metadata={"help": "temporal kernel size k of the depthwise (k,1,1) conv (odd)"})
    placement: tuple[str, ...] = field(
        default=ST_ADAPTER_PLACEMENTS,
        metadata={"help": "adapters before these branches of each block: attn and/or mlp "
                          "(attn,mlp: the paper's 24x384 SSv2 model; mlp: its 12x384 K400 model)"},
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )
    keep_unreachable: bool = field(
        default=False,
        metadata={"help": "keep the last block's pre-MLP adapter on a backbone that pools its class token, "
                          "which it cannot reach (the official models have it)"},
    )

    def validate(self) -> None:
        require(self.bottleneck is None or (isinstance(self.bottleneck, int) and self.bottleneck >= 1),
                f"st_adapter option bottleneck={self.bottleneck!r}: expected an integer >= 1 or none")
        require(isinstance(self.kernel_size, int) and self.kernel_size >= 1 and self.kernel_size % 2 == 1,
                f"st_adapter option kernel_size={self.kernel_size!r}: expected an odd integer >= 1")
        require(len(self.placement) > 0,
                f"st_adapter option placement: expected at least one of {ST_ADAPTER_PLACEMENTS}")
        for site in self.placement:
            require(site in ST_ADAPTER_PLACEMENTS,
                    f"st_adapter option placement={tuple(self.placement)}: expected names from {ST_ADAPTER_PLACEMENTS}")
        require(len(set(self.placement)) == len(self.placement),
                f"st_adapter option placement={tuple(self.placement)}: expected each branch once")


class PreBranch(SiteWrapper):
    """``a(x) + base(x + a(x))`` at a residual-branch site: the block's ``x + branch(x)`` then
    computes ``x' + base(x')`` with ``x' = x + a(x)``, an adapter on the residual stream just
    before the branch (ST-Adapter's pre-attention / pre-MLP adapters)."""

    def __init__(self, base_layer: nn.Module, module: nn.Module):
        super().__init__(base_layer)
        self.adapter = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.adapter(x)
        return update + self.base_layer(x + update)


class STAdapterModule(nn.Module):
    """``fc2(conv(fc1(patches)))`` with a depthwise (k, 1, 1) conv over each clip's frames;
    zero on the prefix tokens. Returns the update A(x) (same shape as x)."""

    def __init__(self, dim: int, hidden: int, kernel_size: int, geometry: GeometryContext,
                 device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.conv = nn.Conv3d(hidden, hidden, kernel_size=(kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0),
                              groups=hidden, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)
        # official init: conv weight and bias, fc1 and fc2 biases zero; fc weights nn.Linear's default
        for tensor in (self.conv.weight, self.conv.bias, self.fc1.bias, self.fc2.bias):
            nn.init.zeros_(tensor)
        self.geometry = geometry  # the backbone's: read at every forward, never frozen here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geometry = self.geometry.current
        frames, (height, width) = geometry.frames, geometry.grid
        prefix = 0 if geometry.layout == "BHWC" else geometry.prefix  # SAM's layout: every token a patch
        expected = (height, width) if geometry.layout == "BHWC" else (prefix + height * width,)
        if tuple(x.shape[1:-1]) != expected:
            raise AdaptbenchError(f"st_adapter: tokens of shape {tuple(x.shape)} do not hold the {prefix} prefix "
                                  f"tokens and the {height}x{width} patch grid of this forward")
        patches = x[:, prefix:]
        hidden = self.fc1(patches).reshape(x.shape[0] // frames, frames, height, width, -1)
        hidden = self.conv(hidden.permute(0, 4, 1, 2, 3))  # (clips, r, T, H', W'): along T only
        out = self.fc2(hidden.permute(0, 2, 3, 4, 1)).reshape(patches.shape)
        return F.pad(out, (0, 0, prefix, 0)) if prefix else out  # prefix tokens: a zero update


class STAdapter(Adapter):
    """ST-Adapter (Pan et al. 2022): depthwise temporal-conv bottlenecks before attention / MLP"""

    temporal = True

    def _attach(self, backbone) -> None:
        config: STAdapterConfig = self.config
        dim = backbone.anatomy.embed_dim
        hidden = config.bottleneck if config.bottleneck is not None else max(1, dim // 2)
        reference = next(backbone.parameters())
        anatomy = backbone.anatomy
        # the last pre-MLP adapter updates patch tokens that only the per-token MLP reads after it:
        # nothing carries its update to the class token a "cls" pooling backbone outputs
        unreachable = (anatomy.num_blocks - 1, "mlp") if (
            backbone.default_pool == "cls" and anatomy.has_class_token and not config.keep_unreachable) else None
        for block in blocks_of(config.blocks, backbone):
            for site in ST_ADAPTER_PLACEMENTS:  # the block's order, whatever the option's order
                if site not in config.placement or (block, site) == unreachable:
                    continue
                module = STAdapterModule(dim, hidden, config.kernel_size, backbone.geometry,
                                         device=reference.device, dtype=reference.dtype)
                self.wrap_site(site, block, lambda base, m=module: PreBranch(base, m))
                for name, param in module.named_parameters():
                    self.declare(f"blocks.{block}.{site}.{name}", param)
        if not self._declared:
            raise AdaptbenchError(f"st_adapter options placement={tuple(config.placement)}, blocks={config.blocks}: "
                                  f"no adapter left on {backbone.name!r} (the last block's pre-MLP adapter cannot reach "
                                  f"its class token); expected other blocks, placement attn, or keep_unreachable=true")


register_adapter("st_adapter", STAdapterConfig, STAdapter)
