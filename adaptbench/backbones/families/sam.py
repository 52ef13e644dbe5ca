"""segment-anything image encoders behind the canonical anatomy (the ``sam:`` family).

Accepted: segment-anything's ``ImageEncoderViT`` whose blocks are exactly its
``image_encoder.Block``. Each block is rebuilt at load time as a
:class:`~adaptbench.backbones.anatomy.TransformerBlock` from the very same submodules (no
weight is copied)::

    attn: ResidualBranch(norm1, WindowedAttention(attn, window_size))
    mlp:  ResidualBranch(norm2, Mlp(lin1, act, lin2))

SAM's ``Block.forward`` partitions the grid into windows (padding it to a multiple of the
window) around ``attn`` and un-partitions afterwards; :class:`WindowedAttention` does exactly
that, so windowed blocks keep their windows (14x14 in the official encoders; the global
blocks have window 0) and the maths is unchanged: ``forward_dense(x).final`` equals
``image_encoder(x)`` (see ``benchmarks/equality_sam.py``). As a consequence the branch sites
(``attn``, ``mlp``, ``block``) see whole (B, H', W', C) grids, while the sites inside the
attention (``qkv``, ``attn_out``) see (B * windows, w, w, C) windows; during the attention
the backbone's token geometry says so (a window geometry is published on top of the grid's).

Tokens stay channels last, (B, H', W', C) ("BHWC" layout, no prefix tokens). ``embed`` is the
patch embedding plus the absolute positions (resampled bicubically for other grids),
``finish`` is SAM's conv ``neck`` (a backbone-wide site; SAM has no final norm), so the
features end in the neck's output (width ``out_chans``) and are mean-pooled.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import AdaptbenchError
from ...registry import register_backbone
from ..anatomy import Anatomy, Mlp, ResidualBranch, TransformerBlock, require_block_class
from ..base import Backbone, DataConfig
from ..geometry import GeometryContext, TokenGeometry
from .sam_names import INSTALL_HINT, random_seed, sam_variant, weights_source

SAM_SITE_PATHS = {
    "qkv": "branches.attn.core.attn.qkv",
    "attn_out": "branches.attn.core.attn.proj",
    "mlp_in": "branches.mlp.core.fc1",
    "mlp_out": "branches.mlp.core.fc2",
    "norm1": "branches.attn.norm",
    "norm2": "branches.mlp.norm",
}
# Sam.pixel_mean / pixel_std are for pixels in [0, 255]; our images are in [0, 1].
SAM_PIXEL_MEAN = tuple(v / 255 for v in (123.675, 116.28, 103.53))
SAM_PIXEL_STD = tuple(v / 255 for v in (58.395, 57.12, 57.375))
NORM_EPS = 1e-6  # build_sam.py: partial(torch.nn.LayerNorm, eps=1e-6)


@functools.cache
def _image_encoder_module():
    """segment-anything's ``modeling.image_encoder`` module (imported on first use)."""
    try:
        from segment_anything.modeling import image_encoder
    except ImportError as err:
        raise AdaptbenchError(INSTALL_HINT) from err
    return image_encoder


def accepted_block_classes() -> tuple[type, ...]:
    """The segment-anything block classes whose forward is exactly windowed ``attn`` on
    ``norm1`` then ``mlp`` on ``norm2``, each added to the residual: the only ones rebuilt."""
    return (_image_encoder_module().Block,)


class WindowedAttention(nn.Module):
    """SAM's attention as its ``Block`` runs it: window partition (with padding) when
    ``window_size > 0``, ``attn``, window unpartition; plain ``attn`` on global blocks."""

    def __init__(self, attn: nn.Module, window_size: int, geometry: GeometryContext | None = None):
        super().__init__()
        self.attn = attn
        self.window_size = window_size
        # the backbone's geometry context (set by SamViT): wrappers inside ``attn`` then read
        # the window geometry instead of the grid's
        self.geometry = geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window_size <= 0:
            return self.attn(x)
        image_encoder = _image_encoder_module()
        height, width = x.shape[1:3]
        windows, padded = image_encoder.window_partition(x, self.window_size)
        with self._window_geometry(windows):
            windows = self.attn(windows)
        return image_encoder.window_unpartition(windows, self.window_size, padded, (height, width))

    def _window_geometry(self, windows: torch.Tensor):
        if self.geometry is None or not self.geometry.active:
            return contextlib.nullcontext()
        size = self.window_size
        return self.geometry.publish(TokenGeometry(batch=windows.shape[0], grid=(size, size), layout="BHWC"))

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}"


def _layer_norm_2d() -> type:
    from segment_anything.modeling.common import LayerNorm2d

    return LayerNorm2d


