"""Adapters compose: a second adapter finds its sites inside the first one's wrappers.

Site paths are resolved through wrappers' ``base_layer`` (``anatomy._resolve``), so a LoRA
attached after a block-level adapter (DD adapter, VPT) or a branch-level one (AdaptFormer,
Convpass) still reaches ``qkv`` / ``mlp_in``, and merges there exactly.
"""

from __future__ import annotations

import pytest
import torch

from adaptbench.adapters import build_adapter
from adaptbench.adapters.lora import LoRALinear
from adaptbench.backbones import load_backbone
from helpers import images

# adapters wrapping a block (dd_adapter, vpt_deep) or a branch (the others), then a LoRA
FIRST = ["dd_adapter", "vpt_deep", "adaptformer", "convpass", "adapter"]


def nudge(adapter, seed: int) -> None:
    """Non-zero values in every declared tensor, so that each adapter changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.trainable_parameters().values():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.mark.parametrize("first", FIRST)
def test_lora_reaches_its_sites_inside_another_adapters_wrappers(first):
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test").eval()
    outer = build_adapter(first, backbone)
    nudge(outer, 1)
    alone = backbone(images())
    lora = build_adapter("lora", backbone, {"targets": ["qkv", "mlp_in"]})
    for block in range(backbone.anatomy.num_blocks):
        assert isinstance(backbone.site("qkv", block), LoRALinear)
        assert isinstance(backbone.site("mlp_in", block), LoRALinear)
    # B = 0: the LoRA on top is still the identity of whatever the first adapter computes
    torch.testing.assert_close(backbone(images()), alone, atol=1e-6, rtol=0)
    nudge(lora, 2)
    both = backbone(images())
    assert not torch.allclose(both, alone, atol=1e-4)
    lora.merge()
    torch.testing.assert_close(backbone(images()), both, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, LoRALinear) for m in backbone.modules())
    # the first adapter's wrappers are untouched by the merge below them
    present = {id(m) for m in backbone.modules()}
    assert all(id(wrapper) in present for _, _, wrapper in outer._wrapped)
