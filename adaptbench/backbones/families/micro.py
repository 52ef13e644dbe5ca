"""The micro ViT: a timm ViT small enough for CPUs, pretrained by ``adaptbench pretrain-micro``
(``adaptbench/pretrain/micro.py``) on procedural glyphs and shipped as package data."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ...errors import AdaptbenchError
from ...files import sha256_of
from ...registry import register_backbone
from .timm import TimmViT, timm_vit

# The micro ViT's architecture; adaptbench/pretrain/micro.py trains exactly this.
MICRO_TIMM_MODEL = "vit_tiny_patch16_224"
MICRO_CONFIG = {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0}
# Its shipped weights, made by `adaptbench pretrain-micro` with its default settings.
MICRO_WEIGHTS = Path(str(resources.files("adaptbench.backbones") / "_data" / "vit_micro.safetensors"))
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


vit_micro.accepted_options = ("img_size",)
register_backbone("vit_micro", vit_micro)
