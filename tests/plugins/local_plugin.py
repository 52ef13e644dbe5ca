"""A local plugin file (``adaptbench --plugin tests/plugins/local_plugin.py``).

Registers ``local_bias``: a learnable bias on the output of every block's second MLP linear
(the ``mlp_out`` site), before LayerScale and the residual add:

    y_l = W2_l h + c_l + b_l,      b_l in R^C,   b_l = 0 at initialisation,

so the adapted model equals the frozen one at init, and ``merge()`` folds it exactly into
the linear's bias (``c_l' = c_l + b_l``; a linear without a bias gets ``b_l`` as its bias).
C parameters per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adaptbench.adapters import Adapter, AdapterConfig, SiteWrapper
from adaptbench.registry import register_adapter


@dataclass
class LocalBiasConfig(AdapterConfig):
    """local_bias has no options."""


class AddedBias(SiteWrapper):
    """``linear(x) + b`` around a frozen linear."""

    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        weight = base_layer.weight
        self.bias = nn.Parameter(torch.zeros(base_layer.out_features, device=weight.device, dtype=weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.bias

    @torch.no_grad()
    def merged_module(self) -> nn.Linear:
        if self.base_layer.bias is None:
            self.base_layer.bias = nn.Parameter(torch.zeros_like(self.bias), requires_grad=False)
        self.base_layer.bias.add_(self.bias)
        return self.base_layer


class LocalBias(Adapter):
    """Local bias (example --plugin file): a learnable bias after each block's mlp_out."""

    mergeable = True

    def _attach(self, backbone) -> None:
        for block in range(backbone.anatomy.num_blocks):
            wrapper = self.wrap_site("mlp_out", block, AddedBias)
            self.declare(f"blocks.{block}.mlp_out.bias", wrapper.bias)


register_adapter("local_bias", LocalBiasConfig, LocalBias)