class SamViT(Backbone):
    """A segment-anything ``ImageEncoderViT`` with canonical sites (canonicalised in place)."""

    def __init__(self, name: str, encoder: nn.Module, weights_source: str):
        _check_encoder(name, encoder)
        windows = tuple(block.window_size for block in encoder.blocks)
        encoder.blocks = nn.Sequential(*[_canonical_block(name, i, b) for i, b in enumerate(encoder.blocks)])
        proj = encoder.patch_embed.proj
        patch_size = tuple(proj.kernel_size)
        grid = (encoder.img_size // proj.stride[0], encoder.img_size // proj.stride[1])
        super().__init__(
            name=name,
            anatomy=Anatomy(
                embed_dim=proj.out_channels,
                num_blocks=len(encoder.blocks),
                num_prefix_tokens=0,
                grid=grid,
                patch_size=patch_size,
                mlp_dim=encoder.blocks[0].branches.mlp.core.fc1.out_features,
                token_layout="BHWC",
                has_class_token=False,
                feature_dim=_neck_width(encoder.neck),
                site_paths=dict(SAM_SITE_PATHS),
                global_sites=("patch_embed", "neck"),
                family="sam",
                # the neck's LayerNorm2d is a layer norm too: BitFit and LN tuning train it
                norm_types=(nn.LayerNorm, _layer_norm_2d()),
                extra={"window_size": max(windows),
                       "global_blocks": tuple(i for i, size in enumerate(windows) if size <= 0)},
            ),
            data_config=DataConfig(
                input_size=(encoder.img_size, encoder.img_size),
                mean=SAM_PIXEL_MEAN,
                std=SAM_PIXEL_STD,
                # SAM's own preprocessing (utils/transforms.py, ResizeLongestSide) resizes
                # bilinearly, with torchvision's resize or F.interpolate(mode="bilinear").
                # It keeps the aspect ratio and pads to a square; our transform resizes to it.
                interpolation="bilinear",
            ),
            weights_source=weights_source,
            blocks_path="model.blocks",
            default_pool="mean",
        )
        self.model = encoder
        for block in encoder.blocks:
            block.branches.attn.core.geometry = self.geometry

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, TokenGeometry]:
        # ImageEncoderViT.forward up to the blocks: PatchEmbed emits (B, H', W', C).
        model = self.model
        x = model.patch_embed(images)
        grid = (int(x.shape[1]), int(x.shape[2]))
        if model.pos_embed is not None:
            x = x + _resized_pos_embed(model.pos_embed, grid)
        return x, TokenGeometry(batch=x.shape[0], grid=grid, prefix=0, layout="BHWC")

    def finish(self, tokens: torch.Tensor) -> torch.Tensor:
        # the neck is convolutional: (B, C, H', W') in, back to channels last out
        return self.model.neck(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def global_site_path(self, site: str) -> str:
        return {"patch_embed": "model.patch_embed", "neck": "model.neck"}[site]

    def companion_state(self, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
        # a full SAM checkpoint (official .pth, the shipped micro SAM) also holds the prompt
        # encoder and mask decoder; read again here, only by a head that asks for them
        if not self.weights_source.startswith("file:"):
            return {}
        from ..timm_weights import read_weights_file

        state = read_weights_file(Path(self.weights_source[len("file:"):]))
        return {key: value for key, value in state.items() if key.startswith(prefixes)}


def _check_encoder(name: str, encoder: nn.Module) -> None:
    encoder_class = _image_encoder_module().ImageEncoderViT
    if not isinstance(encoder, encoder_class):
        raise AdaptbenchError(f"backbone {name!r}: a {type(encoder).__name__} is not a segment-anything "
                              f"ImageEncoderViT; the sam family takes SAM image encoders")


def _canonical_block(model_name: str, index: int, block: nn.Module) -> TransformerBlock:
    require_block_class(block, accepted_block_classes(), f"SAM encoder {model_name!r}", index, "")
    attn = ResidualBranch(block.norm1, WindowedAttention(block.attn, block.window_size))
    mlp = ResidualBranch(block.norm2, Mlp(block.mlp.lin1, block.mlp.act, block.mlp.lin2))
    return TransformerBlock({"attn": attn, "mlp": mlp})


def _neck_width(neck: nn.Module) -> int:
    widths = [m.out_channels for m in neck.modules() if isinstance(m, nn.Conv2d)]
    if not widths:
        raise AdaptbenchError("SAM encoder neck has no convolution; cannot tell its output width")
    return widths[-1]


def _resized_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The absolute positions (1, H, W, C) for another grid: resampled bicubically (as ViTDet)."""
    if tuple(pos_embed.shape[1:3]) == grid:
        return pos_embed
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1)


# -- building and loading -----------------------------------------------------------------
def build_image_encoder(config: dict[str, Any]) -> nn.Module:
    """segment-anything's own ``ImageEncoderViT`` with ``config`` (LayerNorm eps 1e-6, as
    ``build_sam.py``); only the image encoder, no prompt encoder or mask decoder."""
    image_encoder = _image_encoder_module()
    config = dict(config)
    config.setdefault("norm_layer", functools.partial(nn.LayerNorm, eps=NORM_EPS))
    config["global_attn_indexes"] = tuple(config.get("global_attn_indexes", ()))
    return image_encoder.ImageEncoderViT(**config)


def _encoder_with_weights(config: dict[str, Any], source: str) -> nn.Module:
    """The encoder, randomly initialised under a seed or holding a checkpoint's tensors."""
    if source.startswith("random:"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed(source))
            return build_image_encoder(config).eval()
    path = Path(source[len("file:"):])
    state = _read_encoder_state(path)
    # built without memory (no random init, no second copy), then given the file's tensors
    with torch.device("meta"):
        encoder = build_image_encoder(config)
    _assign_state(encoder, state, path)
    return encoder.eval()


def _read_encoder_state(path: Path) -> dict[str, torch.Tensor]:
    """The image encoder's tensors from a full SAM checkpoint (``image_encoder.*``; the prompt
    encoder and mask decoder are ignored) or from a bare encoder state dict."""
    from ..timm_weights import read_weights_file

    # one line naming the file for a folder, an empty file, a git-lfs pointer, a pickle that
    # imports anything but tensors, a truncated or foreign file, or no state dict of tensors
    state = read_weights_file(path)
    prefix = "image_encoder."
    if any(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def _assign_state(encoder: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = set(encoder.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = [f"{len(keys)} {kind} keys ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise AdaptbenchError(f"weights file {path} does not fit this SAM image encoder: {'; '.join(parts)}")
    state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    try:
        encoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line] or [str(err)]
        raise AdaptbenchError(f"weights file {path} does not fit this SAM image encoder: {lines[0]}") from None


def _sam_backbone(name: str, config: dict[str, Any], weights: str | None, member: str,
                  checkpoint: str = "") -> SamViT:
    source = weights_source(weights, member, checkpoint)  # fails before anything is built
    backbone = SamViT(name, _encoder_with_weights(config, source), source)
    backbone.seal_weights()
    return backbone


def sam_vit(variant: str, weights: str | None = None, display_name: str | None = None,
            **config_overrides: Any) -> SamViT:
    """A SAM image encoder (``vit_b``, ``vit_l``, ``vit_h``) with canonical sites.

    ``weights``: ``"random[:seed]"`` or a local checkpoint file: the official ``.pth`` (a full
    SAM state dict, of which the ``image_encoder.*`` tensors are used) or a bare encoder state
    dict. None / ``"pretrained"`` fail at once: SAM's weights are never downloaded here.
    ``config_overrides`` change ``ImageEncoderViT`` arguments of the official configuration.
    """
    spec = sam_variant(variant)
    config = {**spec.encoder_config(), **config_overrides}
    return _sam_backbone(display_name or f"sam:{variant}", config, weights, variant, spec.checkpoint)


# Tiny configuration for CPU tests: 8x8 grid, window 3 (so windows need padding), 2 global blocks.
TINY_CONFIG = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0,
                   window_size=3, global_attn_indexes=(1, 3), out_chans=16, use_rel_pos=True, qkv_bias=True)


def sam_tiny_test(weights: str | None = "random", **kwargs: Any) -> SamViT:
    """Tiny random-init SAM image encoder for tests: d=32, 4 blocks, 8x8 grid, 3x3 windows, neck 16."""
    return _sam_backbone("sam_tiny_test", {**TINY_CONFIG, **kwargs}, weights or "random",
                         "sam_tiny_test")


register_backbone("sam_tiny_test", sam_tiny_test)


# -- the sam: family (declared in adaptbench/_catalogue.py) -----------------------------------
def sam_member(member: str):
    """The resolver of the ``sam:`` family: a factory ``(weights=None, **options) -> SamViT``."""
    sam_variant(member)

    def factory(weights: str | None = None, **options: Any) -> SamViT:
        return sam_vit(member, weights=weights, **options)

    return factory


def check_sam_weights(member: str, weights: str | None) -> str:
    """Where ``sam:<member>``'s weights would come from ("random:N", "file:<path>"), without
    loading them; raises :class:`AdaptbenchError` when they are missing."""
    return weights_source(weights, member, sam_variant(member).checkpoint)
