"""Final shift: a learnable per-channel shift after the backbone's final norm.

    y = final_norm(x) + b,      b in R^d,  b = 0 at initialisation

The identity at initialisation; merged exactly by adding ``b`` to the final norm's bias.
Written against the anatomy (the ``final_norm`` site) only, as every adapter must be.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adaptbench.adapters import Adapter, AdapterConfig, SiteWrapper


@dataclass
class FinalShiftConfig(AdapterConfig):
    """Final shift has no options."""


class Shift(SiteWrapper):
    def __init__(self, base_layer: nn.LayerNorm, channels: int):
        super().__init__(base_layer)
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return self.base_layer(x) + self.shift

    def merged_module(self):
        self.base_layer.bias.data.add_(self.shift.data)
        return self.base_layer


class FinalShift(Adapter):
    """Final shift (example plugin): a learnable bias after the final norm."""

    config_class = FinalShiftConfig
    mergeable = True

    def _attach(self, backbone) -> None:
        wrapper = self.wrap_site("final_norm", None, lambda base: Shift(base, backbone.anatomy.embed_dim))
        self.declare("final_norm.shift", wrapper.shift)
