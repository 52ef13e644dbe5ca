"""Frozen backbones behind one anatomy. ``load_backbone`` is the one way to build one.

Every name resolves through the backbone registry: registered names (``vit_micro``) and the
members of its families (``timm:<name>``, ``clip:<model>/<tag or file>``, ``sam:vit_b``,
plugin families).
"""

from __future__ import annotations

import dataclasses
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
           "check_backbone_weights", "check_backbone_options", "backbone_anatomy", "BLOCK_SITES", "GLOBAL_SITES", "LINEAR_SITES", "NORM_SITES", "QKV_PARTS"]


def load_backbone(name: str, weights: str | None = None, options=None, **factory_kwargs) -> Backbone:
    """Build backbone ``name`` (``weights``: None/"pretrained", "random[:seed]" or a file).

    ``options``: a :class:`~adaptbench.config.BackboneOptions` (or its dict). A family's factory
    says which it honours in its ``accepted_options`` attribute (``img_size``,
    ``keep_projection``, ...); any other option set is refused with one line. Gradient
    checkpointing is the backbone's own (``Backbone._run_block``), so every family has it.
    ``factory_kwargs`` go to the factory unchecked (Python use: ``patch_size=8`` for a timm
    model built small).
    """
    options = check_backbone_options(name, options)
    backbone = BACKBONES.get(name)(weights=weights, **options.factory_options(), **factory_kwargs)
    backbone.grad_checkpointing = options.grad_checkpointing
    if options.drop_path:
        add_drop_path(backbone, options.drop_path)
    if options.normalization not in (None, "backbone"):
        from ..config import NORMALIZATION_STATS

        mean, std = NORMALIZATION_STATS[options.normalization]
        backbone.data_config = dataclasses.replace(backbone.data_config, mean=mean, std=std)
    return backbone


def add_drop_path(backbone: "Backbone", rate: float) -> None:
    """Stochastic depth on every residual branch of the canonical blocks, at timm's rates
    (``linspace(0, rate, depth)``: block i of n drops with ``rate * i / (n - 1)``).

    The drop follows the branch's ``post`` (LayerScale, the family's own DropPath), so it acts
    where timm's ``drop_path_rate`` acts and adapters that add their output outside ``post``
    (AdaptFormer, Convpass) stay outside it, as in their official code. It is active in
    training mode only, so the fast path sees a backbone whose training differs from its
    evaluation and runs it (``runner/features.py``).
    """
    from timm.layers import DropPath
    from torch import nn

    from .anatomy import ResidualBranch

    blocks = list(backbone.blocks)
    for index, block in enumerate(blocks):
        block_rate = rate * index / max(1, len(blocks) - 1)
        if block_rate == 0:
            continue
        for branch in block.modules():
            if isinstance(branch, ResidualBranch):
                branch.post = nn.Sequential(branch.post, DropPath(block_rate))


def check_backbone_options(name: str, options=None):
    """``options`` as :class:`~adaptbench.config.BackboneOptions`, refused in one line when the
    family of ``name`` cannot honour one (its factory's ``accepted_options``); builds nothing."""
    from ..config import BackboneOptions
    from ..errors import AdaptbenchError

    options = options if isinstance(options, BackboneOptions) else BackboneOptions(**(options or {}))
    refused = refused_backbone_options(name, options)
    if refused:
        accepted = tuple(getattr(BACKBONES.get(name), "accepted_options", ()))
        value = options.factory_options()[refused[0]]
        raise AdaptbenchError(f"backbone option {refused[0]}={value!r} does not apply to {name}; it accepts "
                              f"{', '.join(accepted) or 'no options'} (and grad_checkpointing)")
    return options


def refused_backbone_options(name: str, options) -> list[str]:
    """The options set in ``options`` that the factory of ``name`` does not accept."""
    accepted = tuple(getattr(BACKBONES.get(name), "accepted_options", ()))
    return [option for option in options.factory_options() if option not in accepted]


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
