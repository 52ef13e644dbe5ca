"""Frozen backbones behind one anatomy. ``load_backbone`` is the one way to build one."""

from __future__ import annotations

from ..errors import AdaptbenchError, did_you_mean
from ..registry import BACKBONES
from .anatomy import BLOCK_SITES, GLOBAL_SITES, LINEAR_SITES, NORM_SITES, Anatomy
from .base import Backbone, DataConfig

__all__ = ["Anatomy", "Backbone", "DataConfig", "load_backbone", "BLOCK_SITES",
           "GLOBAL_SITES", "LINEAR_SITES", "NORM_SITES"]


def load_backbone(name: str, weights: str | None = None, **kwargs) -> Backbone:
    """A registered backbone (``vit_micro``), ``timm:<model>``, or a bare timm ViT name."""
    if name == "timm":
        raise AdaptbenchError("backbone 'timm' needs a model name: timm:<name>, e.g. timm:vit_base_patch16_224")
    if name.startswith("timm:"):
        return BACKBONES.get("timm")(name.partition(":")[2], weights=weights, **kwargs)
    if name in BACKBONES:
        return BACKBONES.get(name)(weights=weights, **kwargs)
    if _is_timm_model(name):
        return BACKBONES.get("timm")(name, weights=weights, **kwargs)
    raise AdaptbenchError(
        f"unknown backbone {name!r}{did_you_mean(name, BACKBONES.names())}; "
        f"expected a name from `adaptbench ls backbones` or a timm ViT name (timm:<name>)"
    )


def _is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)
