"""The backbone anatomy: one map from canonical site names to modules, for every backbone.

Adapters are written against this anatomy, never against a model class, so that the
adapters x backbones matrix costs n + m code instead of n x m.

A transformer block is canonicalised into two (later: three) *residual branches*::

    x = x + attn(x)        attn = post(core(norm(x))), core = self-attention
    x = x + mlp(x)         mlp  = post(core(norm(x))), core = the MLP

Per block the sites are:

==========  ================================================  =========================
site        meaning                                           module
==========  ================================================  =========================
qkv         fused q,k,v projection (Linear d -> 3d)           ``attn.core.qkv``
attn_out    attention output projection                       ``attn.core.proj``
mlp_in      first MLP linear                                  ``mlp.core.fc1``
mlp_out     second MLP linear                                 ``mlp.core.fc2``
norm1       pre-norm of the attention branch                  ``attn.norm``
norm2       pre-norm of the MLP branch                        ``mlp.norm``
attn        the attention residual branch (input x, output    ``attn``
            the residual update; for parallel adapters)
mlp         the MLP residual branch                           ``mlp``
block       the whole block                                   the block
==========  ================================================  =========================

Backbone-wide sites: ``patch_embed`` (image -> tokens), ``final_norm`` (after the last block)
and ``tokens`` (the module the embedded token sequence passes through just before the first
block; prompts are inserted there).

Backbone-wide facts: ``embed_dim``, ``num_blocks``, ``num_prefix_tokens``, ``grid`` and
``token_layout`` ("BNC" for timm/CLIP; "BHWC" for SAM, whose attention core partitions
windows itself, so the branch sites still see whole grids). A video backbone adds a
``temporal`` branch to its blocks; adapters that do not name it never touch it.

Adapters replace sites with wrappers (``backbone.replace_site``); the wrapper keeps the
original as ``base_layer`` (PEFT's convention), so wrappers compose and ``merge()`` can put
the original module back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

BLOCK_SITES = ("qkv", "attn_out", "mlp_in", "mlp_out", "norm1", "norm2", "attn", "mlp", "block")
GLOBAL_SITES = ("patch_embed", "tokens", "final_norm")
LINEAR_SITES = ("qkv", "attn_out", "mlp_in", "mlp_out")
NORM_SITES = ("norm1", "norm2")

# Where each block site lives, as an attribute path from the block.
_SITE_PATHS = {
    "qkv": "attn.core.qkv",
    "attn_out": "attn.core.proj",
    "mlp_in": "mlp.core.fc1",
    "mlp_out": "mlp.core.fc2",
    "norm1": "attn.norm",
    "norm2": "mlp.norm",
    "attn": "attn",
    "mlp": "mlp",
}


class ResidualBranch(nn.Module):
    """One residual branch of a pre-norm transformer block: ``post(core(norm(x)))``."""

    def __init__(self, norm: nn.Module, core: nn.Module, post: nn.Module | None = None):
        super().__init__()
        self.norm = norm
        self.core = core
        # post holds what the original block applied after the core (LayerScale,
        # DropPath); kept as one module so site paths stay the same for every backbone.
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.core(self.norm(x)))


class TransformerBlock(nn.Module):
    """A canonical pre-norm block: ``x + attn(x)``, then ``x + mlp(x)``."""

    def __init__(self, attn: ResidualBranch, mlp: ResidualBranch):
        super().__init__()
        self.attn = attn
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


@dataclass
class Anatomy:
    """Block-independent facts about a backbone's token stream."""

    embed_dim: int
    num_blocks: int
    num_prefix_tokens: int  # class / register tokens before the patch tokens
    grid: tuple[int, int]  # patch grid (H', W') at the configured input size
    token_layout: str = "BNC"  # "BNC" (timm, CLIP) or "BHWC" (SAM)
    has_class_token: bool = True
    extra: dict = field(default_factory=dict)


def _resolve(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The parent module and attribute name that ``path`` ("a.b.c") points at.

    Site wrappers on the way are stepped through (to their ``base_layer``), so that a site
    inside a wrapped block or branch stays reachable: adapters compose.
    """
    *parents, attr = path.split(".")
    parent = _through_wrappers(root, attr if not parents else parents[0])
    for index, name in enumerate(parents):
        following = parents[index + 1] if index + 1 < len(parents) else attr
        parent = _through_wrappers(getattr(parent, name), following)
    return parent, attr


def _through_wrappers(module: nn.Module, wanted: str) -> nn.Module:
    """``module``, or the first ``base_layer`` below it that has attribute ``wanted``."""
    while not hasattr(module, wanted) and hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def site_path(site: str) -> str:
    if site not in _SITE_PATHS:
        raise KeyError(site)
    return _SITE_PATHS[site]
