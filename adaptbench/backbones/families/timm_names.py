"""What ``adaptbench ls backbones`` shows for the ``timm:`` family, importing nothing heavy
(timm has thousands of models: they are checked one at a time, by ``timm.check_timm_name``)."""

from __future__ import annotations


def list_timm_family() -> tuple[dict[str, str], dict[str, str]]:
    return {"<name>": "any timm ViT built from timm's pre-norm Block, e.g. timm:vit_base_patch16_224.augreg_in21k"}, {}
