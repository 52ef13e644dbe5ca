"""timm Vision Transformers behind the canonical anatomy (the ``timm:<name>`` family).

Accepted: a timm ``VisionTransformer`` whose blocks are exactly timm's pre-norm
``vision_transformer.Block`` (``vit_*``, ``deit3_*``, CLIP towers in timm, LayerScale, register
tokens, no class token ...). Its blocks are rebuilt as
:class:`~adaptbench.backbones.anatomy.TransformerBlock` from the very same submodules, so the
pretrained weights and the maths are untouched. Any other block class is refused by class,
not sniffed by attribute names: timm's ``samvit_*`` blocks have exactly the same part names
but partition windows in ``Block.forward``, which a rebuilt block would silently drop (use
the ``sam:`` family for SAM).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import AdaptbenchError
from ...registry import register_backbone
from ..anatomy import Anatomy, ResidualBranch, TransformerBlock, require_block_class
from ..base import Backbone, DataConfig
from ..geometry import TokenGeometry
from ..timm_weights import check_timm_weights, loading_weights_file, resolve_timm_weights


def accepted_block_classes() -> tuple[type, ...]:
    """The timm block classes whose forward is exactly ``x + ls1(attn(norm1(x)))`` then
    ``x + ls2(mlp(norm2(x)))`` (drop paths aside): the only ones rebuilt canonically."""
    from timm.models.vision_transformer import Block

    return (Block,)


class TimmViT(Backbone):
    """A timm ``VisionTransformer`` with canonical sites."""

    def __init__(self, name: str, model: nn.Module, weights_source: str, default_pool: str):
        _check_model(name, model)
        model.blocks = nn.Sequential(*[_canonical_block(name, i, b) for i, b in enumerate(model.blocks)])
        cfg = model.pretrained_cfg
        patch_size = tuple(model.patch_embed.patch_size)
        super().__init__(
            name=name,
            anatomy=Anatomy(
                embed_dim=model.embed_dim,
                num_blocks=len(model.blocks),
                num_prefix_tokens=model.num_prefix_tokens,
                grid=tuple(model.patch_embed.grid_size),
                patch_size=patch_size,
                mlp_dim=model.blocks[0].branches.mlp.core.fc1.out_features,
                has_class_token=model.cls_token is not None,
                family="timm",
            ),
            data_config=DataConfig(
                input_size=tuple(model.patch_embed.img_size),
                mean=tuple(cfg.get("mean", (0.5, 0.5, 0.5))),
                std=tuple(cfg.get("std", (0.5, 0.5, 0.5))),
                interpolation=cfg.get("interpolation", "bicubic"),
            ),
            weights_source=weights_source,
            blocks_path="model.blocks",
            default_pool=default_pool,
        )
        self.model = model

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, TokenGeometry]:
        # timm's forward_features up to the blocks, with the grid read off the patch
        # embedding's output: (B, H', W', C) under dynamic_img_size, else (B, H'W', C) at
        # the fixed grid timm enforces.
        model = self.model
        x = model.patch_embed(images)
        grid = tuple(x.shape[1:3]) if x.dim() == 4 else self.anatomy.grid
        x = model.norm_pre(model.patch_drop(model._pos_embed(x)))
        geometry = TokenGeometry(batch=x.shape[0], grid=grid, prefix=model.num_prefix_tokens)
        if x.shape[1] != geometry.num_tokens:
            raise AdaptbenchError(f"backbone {self.name!r}: patch embedding gave {x.shape[1]} tokens, expected "
                                  f"{geometry.num_tokens} for a {grid[0]}x{grid[1]} grid")
        return x, geometry

    def finish(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.norm(tokens)

    def pool(self, tokens, mode=None):
        # timm's mean-pooling models norm after pooling (fc_norm) instead of before.
        return self.model.fc_norm(super().pool(tokens, mode))

    def global_site_path(self, site: str) -> str:
        # norm_pre is where the embedded tokens (class + patches + positions) enter the
        # blocks: the natural place to insert prompt tokens.
        final_norm = "model.fc_norm" if isinstance(self.model.norm, nn.Identity) else "model.norm"
        return {"patch_embed": "model.patch_embed", "tokens": "model.norm_pre",
                "final_norm": final_norm}[site]


def _check_model(name: str, model: nn.Module) -> None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise AdaptbenchError(f"timm model {name!r} is a {type(model).__name__}, not a VisionTransformer; "
                              f"the timm family takes timm ViTs (SAM: the sam: family)")


def _canonical_block(model_name: str, index: int, block: nn.Module) -> TransformerBlock:
    require_block_class(block, accepted_block_classes(), f"timm model {model_name!r}", index, " (pre-norm ViT blocks)")
    attn = ResidualBranch(block.norm1, block.attn, nn.Sequential(block.ls1, block.drop_path1))
    mlp = ResidualBranch(block.norm2, block.mlp, nn.Sequential(block.ls2, block.drop_path2))
    return TransformerBlock({"attn": attn, "mlp": mlp})


def timm_vit(
    model_name: str,
    weights: str | None = None,
    pool: str | None = None,
    display_name: str | None = None,
    **model_kwargs: Any,
) -> TimmViT:
    """Build any timm ViT by name with canonical sites.

    ``weights``: ``"pretrained"`` (the default: the local HF / torch-hub cache, downloading
    only when the hub is reachable), ``"random"``, or a local ``.safetensors`` / ``.pth`` /
    ``.npz`` file. The classifier head is dropped: tasks bring their own.
    """
    import timm

    check_timm_name(model_name)
    load = resolve_timm_weights(model_name, weights)
    with torch.random.fork_rng(devices=[]):
        if load.init_seed is not None:
            torch.manual_seed(load.init_seed)
        with loading_weights_file(load.file, model_name, display_name):  # its errors name the file
            model = timm.create_model(model_name, num_classes=0, **load.create_kwargs, **model_kwargs)
    _check_model(model_name, model)
    default_pool = pool or ("cls" if model.cls_token is not None else "mean")
    backbone = TimmViT(display_name or model_name, model, load.source, default_pool)
    backbone.seal_weights()
    return backbone


# Tiny configurations (timm's test_vit style) for CPU tests: random weights, 32x32 input.
_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def vit_tiny_test(weights: str | None = "random", **kwargs: Any) -> TimmViT:
    """Tiny random-init ViT for tests: d=32, 2 blocks, class token, qkv bias."""
    return timm_vit("vit_tiny_patch16_224", weights=weights or "random",
                    display_name="vit_tiny_test", **{**_TINY, **kwargs})


def vit_tiny_test_reg(weights: str | None = "random", **kwargs: Any) -> TimmViT:
    """Tiny random-init ViT for tests: 2 register tokens, no class token, LayerScale, no qkv bias."""
    config = dict(_TINY, reg_tokens=2, class_token=False, global_pool="avg",
                  no_embed_class=True, init_values=1e-1, qkv_bias=False)
    return timm_vit("vit_tiny_patch16_224", weights=weights or "random",
                    display_name="vit_tiny_test_reg", **{**config, **kwargs})


vit_tiny_test.accepted_options = vit_tiny_test_reg.accepted_options = ("img_size",)
register_backbone("vit_tiny_test", vit_tiny_test)
register_backbone("vit_tiny_test_reg", vit_tiny_test_reg)


# -- the timm: family (declared in adaptbench/_catalogue.py) ---------------------------------
def check_timm_name(model_name: str) -> str:
    """The member check of the ``timm:`` family: a timm model name (timm has thousands, so
    they are checked one at a time rather than listed)."""
    import timm

    if not timm.is_model(model_name):
        raise AdaptbenchError(
            f"unknown timm model {model_name!r}; `python -c \"import timm; "
            f"print(timm.list_models('vit_*'))\"` lists ViT names"
        )
    return f"timm model {model_name}"


def timm_member(model_name: str):
    """The resolver of the ``timm:`` family: a factory ``(weights=..., **options) -> TimmViT``."""
    check_timm_name(model_name)

    def factory(weights: str | None = None, **options: Any) -> TimmViT:
        return timm_vit(model_name, weights=weights, display_name=model_name, **options)

    factory.accepted_options = ("img_size",)  # timm resamples the position embedding
    return factory


def check_timm_family_weights(model_name: str, weights: str | None) -> str:
    check_timm_name(model_name)
    return check_timm_weights(model_name, weights)
