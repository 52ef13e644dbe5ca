"""Full fine-tuning: every backbone parameter is trained (VTAB-1k's "Full" row).

Its checkpoint holds the whole backbone, which is the honest storage cost of the method.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import register_adapter
from .base import Adapter, AdapterConfig


@dataclass
class FullFineTuneConfig(AdapterConfig):
    """Full fine-tuning has no options."""


class FullFineTune(Adapter):
    """Full fine-tuning: every backbone parameter is trained."""

    mergeable = True  # the weights are trained in place: merge is a no-op
    adds_parameters = False

    def _attach(self, backbone) -> None:
        for name, param in backbone.named_parameters():
            self.declare(name, param)

    def _merge(self) -> None:
        """The trained weights already are the backbone's."""


register_adapter("full", FullFineTuneConfig, FullFineTune)
