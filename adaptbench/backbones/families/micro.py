"""The micro backbones, small enough for CPUs and shipped with their weights as package data:

* ``vit_micro``: a timm ViT pretrained by ``adaptbench pretrain-micro``
  (``adaptbench/pretrain/micro.py``) on procedural glyphs;
* ``sam_micro``: a segment-anything image encoder pretrained with SAM's mask decoder by
  ``adaptbench pretrain-micro --model sam_micro`` (``adaptbench/pretrain/micro_sam.py``) on
  procedural colour-region scenes; its file also holds the decoder (SAM's checkpoint keys), which
  the ``sam_decoder`` head loads.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ...errors import AdaptbenchError
from ...files import sha256_of
from ...registry import register_backbone
from .sam import SamViT, _sam_backbone
from .timm import TimmViT, timm_vit

# The micro ViT's architecture; adaptbench/pretrain/micro.py trains exactly this.
MICRO_TIMM_MODEL = "vit_tiny_patch16_224"
MICRO_CONFIG = {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0}
# Its shipped weights, made by `adaptbench pretrain-micro` with its default settings.
MICRO_WEIGHTS = Path(str(resources.files("adaptbench.backbones") / "_data" / "vit_micro.safetensors"))
MICRO_WEIGHTS_SHA256 = "ba36ad83e518b7943ca06c1ea8a85073aabe4f6ea1614437b6f55e4b3e477a55"


# The micro SAM's image encoder (segment-anything's ImageEncoderViT arguments); its decoder
# is adaptbench.tasks.sam_decoder.SamDecoderHead on the neck's 64 channels (decoder MLP 512).
SAM_MICRO_CONFIG = {"img_size": 64, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0,
                    "window_size": 4, "global_attn_indexes": (1, 3), "out_chans": 64, "use_rel_pos": True,
                    "qkv_bias": True}
SAM_MICRO_WEIGHTS = Path(str(resources.files("adaptbench.backbones") / "_data" / "sam_micro.safetensors"))
SAM_MICRO_WEIGHTS_SHA256 = "3bcc6715c2a86dbf49a166ced88cf4525bed80ec4862a5f057a4d6393d87a2d0"


def vit_micro(weights: str | None = None, **kwargs: Any) -> TimmViT:
    """Micro ViT (d=96, 4 blocks, 32x32, patch 4) pretrained on procedural glyphs for the micro tasks.

    ``weights``: None or ``"pretrained"`` (the shipped file, checked against its sha256),
    ``"random[:seed]"``, or a ``.safetensors`` file written by ``adaptbench pretrain-micro``.
    """
    if weights in (None, "pretrained"):
        weights = str(_shipped_micro_weights())
    return timm_vit(MICRO_TIMM_MODEL, weights=weights, display_name="vit_micro", **{**MICRO_CONFIG, **kwargs})


def _shipped_micro_weights() -> Path:
    return _checked_shipped_file("vit_micro", MICRO_WEIGHTS, MICRO_WEIGHTS_SHA256, "")


def _checked_shipped_file(name: str, path: Path, expected: str, model_flag: str) -> Path:
    # A rerun writes the same bytes only on the same CPU and library versions; elsewhere
    # its weights differ in the last bits, so it is passed as a file rather than shipped.
    regenerate = (f"reinstall adaptbench, or regenerate the weights with `adaptbench pretrain-micro "
                  f"{model_flag}--out {name}.safetensors` and pass --weights {name}.safetensors")
    if not path.is_file():
        raise AdaptbenchError(f"{name}'s weights file {path} is missing; {regenerate}")
    found = sha256_of(path)
    if found != expected:
        raise AdaptbenchError(f"{name}'s weights file {path} is corrupt (sha256 {found}, expected {expected}); "
                              f"{regenerate}")
    return path


def sam_micro(weights: str | None = None, **kwargs: Any) -> SamViT:
    """Micro SAM encoder (d=96, 4 blocks, 64x64, patch 4) + decoder, pretrained on procedural colour regions.

    segment-anything's ``ImageEncoderViT`` (``SAM_MICRO_CONFIG``: 4x4 windows, global
    attention in blocks 1 and 3, neck 64), trained with SAM's mask decoder (the
    ``sam_decoder`` head) by ``adaptbench pretrain-micro --model sam_micro``.

    ``weights``: None or ``"pretrained"`` (the shipped file, checked against its sha256: the
    encoder, and the prompt encoder and mask decoder that the ``sam_decoder`` head loads),
    ``"random[:seed]"``, or a file written by ``adaptbench pretrain-micro --model sam_micro``.
    """
    if weights in (None, "pretrained"):
        weights = str(_checked_shipped_file("sam_micro", SAM_MICRO_WEIGHTS, SAM_MICRO_WEIGHTS_SHA256,
                                            "--model sam_micro "))
    return _sam_backbone("sam_micro", {**SAM_MICRO_CONFIG, **kwargs}, weights, "sam_micro")


vit_micro.accepted_options = ("img_size",)
register_backbone("vit_micro", vit_micro)
register_backbone("sam_micro", sam_micro)
