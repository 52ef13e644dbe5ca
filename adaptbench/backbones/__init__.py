"""Frozen backbones behind one anatomy. ``load_backbone`` is the one way to build one.

Every name resolves through the backbone registry: registered names (``vit_micro``) and the
members of its families (``timm:<name>``, ``clip:<model>/<tag or file>``, ``sam:vit_b``,
plugin families).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..registry import BACKBONES

if TYPE_CHECKING:
    from .anatomy import Anatomy
    from .base import Backbone

# The package is imported by family listers (``adaptbench ls backbones``), which must not
# import torch: its torch-bound names load on first use (PEP 562).
_LAZY = {**dict.fromkeys(("BLOCK_SITES", "GLOBAL_SITES", "LINEAR_SITES", "NORM_SITES", "QKV_PARTS", "Anatomy"),
                         ".anatomy"),
         **dict.fromkeys(("Backbone", "DataConfig", "DenseFeatures"), ".base"),
         "TokenGeometry": ".geometry"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value

__all__ = ["Anatomy", "Backbone", "DataConfig", "DenseFeatures", "TokenGeometry", "load_backbone",
           "check_backbone_weights", "backbone_anatomy", "BLOCK_SITES", "GLOBAL_SITES", "LINEAR_SITES", "NORM_SITES", "QKV_PARTS"]


def load_backbone(name: str, weights: str | None = None, **options) -> Backbone:
    """Build backbone ``name`` (``weights``: None/"pretrained", "random[:seed]" or a file)."""
    return BACKBONES.get(name)(weights=weights, **options)


def backbone_anatomy(name: str, **options) -> Anatomy:
    """The anatomy of ``name`` without its weights: the backbone is built on the meta device
    (no memory, no file read), so ``validate`` and the runner can tell which adapters apply
    to a ViT-H or SAM-H without loading gigabytes."""
    import torch

    with torch.device("meta"):
        return load_backbone(name, weights="random", **options).anatomy


def check_backbone_weights(name: str, weights: str | None = None) -> str:
    """Where ``name``'s weights would come from, without loading or downloading them; raises
    :class:`AdaptbenchError` when they are missing. Registered (small) backbones without a
    check of their own are built to prove it."""
    family = BACKBONES.family_of(name)
    if family is not None:
        BACKBONES.require(name)
        return family.check_weights(name[len(family.prefix):], weights)
    factory = BACKBONES.get(name)
    check = getattr(factory, "check_weights", None)
    if check is not None:
        return check(weights)
    return load_backbone(name, weights=weights).weights_source
