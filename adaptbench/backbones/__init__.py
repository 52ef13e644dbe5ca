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


def load_backbone(name: str, weights: str | None = None, options=None, **factory_kwargs) -> Backbone:
    """Build backbone ``name`` (``weights``: None/"pretrained", "random[:seed]" or a file).

    ``options``: a :class:`~adaptbench.config.BackboneOptions` (or its dict). A family's factory
    says which it honours in its ``accepted_options`` attribute (``img_size``,
    ``keep_projection``, ...); any other option set is refused with one line. Gradient
    checkpointing is the backbone's own (``Backbone._run_block``), so every family has it.
    ``factory_kwargs`` go to the factory unchecked (Python use: ``patch_size=8`` for a timm
    model built small).
    """
    from ..config import BackboneOptions
    from ..errors import AdaptbenchError

    options = options if isinstance(options, BackboneOptions) else BackboneOptions(**(options or {}))
    factory = BACKBONES.get(name)
    given = options.factory_options()
    accepted = tuple(getattr(factory, "accepted_options", ()))
    for option, value in given.items():
        if option not in accepted:
            raise AdaptbenchError(f"backbone option {option}={value!r} does not apply to {name}; it accepts "
                                  f"{', '.join(accepted) or 'no options'} (and grad_checkpointing)")
    backbone = factory(weights=weights, **given, **factory_kwargs)
    backbone.grad_checkpointing = options.grad_checkpointing
    return backbone


def backbone_anatomy(name: str, options=None) -> Anatomy:
    """The anatomy of ``name`` without its weights: the backbone is built on the meta device
    (no memory, no file read), so ``validate`` and the runner can tell which adapters apply
    to a ViT-H or SAM-H without loading gigabytes."""
    import torch

    with torch.device("meta"):
        return load_backbone(name, weights="random", options=options).anatomy


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
