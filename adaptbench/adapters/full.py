"""Full fine-tuning: every backbone parameter is trained (VTAB-1k's "Full" row).

Its checkpoint holds the whole backbone, which is the honest storage cost of the method.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import register_adapter
from .base import AdapterConfig, InPlaceAdapter


@dataclass
class FullFineTuneConfig(AdapterConfig):
    """Full fine-tuning has no options."""


class FullFineTune(InPlaceAdapter):
    """Full fine-tuning: every backbone parameter is trained."""

    def _attach(self, backbone) -> None:
        for name, param in backbone.named_sealed_parameters():  # not other adapters' tensors
            self.declare(name, param)


register_adapter("full", FullFineTuneConfig, FullFineTune)
