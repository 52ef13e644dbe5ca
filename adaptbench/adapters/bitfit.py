"""BitFit: bias-terms fine-tuning.

Ben Zaken, Ravfogel, Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022 (arXiv:2106.10199).

Every weight W of the backbone is frozen and every bias b is trained:
``y = W x + b`` with only ``b`` updated. "Bias" means the additive term of every Linear,
convolution and LayerNorm that has one (the paper trains all bias terms of the model);
they are found by module type, never by parameter-name matching.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..registry import register_adapter
from .base import AdapterConfig, InPlaceAdapter

BIASED_MODULES = (nn.Linear, nn.Conv2d)  # and the backbone's norm types (anatomy.norm_types)


@dataclass
class BitFitConfig(AdapterConfig):
    """BitFit has no options: every bias of the backbone is trained."""


class BitFit(InPlaceAdapter):
    """BitFit (Ben Zaken et al. 2022): train only the bias terms."""

    def _attach(self, backbone) -> None:
        biased = (*BIASED_MODULES, *backbone.anatomy.norm_types)
        for module_name, module in backbone.named_modules():
            # the backbone's own biases only: an adapter attached earlier keeps its tensors
            if isinstance(module, biased) and module.bias is not None and backbone.is_sealed(module.bias):
                self.declare(f"{module_name}.bias", module.bias)


register_adapter("bitfit", BitFitConfig, BitFit)
