"""SSF: scaling and shifting of features.

Lian, Zhou, Feng, Wang, "Scaling & Shifting Your Features: A New Baseline for Efficient
Model Tuning", NeurIPS 2022 (arXiv:2210.08823).

After each chosen operation ``o`` of the frozen backbone, every channel is scaled and
shifted:

    y = gamma * o(x) + beta,      gamma ~ N(1, 0.02),  beta ~ N(0, 0.02)

placed, as in the official implementation, after the patch embedding, both pre-norms,
the fused qkv linear, the attention projection, both MLP linears and the final norm (by
default only those the backbone has: SAM's encoder has no final norm, and its neck is not
among the paper's operations). The patch embedding emits channels last on every family (the
anatomy's contract), so the scale always acts on channels. The
random initialisation is the paper's, so SSF is *not* the identity at initialisation (it is
close to it). Because every ``o`` here is affine per output channel, ``merge()`` folds
the scale and shift exactly into the preceding weights: for a linear ``W' = diag(gamma) W``,
``b' = gamma * b + beta``; for a LayerNorm ``w' = gamma * w``, ``b' = gamma * b + beta``; for
the patch embedding, into its convolution (or its norm, when it has one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import AdaptbenchError
from ..registry import register_adapter
from .base import Adapter, AdapterConfig, SiteWrapper, require

SSF_BLOCK_SITES = ("norm1", "qkv", "attn_out", "norm2", "mlp_in", "mlp_out")
SSF_GLOBAL_SITES = ("patch_embed", "final_norm")


@dataclass
class SSFConfig(AdapterConfig):
    sites: tuple[str, ...] = field(
        default=SSF_GLOBAL_SITES + SSF_BLOCK_SITES,
        metadata={"help": "operations followed by a scale and shift (default: the paper's all)"},
    )
    init_std: float = field(default=0.02, metadata={"help": "std of the N(1, s) scale and N(0, s) shift init"})

    def validate(self) -> None:
        allowed = SSF_GLOBAL_SITES + SSF_BLOCK_SITES
        for site in self.sites:
            require(site in allowed, f"ssf site {site!r}: expected one of {allowed}")
        require(self.init_std >= 0, f"ssf option init_std={self.init_std}: expected >= 0")


class ScaleShift(SiteWrapper):
    """``gamma * base(x) + beta`` over the last (channel) dimension."""

    def __init__(self, base_layer: nn.Module, channels: int, init_std: float, device=None):
        super().__init__(base_layer)
        self.scale = nn.Parameter(torch.empty(channels, device=device))
        self.shift = nn.Parameter(torch.empty(channels, device=device))
        nn.init.normal_(self.scale, mean=1.0, std=init_std)
        nn.init.normal_(self.shift, mean=0.0, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self.scale + self.shift

    def merged_module(self) -> nn.Module:
        _fold_affine(_last_affine(self.base_layer), self.scale, self.shift)
        return self.base_layer


def _last_affine(module: nn.Module) -> nn.Module:
    """The per-channel affine operation whose output the scale and shift act on."""
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        return module
    norm = getattr(module, "norm", None)  # a patch embedding: conv, then an optional norm
    if isinstance(norm, nn.LayerNorm):
        return norm
    proj = getattr(module, "proj", None)
    if isinstance(proj, nn.Conv2d):
        return proj
    raise AdaptbenchError(f"ssf cannot merge into {type(module).__name__}")


def _fold_affine(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    if isinstance(layer, nn.LayerNorm) and not layer.elementwise_affine:
        raise AdaptbenchError("ssf cannot merge into a LayerNorm without affine parameters")
    weight = layer.weight
    shape = (-1,) + (1,) * (weight.dim() - 1)  # per output channel
    weight.data.mul_(scale.reshape(shape).to(weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros_like(scale), requires_grad=False)
    layer.bias.data.mul_(scale).add_(shift)


def _channels(module: nn.Module, backbone) -> int:
    while not isinstance(module, nn.Linear) and hasattr(module, "base_layer"):
        module = module.base_layer  # another adapter's wrapper (LoRA) around the linear
    if isinstance(module, nn.Linear):
        return module.out_features
    return backbone.anatomy.embed_dim  # norms and the patch embedding emit embed_dim channels


class SSF(Adapter):
    """SSF (Lian et al. 2022): scale-and-shift of features, merged into the linears."""

    mergeable = True
    identity_at_init = False  # gamma ~ N(1, 0.02), beta ~ N(0, 0.02), as the paper says

    @classmethod
    def unsupported(cls, anatomy, config: SSFConfig) -> str | None:
        """Sites named explicitly must exist; the default (the paper's "after every
        operation") takes the backbone-wide ones the backbone has (SAM has no final norm)."""
        reason = super().unsupported(anatomy, config)
        missing = [s for s in config.sites if s in SSF_GLOBAL_SITES and s not in anatomy.global_sites]
        if reason is None and missing and tuple(config.sites) != SSFConfig().sites:
            reason = f"sites {missing} do not exist on this backbone (it has {list(anatomy.global_sites)})"
        return reason

    def _attach(self, backbone) -> None:
        config: SSFConfig = self.config
        device = next(backbone.parameters()).device
        present = set(SSF_BLOCK_SITES) | set(backbone.anatomy.global_sites)
        for site in (s for s in config.sites if s in present):
            blocks = [None] if site in SSF_GLOBAL_SITES else range(backbone.anatomy.num_blocks)
            for block in blocks:
                channels = _channels(backbone.site(site, block), backbone)
                wrapper = self.wrap_site(
                    site, block, lambda base, c=channels: ScaleShift(base, c, config.init_std, device)
                )
                prefix = site if block is None else f"blocks.{block}.{site}"
                self.declare(f"{prefix}.scale", wrapper.scale)
                self.declare(f"{prefix}.shift", wrapper.shift)


register_adapter("ssf", SSFConfig, SSF)
