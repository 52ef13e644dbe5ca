"""Linear probe: the backbone stays frozen, only the task head is trained.

The floor every parameter-efficient method must beat (VTAB-1k's "Linear" row).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import register_adapter
from .base import AdapterConfig, InPlaceAdapter


@dataclass
class LinearProbeConfig(AdapterConfig):
    """The linear probe has no options: the head belongs to the task."""


class LinearProbe(InPlaceAdapter):
    """Linear probe: frozen backbone, train the task head only."""

    def _attach(self, backbone) -> None:
        """Declares nothing: no backbone tensor is trained."""


register_adapter("linear", LinearProbeConfig, LinearProbe)
