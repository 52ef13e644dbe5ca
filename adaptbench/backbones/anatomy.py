"""The backbone anatomy: the contract every backbone family fulfils.

Adapters are written against this anatomy, never against a model class, so that the
adapters x backbones matrix costs n + m code instead of n x m. Each *family* (timm, open_clip,
segment-anything, plugins) canonicalises its library's blocks at load time, re-homing the very
same submodules (no weight is copied), accepts block classes from an explicit list, and says
in its :class:`Anatomy` where each site lives and which backbone-wide sites exist.

A canonical block holds an ordered set of named *residual branches*::

    for name, branch in block.branches.items():   # "attn", "mlp"; a video family adds "temporal"
        x = x + branch(x)                          # branch = post(core(norm(x)))

Per block the sites are (paths from the block, as the canonical families lay them out; a
family whose core differs, e.g. SAM's windowed attention, gives its own paths):

==========  ================================================  ==========================
site        meaning                                           canonical path
==========  ================================================  ==========================
qkv         fused q,k,v projection (Linear d -> 3d, rows      ``branches.attn.core.qkv``
            [q; k; v]); ``q``, ``k``, ``v`` are its sub-sites
attn_out    attention output projection                       ``branches.attn.core.proj``
mlp_in      first MLP linear                                  ``branches.mlp.core.fc1``
mlp_out     second MLP linear                                 ``branches.mlp.core.fc2``
norm1       pre-norm of the attention branch                  ``branches.attn.norm``
norm2       pre-norm of the MLP branch                        ``branches.mlp.norm``
<branch>    each residual branch (input x, output the         ``branches.<name>``
            residual update; for parallel adapters)
block       the whole block                                   the block
==========  ================================================  ==========================

Backbone-wide sites, each with a contract (``Anatomy.global_sites`` lists those that exist):
``patch_embed`` (images -> patch tokens, channels last: (B, N, C) or (B, H', W', C)),
``tokens`` (the module the embedded sequence passes just before the first block),
``final_norm`` (a per-token norm over C after the last block, or after pooling for timm's
``fc_norm``) and ``neck`` (SAM's conv neck, (B, C, H', W') -> (B, C', H', W')).

Adapters replace sites with wrappers (``backbone.replace_site``); a wrapper keeps the original
as ``base_layer`` (PEFT's convention), so wrappers compose and ``merge()`` can put the original
module back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import AdaptbenchError

LINEAR_SITES = ("qkv", "attn_out", "mlp_in", "mlp_out")
NORM_SITES = ("norm1", "norm2")
BRANCH_SITES = ("attn", "mlp")  # the branches every image family has
QKV_PARTS = ("q", "k", "v")  # sub-sites of the fused qkv: its three thirds of output rows
GLOBAL_SITES = ("patch_embed", "tokens", "final_norm", "neck")
LAYOUTS = ("BNC", "BHWC")

CANONICAL_SITE_PATHS = {
    "qkv": "branches.attn.core.qkv",
    "attn_out": "branches.attn.core.proj",
    "mlp_in": "branches.mlp.core.fc1",
    "mlp_out": "branches.mlp.core.fc2",
    "norm1": "branches.attn.norm",
    "norm2": "branches.mlp.norm",
}
# kept for the adapters that name every block site (e.g. in their option help)
BLOCK_SITES = (*CANONICAL_SITE_PATHS, *BRANCH_SITES, "block")


class ResidualBranch(nn.Module):
    """One residual branch of a pre-norm transformer block: ``post(core(norm(x)))``."""

    def __init__(self, norm: nn.Module, core: nn.Module, post: nn.Module | None = None):
        super().__init__()
        self.norm = norm
        self.core = core
        # post holds what the original block applied after the core (LayerScale,
        # DropPath), so that every family has the same branch shape.
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.core(self.norm(x)))


class TransformerBlock(nn.Module):
    """A canonical pre-norm block: ``x = x + branch(x)`` for each branch, in order."""

    def __init__(self, branches: dict[str, nn.Module]):
        super().__init__()
        self.branches = nn.ModuleDict(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for branch in self.branches.values():
            x = x + branch(x)
        return x

    def __getattr__(self, name: str):
        # block.attn / block.mlp read the branches (a convenience for people and tests;
        # site resolution always goes through "branches.<name>")
        branches = self.__dict__["_modules"].get("branches")
        if branches is not None and name in branches:
            return branches[name]
        return super().__getattr__(name)


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))``: the canonical MLP core, made of a family's own modules (open_clip's
    ``c_fc``/``c_proj``, SAM's ``lin1``/``lin2``) re-homed under canonical names."""

    def __init__(self, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear):
        super().__init__()
        self.fc1 = fc1
        self.act = act
        self.fc2 = fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@dataclass
