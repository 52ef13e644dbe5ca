"""Our LoRA equals HF PEFT's LoRA on the same timm ViT, given the same A and B.

PEFT can only target timm's fused ``qkv`` as a whole, so the fused case is compared with
PEFT directly; the separate q/k/v case is checked against its defining formula.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from adaptbench.adapters import build_adapter
from adaptbench.backbones import load_backbone

peft = pytest.importorskip("peft")

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
# our site -> the timm module PEFT targets
SITE_TO_TIMM = {"qkv": "attn.qkv", "attn_out": "attn.proj", "mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2"}
R, ALPHA = 4, 8


def plain_timm():
    """The tiny ViT our factory builds, as plain timm (same seed, same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY).eval()


def ours_with_random_b():
    backbone = load_backbone("vit_tiny_test").eval()
    adapter = build_adapter("lora", backbone, {"targets": list(SITE_TO_TIMM), "r": R, "alpha": ALPHA})
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 would make every comparison trivially true
        for name, param in adapter.trainable_parameters().items():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return backbone, adapter


def peft_with_our_weights(adapter):
    model = plain_timm()
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["qkv", "proj", "fc1", "fc2"])
    model = peft.inject_adapter_in_model(config, model)
    params = adapter.trainable_parameters()
    with torch.no_grad():
        for block in range(2):
            for site, timm_path in SITE_TO_TIMM.items():
                layer = model.blocks[block].get_submodule(timm_path)
                layer.lora_A["default"].weight.copy_(params[f"blocks.{block}.{site}.lora_A.{site}"])
                layer.lora_B["default"].weight.copy_(params[f"blocks.{block}.{site}.lora_B.{site}"])
    return model.eval()


def test_same_model_as_plain_timm():
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(load_backbone("vit_tiny_test").eval().forward_features(x),
                               plain_timm().forward_features(x), atol=0, rtol=0)


def test_lora_equals_peft_lora():
    backbone, adapter = ours_with_random_b()
    reference = peft_with_our_weights(adapter)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ours = backbone.forward_features(x)
    theirs = reference.forward_features(x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert (ours - plain_timm().forward_features(x)).abs().max() > 1e-3  # not vacuous


def test_merged_lora_equals_peft_merge_and_unload():
    backbone, adapter = ours_with_random_b()
    reference = peft_with_our_weights(adapter)
    for module in reference.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.merge()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    adapter.merge()
    torch.testing.assert_close(backbone.forward_features(x), reference.forward_features(x), atol=1e-5, rtol=1e-5)


def test_separate_q_and_v_follow_the_formula_and_leave_k_untouched():
    backbone = load_backbone("vit_tiny_test").eval()
    adapter = build_adapter("lora", backbone, {"targets": ["q", "v"], "r": R, "alpha": ALPHA})
    params = adapter.trainable_parameters()
    with torch.no_grad():
        for name, param in params.items():
            if ".lora_B." in name:
                param.normal_(std=0.1)
    reference = copy.deepcopy(plain_timm())
    width = 32
    with torch.no_grad():
        for block in range(2):
            weight = reference.blocks[block].attn.qkv.weight
            for part, start in (("q", 0), ("v", 2 * width)):
                update = params[f"blocks.{block}.qkv.lora_B.{part}"] @ params[f"blocks.{block}.qkv.lora_A.{part}"]
                weight[start : start + width] += (ALPHA / R) * update
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone.forward_features(x), reference.forward_features(x), atol=1e-5, rtol=1e-5)
    tokens = torch.randn(2, 17, width)
    wrapped, base = backbone.site("qkv", 0), backbone.site("qkv", 0).base_layer
    torch.testing.assert_close(wrapped(tokens)[..., width : 2 * width], base(tokens)[..., width : 2 * width], atol=0, rtol=0)
    assert (wrapped(tokens)[..., :width] - base(tokens)[..., :width]).abs().max() > 1e-3
