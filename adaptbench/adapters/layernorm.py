"""LayerNorm tuning: train only the affine parameters of every LayerNorm.

As in the "LN-TUNE" baseline (Basu et al., "Strong Baselines for Parameter Efficient
Few-Shot Fine-tuning", AAAI 2024; also Zhao et al., "Tuning LayerNorm in Attention",
ICLR 2024): ``y = gamma * (x - mu) / sigma + beta`` with only ``gamma`` and ``beta``
trained, in every LayerNorm of the backbone (block pre-norms and the final norm).
"""

from __future__ import annotations

from dataclasses import dataclass


from ..registry import register_adapter
from .base import AdapterConfig, InPlaceAdapter


@dataclass
class LayerNormTuningConfig(AdapterConfig):
    """LayerNorm tuning has no options: every LayerNorm's gamma and beta are trained."""


class LayerNormTuning(InPlaceAdapter):
    """LayerNorm tuning: train only the LayerNorm scales and shifts."""

    def _attach(self, backbone) -> None:
        for module_name, module in backbone.named_modules():
            # the family's norm classes (SAM's LayerNorm2d too), affine ones only
            if isinstance(module, backbone.anatomy.norm_types) and getattr(module, "elementwise_affine", True):
                for param_name, param in module.named_parameters(recurse=False):
                    if backbone.is_sealed(param):  # not a norm another adapter added
                        self.declare(f"{module_name}.{param_name}", param)


register_adapter("ln", LayerNormTuningConfig, LayerNormTuning)
