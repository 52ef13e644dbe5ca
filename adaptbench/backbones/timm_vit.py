"""timm Vision Transformers behind the canonical anatomy.

Any timm ViT built from timm's pre-norm ``Block`` works (``vit_*``, ``deit_*``, ``eva``-free
variants with LayerScale, register tokens, no class token ...). Its blocks are rebuilt as
:class:`~adaptbench.backbones.anatomy.TransformerBlock` from the very same submodules, so the
pretrained weights and the maths are untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AdaptbenchError
from ..registry import register_backbone
from .anatomy import Anatomy, ResidualBranch, TransformerBlock
from .base import Backbone, DataConfig
from .weights import resolve_timm_weights

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


class TimmViT(Backbone):
    """A timm ``VisionTransformer`` with canonical sites."""

    def __init__(self, name: str, model: nn.Module, weights_source: str, default_pool: str):
        blocks = nn.Sequential(*[_canonical_block(name, i, b) for i, b in enumerate(model.blocks)])
        model.blocks = blocks
        cfg = model.pretrained_cfg
        super().__init__(
            name=name,
            blocks=blocks,
            anatomy=Anatomy(
                embed_dim=model.embed_dim,
                num_blocks=len(blocks),
                num_prefix_tokens=model.num_prefix_tokens,
                grid=tuple(model.patch_embed.grid_size),
                has_class_token=model.cls_token is not None,
            ),
            data_config=DataConfig(
                input_size=tuple(model.patch_embed.img_size),
                mean=tuple(cfg.get("mean", (0.5, 0.5, 0.5))),
                std=tuple(cfg.get("std", (0.5, 0.5, 0.5))),
                interpolation=cfg.get("interpolation", "bicubic"),
            ),
            weights_source=weights_source,
            default_pool=default_pool,
        )
        self.model = model

    def forward_features(self, images):
        return self.model.forward_features(images)

    def pool(self, tokens, mode=None):
        # timm's mean-pooling models norm after pooling (fc_norm) instead of before.
        return self.model.fc_norm(super().pool(tokens, mode))

    def global_site_path(self, site: str) -> str:
        # norm_pre is where the embedded tokens (class + patches + positions) enter the
        # blocks: the natural place to insert prompt tokens.
        final_norm = "model.fc_norm" if isinstance(self.model.norm, nn.Identity) else "model.norm"
        return {"patch_embed": "model.patch_embed", "tokens": "model.norm_pre",
                "final_norm": final_norm}[site]


def _canonical_block(model_name: str, index: int, block: nn.Module) -> TransformerBlock:
    missing = [part for part in _BLOCK_PARTS if not hasattr(block, part)]
    if missing or not all(hasattr(block.attn, a) for a in ("qkv", "proj")) or not all(
        hasattr(block.mlp, f) for f in ("fc1", "fc2")
    ):
        raise AdaptbenchError(
            f"timm model {model_name!r}: block {index} ({type(block).__name__}) is not a "
            f"pre-norm ViT block with attn.qkv/attn.proj and mlp.fc1/mlp.fc2; this family "
            f"is not supported yet"
        )
    attn = ResidualBranch(block.norm1, block.attn, nn.Sequential(block.ls1, block.drop_path1))
    mlp = ResidualBranch(block.norm2, block.mlp, nn.Sequential(block.ls2, block.drop_path2))
    return TransformerBlock(attn, mlp)


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

    if not timm.is_model(model_name):
        raise AdaptbenchError(
            f"unknown timm model {model_name!r}; `python -c \"import timm; "
            f"print(timm.list_models('vit_*'))\"` lists ViT names"
        )
    load = resolve_timm_weights(model_name, weights)
    with torch.random.fork_rng(devices=[]):
        if load.init_seed is not None:
            torch.manual_seed(load.init_seed)
        model = timm.create_model(model_name, num_classes=0, **load.create_kwargs, **model_kwargs)
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


# The micro ViT's architecture; micro_pretrain.py trains exactly this.
MICRO_TIMM_MODEL = "vit_tiny_patch16_224"
MICRO_CONFIG = {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0}
# Its shipped weights, made by `adaptbench pretrain-micro` with its default settings.
MICRO_WEIGHTS = Path(__file__).parent / "weights" / "vit_micro.safetensors"
MICRO_WEIGHTS_SHA256 = "ba36ad83e518b7943ca06c1ea8a85073aabe4f6ea1614437b6f55e4b3e477a55"


def vit_micro(weights: str | None = None, **kwargs: Any) -> TimmViT:
    """Micro ViT (d=96, 4 blocks, 32x32, patch 4) pretrained on procedural glyphs for the micro tasks.

    ``weights``: None or ``"pretrained"`` (the shipped file, checked against its sha256),
    ``"random[:seed]"``, or a ``.safetensors`` file written by ``adaptbench pretrain-micro``.
    """
    if weights in (None, "pretrained"):
        weights = str(_shipped_micro_weights())
    return timm_vit(MICRO_TIMM_MODEL, weights=weights, display_name="vit_micro", **{**MICRO_CONFIG, **kwargs})


def _shipped_micro_weights() -> Path:
    from .micro_pretrain import sha256_of

    # A rerun writes the same bytes only on the same CPU and library versions; elsewhere
    # its weights differ in the last bits, so it is passed as a file rather than shipped.
    regenerate = ("reinstall adaptbench, or regenerate the weights with `adaptbench pretrain-micro "
                  "--out vit_micro.safetensors` and pass --weights vit_micro.safetensors")
    if not MICRO_WEIGHTS.is_file():
        raise AdaptbenchError(f"vit_micro's weights file {MICRO_WEIGHTS} is missing; {regenerate}")
    found = sha256_of(MICRO_WEIGHTS)
    if found != MICRO_WEIGHTS_SHA256:
        raise AdaptbenchError(
            f"vit_micro's weights file {MICRO_WEIGHTS} is corrupt (sha256 {found}, expected "
            f"{MICRO_WEIGHTS_SHA256}); {regenerate}"
        )
    return MICRO_WEIGHTS


register_backbone("timm", timm_vit)
register_backbone("vit_tiny_test", vit_tiny_test)
register_backbone("vit_tiny_test_reg", vit_tiny_test_reg)
register_backbone("vit_micro", vit_micro)
