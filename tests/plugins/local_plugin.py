"""A local plugin file (``adaptbench --plugin tests/plugins/local_plugin.py``).

Registers ``local_bias``: a learnable bias added to the output of every block's second MLP
linear, ``y = fc2(h) + b_l`` with ``b_l = 0`` at init (the identity), merged exactly into
``fc2.bias``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adaptbench.adapters import Adapter, AdapterConfig, SiteWrapper
from adaptbench.registry import register_adapter


@dataclass
class LocalBiasConfig(AdapterConfig):
    """No options."""


class AddedBias(SiteWrapper):
    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        self.bias = nn.Parameter(torch.zeros(base_layer.out_features))

    def forward(self, x):
        return self.base_layer(x) + self.bias

    def merged_module(self):
        self.base_layer.bias.data.add_(self.bias.data)
        return self.base_layer


class LocalBias(Adapter):
    """Local bias (example --plugin file): a learnable bias after each block's mlp_out."""

    mergeable = True

    def _attach(self, backbone) -> None:
        for block in range(backbone.anatomy.num_blocks):
            wrapper = self.wrap_site("mlp_out", block, AddedBias)
            self.declare(f"blocks.{block}.mlp_out.bias", wrapper.bias)


register_adapter("local_bias", LocalBiasConfig, LocalBias)
