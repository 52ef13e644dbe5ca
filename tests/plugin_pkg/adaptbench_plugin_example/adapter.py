"""Scaled head bias: a learnable per-channel scale and bias on the features the head reads.

An example of an adapter shipped by a separate distribution and registered only through
the ``adaptbench.adapters`` entry point. It is written against the anatomy alone: the
backbone-wide ``final_norm`` site, the last module before the task head (timm: ``norm``,
or ``fc_norm`` for mean-pooled models, which norm after pooling).

With ``z = final_norm(x)`` over C channels it computes, elementwise,

    y = (1 + s) * z + b,        s, b in R^C,   s = b = 0 at initialisation,

so the adapted model equals the frozen one at initialisation (``scale=false`` keeps
``s = 0`` and trains ``b`` only). The final norm is a LayerNorm,
``z = w * x_hat + beta``, so the adapter folds into it exactly:

    w' = (1 + s) * w,           beta' = (1 + s) * beta + b,

which is what ``merge()`` writes (a missing ``w`` or ``beta`` counts as 1 or 0). It is SSF's
scale-and-shift (Lian et al., NeurIPS 2022, arXiv:2210.08823) applied once, at the head's
input: 2C trainable parameters (C with ``scale=false``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from adaptbench.adapters import Adapter, AdapterConfig, Needs, SiteWrapper
from adaptbench.errors import AdaptbenchError


@dataclass
class ScaledHeadBiasConfig(AdapterConfig):
    scale: bool = field(default=True, metadata={"help": "learn the per-channel scale s as well as the bias b"})

    def validate(self) -> None:
        if not isinstance(self.scale, bool):
            raise AdaptbenchError(f"scaled_head_bias option scale={self.scale!r}: expected true or false")


class ScaleAndBias(SiteWrapper):
    """``(1 + s) * norm(x) + b`` around a frozen LayerNorm."""

    def __init__(self, base_layer: nn.LayerNorm, scale: bool):
        super().__init__(base_layer)
        channels = base_layer.normalized_shape[-1]
        like = next(base_layer.parameters(), torch.empty(0))
        factory = {"device": like.device, "dtype": like.dtype}
        self.bias = nn.Parameter(torch.zeros(channels, **factory))
        self.scale = nn.Parameter(torch.zeros(channels, **factory)) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base_layer(x)
        return (z if self.scale is None else z * (1 + self.scale)) + self.bias

    @torch.no_grad()
    def merged_module(self) -> nn.LayerNorm:
        norm = self.base_layer
        if norm.weight is None:  # LayerNorm(elementwise_affine=False): w = 1, beta = 0
            norm.weight = nn.Parameter(torch.ones_like(self.bias), requires_grad=False)
        if norm.bias is None:  # LayerNorm(bias=False): beta = 0
            norm.bias = nn.Parameter(torch.zeros_like(self.bias), requires_grad=False)
        gain = 1 + self.scale if self.scale is not None else torch.ones_like(self.bias)
        norm.bias.mul_(gain).add_(self.bias)
        norm.weight.mul_(gain)
        return norm


class ScaledHeadBias(Adapter):
    """Scaled head bias (example plugin): (1 + s) * final_norm(x) + b."""

    config_class = ScaledHeadBiasConfig
    mergeable = True
    # SAM's encoder has no final norm (it ends in its neck): that pair is n/a, not a failure
    needs = Needs(global_sites=("final_norm",))

    def _attach(self, backbone) -> None:
        norm = backbone.site("final_norm", None)
        if not isinstance(norm, nn.LayerNorm):
            raise AdaptbenchError(
                f"adapter scaled_head_bias needs a LayerNorm at site 'final_norm', but backbone "
                f"{backbone.name!r} has {type(norm).__name__} there"
            )
        wrapper = self.wrap_site("final_norm", None, lambda base: ScaleAndBias(base, self.config.scale))
        self.declare("final_norm.bias", wrapper.bias)
        if wrapper.scale is not None:
            self.declare("final_norm.scale", wrapper.scale)
