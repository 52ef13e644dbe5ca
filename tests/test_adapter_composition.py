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


@pytest.mark.parametrize("first,second", [("lora", "ssf"), ("adaptformer", "bitfit"), ("lora", "full"),
                                          ("vpt_deep", "ln"), ("ssf", "adaptformer")])
def test_composed_adapters_all_train(first, second):
    """The second attach freezes only the sealed backbone's own tensors: both adapters'
    tensors keep requiring gradients, receive them, and change after an optimizer step."""
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapters = [build_adapter(first, backbone), build_adapter(second, backbone)]
    declared = {f"{a.name}:{n}": p for a in adapters for n, p in a.trainable_parameters().items()}
    assert all(p.requires_grad for p in declared.values())
    sealed = {id(p) for p in backbone.sealed_parameters()}
    own_first = {id(p) for p in adapters[0].trainable_parameters().values()} - sealed
    assert not own_first & {id(p) for p in adapters[1].trainable_parameters().values()}
    before = {n: p.detach().clone() for n, p in declared.items()}
    head = torch.nn.Linear(backbone.anatomy.feature_dim, 3)
    optimizer = torch.optim.Adam([*declared.values(), *head.parameters()], lr=1e-2)
    for step in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(backbone(images(step))), torch.tensor([0, 2])).backward()
        optimizer.step()
    unchanged = [n for n, p in declared.items() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"tensors that did not train after composing: {unchanged[:4]}"
    assert any(n.startswith(f"{first}:") for n in declared) and any(n.startswith(f"{second}:") for n in declared)