class Anatomy:
    """What a family says about its backbone: widths, tokens, and where every site lives."""

    embed_dim: int  # width of the tokens inside the blocks
    num_blocks: int
    num_prefix_tokens: int  # class / register tokens before the patch tokens
    grid: tuple[int, int]  # patch grid (H', W') at the configured input size
    patch_size: tuple[int, int] = (16, 16)
    mlp_dim: int = 0  # hidden width of the MLPs (0: 4 x embed_dim)
    token_layout: str = "BNC"  # "BNC" (timm, CLIP) or "BHWC" (SAM)
    has_class_token: bool = True
    feature_dim: int | None = None  # width of forward()'s pooled features (default: embed_dim)
    site_paths: dict[str, str] = field(default_factory=lambda: dict(CANONICAL_SITE_PATHS))
    branches: tuple[str, ...] = BRANCH_SITES
    global_sites: tuple[str, ...] = ("patch_embed", "tokens", "final_norm")
    family: str = "timm"
    # the family's layer-norm classes (segment-anything's LayerNorm2d is not an nn.LayerNorm):
    # BitFit and LN tuning find norms by these types, so counts do not depend on the library
    norm_types: tuple[type, ...] = (nn.LayerNorm,)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.token_layout not in LAYOUTS:
            raise AdaptbenchError(f"token layout {self.token_layout!r}: expected one of {LAYOUTS}")
        unknown = set(self.global_sites) - set(GLOBAL_SITES)
        if unknown:
            raise AdaptbenchError(f"unknown backbone-wide sites {sorted(unknown)}; expected some of {GLOBAL_SITES}")
        if self.feature_dim is None:
            self.feature_dim = self.embed_dim
        if not self.mlp_dim:
            self.mlp_dim = 4 * self.embed_dim

    @property
    def block_sites(self) -> tuple[str, ...]:
        return (*self.site_paths, *self.branches, "block")

    def path_of(self, site: str) -> str:
        """Attribute path of a block site, from the block."""
        if site in self.branches:
            return f"branches.{site}"
        return self.site_paths[site]


def require_block_class(block: nn.Module, accepted: tuple[type, ...], model: str, index: int,
                        hint: str = "") -> None:
    """Families accept blocks by class, from an explicit list, never by attribute names: a
    block with the same part names but another forward (timm's windowed SAM blocks) would be
    rebuilt wrong without a word."""
    if type(block) in accepted:
        return
    names = [f"{c.__module__}.{c.__name__}" for c in accepted]
    raise AdaptbenchError(f"{model}: block {index} is a {type(block).__module__}.{type(block).__name__}, "
                          f"expected one of {names}{hint}; this block class is not supported")


def qkv_rows(part: str, out_features: int) -> slice:
    """The output rows of ``part`` (q, k or v) in a fused qkv linear with rows [q; k; v]."""
    if part not in QKV_PARTS:
        raise AdaptbenchError(f"unknown qkv part {part!r}; expected one of {QKV_PARTS}")
    if out_features % 3:
        raise AdaptbenchError(f"a fused qkv linear with {out_features} outputs cannot hold three equal parts")
    width = out_features // 3
    index = QKV_PARTS.index(part)
    return slice(index * width, (index + 1) * width)


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
