"""VPT-Shallow / VPT-Deep: the paper's sequences rebuilt by hand through the original timm blocks."""

from __future__ import annotations

import math
import re

import pytest
import torch
from timm.models.vision_transformer import Block

from adaptbench.adapters import build_adapter
from adaptbench.adapters.base import NotApplicable
from adaptbench.adapters.vpt import PromptedBlock, VPTDeepConfig, VPTShallowConfig
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.adapters.accounting import parameter_report
from helpers import images

P = 5  # the default number of prompt tokens


def adapted(adapter_name: str, backbone_name: str, options=None, **backbone_kwargs):
    torch.manual_seed(0)
    backbone = load_backbone(backbone_name, **backbone_kwargs)
    adapter = build_adapter(adapter_name, backbone, options)
    return backbone.eval(), adapter


def timm_block(canonical) -> Block:
    """The original timm ``Block``, reassembled from the very modules the backbone canonicalised."""
    block = Block(dim=32, num_heads=2)
    block.norm1, block.attn = canonical.attn.norm, canonical.attn.core
    block.ls1, block.drop_path1 = canonical.attn.post
    block.norm2, block.mlp = canonical.mlp.norm, canonical.mlp.core
    block.ls2, block.drop_path2 = canonical.mlp.post
    return block.eval()


def embedded(model, x: torch.Tensor) -> torch.Tensor:
    """timm's token sequence as it enters the first block: [prefix tokens, patch tokens]."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


def by_hand(backbone_name: str, prompts: list[torch.Tensor], x: torch.Tensor, **backbone_kwargs):
    """The paper's VPT-Shallow (one prompt set) or VPT-Deep (one set per block) equations on an
    unadapted copy of the backbone: the final tokens (prefix, prompt outputs, patches) and the copy."""
    reference = load_backbone(backbone_name, **backbone_kwargs).eval()
    prefix = reference.anatomy.num_prefix_tokens
    tokens = embedded(reference.model, x)
    for index, canonical in enumerate(reference.blocks):
        if index < len(prompts):  # deep: new prompts replace the previous block's prompt outputs
            arriving = 0 if index == 0 else P
            batch_prompts = prompts[index].expand(x.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :prefix], batch_prompts, tokens[:, prefix + arriving:]], dim=1)
        tokens = timm_block(canonical)(tokens)
    return reference.model.norm(tokens), reference


def prompt_sets(adapter) -> list[torch.Tensor]:
    params = adapter.trainable_parameters()
    return [params[f"blocks.{i}.block.prompts"].detach() for i in range(len(params))]


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_class_token_equals_the_hand_built_sequence(name, depth):
    backbone, adapter = adapted(name, "vit_tiny_test", depth=depth)
    prompts = prompt_sets(adapter)
    assert len(prompts) == (depth if name == "vpt_deep" else 1)
    with torch.no_grad():
        expected, _ = by_hand("vit_tiny_test", prompts, images(), depth=depth)
        torch.testing.assert_close(backbone(images(), pool="cls"), expected[:, 0], atol=1e-5, rtol=1e-5)
        # and the prompts really changed the class token (they are not the identity at init)
        frozen = load_backbone("vit_tiny_test", depth=depth).eval()(images(), pool="cls")
        assert not torch.allclose(frozen, expected[:, 0], atol=1e-3)


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep"])
@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "vit_tiny_test_reg"])
def test_token_count_is_restored(name, backbone_name):
    backbone, _ = adapted(name, backbone_name)
    frozen = load_backbone(backbone_name).eval()
    seen = []
    for block in backbone.blocks:
        block.base_layer.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[1], out.shape[1])))
    with torch.no_grad():
        out = backbone.forward_features(images())
    assert out.shape == frozen.forward_features(images()).shape
    n = frozen.forward_features(images()).shape[1]
    assert seen == [(n + P, n + P)] * backbone.anatomy.num_blocks  # inside: +p; after the last: n


def test_deep_prompts_replace_rather_than_accumulate():
    backbone, adapter = adapted("vpt_deep", "vit_tiny_test", depth=3)
    inputs = []
    for block in backbone.blocks:
        block.base_layer.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    with torch.no_grad():
        backbone(images())
    for index, (tokens, prompts) in enumerate(zip(inputs, prompt_sets(adapter))):
        assert tokens.shape[1] == 1 + P + 16, f"block {index} sees {tokens.shape[1]} tokens"
        torch.testing.assert_close(tokens[:, 1:1 + P], prompts.expand(2, -1, -1), atol=0, rtol=0)


def test_shallow_prompts_flow_through_the_middle_blocks_untouched():
    backbone, adapter = adapted("vpt_shallow", "vit_tiny_test", depth=3)
    assert list(adapter.trainable_parameters()) == ["blocks.0.block.prompts"]
    assert not hasattr(backbone.blocks[1], "base_layer")  # only the first and last blocks are wrapped
    outputs = []
    backbone.blocks[0].base_layer.register_forward_hook(lambda m, args, out: outputs.append(out))
    backbone.blocks[1].register_forward_hook(lambda m, args, out: outputs.append(args[0]))
    with torch.no_grad():
        backbone(images())
    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)  # Z_1 goes on as it came out


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep"])
def test_mean_pooling_ignores_prompts_with_register_tokens(name):
    """vit_tiny_test_reg: 2 register tokens, no class token, mean pooling over patch tokens."""
    backbone, adapter = adapted(name, "vit_tiny_test_reg")
    assert backbone.anatomy.num_prefix_tokens == 2 and backbone.default_pool == "mean"
    with torch.no_grad():
        final, reference = by_hand("vit_tiny_test_reg", prompt_sets(adapter), images())
        patches_only = reference.model.fc_norm(final[:, 2 + P:].mean(dim=1))
        with_prompts = reference.model.fc_norm(final[:, 2:].mean(dim=1))
        pooled = backbone(images())
    torch.testing.assert_close(pooled, patches_only, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pooled, with_prompts, atol=1e-3)


def test_prompts_follow_the_register_tokens():
    backbone, adapter = adapted("vpt_deep", "vit_tiny_test_reg")
    frozen = load_backbone("vit_tiny_test_reg").eval()
    first_input = []
    backbone.blocks[0].base_layer.register_forward_hook(lambda m, args, out: first_input.append(args[0]))
    with torch.no_grad():
        backbone(images())
        original = embedded(frozen.model, images())
    tokens = first_input[0]
    torch.testing.assert_close(tokens[:, :2], original[:, :2], atol=0, rtol=0)  # registers first
    torch.testing.assert_close(tokens[:, 2:2 + P], prompt_sets(adapter)[0].expand(2, -1, -1), atol=0, rtol=0)
    torch.testing.assert_close(tokens[:, 2 + P:], original[:, 2:], atol=0, rtol=0)  # then the patches


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep"])
def test_init_is_uniform_in_the_official_range(name):
    _, adapter = adapted(name, "vit_tiny_test", {"num_tokens": 50})
    bound = math.sqrt(6.0 / (3 * 8 * 8 + 32))  # patch 8x8 (32 px / 4x4 grid), d = 32
    for prompts in prompt_sets(adapter):
        assert prompts.shape == (50, 32)
        assert prompts.abs().max() <= bound
        assert prompts.abs().max() > 0.95 * bound  # fills the range: U(-v, v), not something narrower
        assert abs(prompts.mean().item()) < 0.1 * bound
        assert prompts.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_prompt_dropout_acts_on_the_prompts_in_training_only():
    backbone, adapter = adapted("vpt_shallow", "vit_tiny_test", {"dropout": 0.5})
    inputs = []
    backbone.blocks[0].base_layer.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    prompts = prompt_sets(adapter)[0].expand(2, -1, -1)
    with torch.no_grad():
        backbone.train()(images())
        backbone.eval()(images())
    trained, evaluated = inputs[0][:, 1:1 + P], inputs[1][:, 1:1 + P]
    torch.testing.assert_close(evaluated, prompts, atol=0, rtol=0)
    dropped = trained == 0
    assert dropped.any() and not dropped.all()
    torch.testing.assert_close(trained[~dropped], 2 * prompts[~dropped])  # inverted dropout, p = 0.5


def test_defaults_are_the_official_ones():
    shallow, deep = VPTShallowConfig(), VPTDeepConfig()
    assert shallow.num_tokens == deep.num_tokens == 5  # config.py MODEL.PROMPT.NUM_TOKENS
    assert shallow.dropout == 0.0  # demo.ipynb: no dropout for VPT-shallow
    assert deep.dropout == 0.1  # demo.ipynb VTAB commands: MODEL.PROMPT.DROPOUT 0.1
    _, adapter = adapted("vpt_deep", "vit_tiny_test")
    assert parameter_report(adapter).trainable == 2 * 5 * 32
    assert not adapter.identity_at_init and not adapter.mergeable


@pytest.mark.parametrize("options,message", [
    ({"num_tokens": 0}, "vpt_deep option num_tokens=0"),
    ({"num_tokens": -3}, "num_tokens=-3: expected an integer >= 1"),
    ({"dropout": 1.0}, "vpt_deep option dropout=1.0"),
    ({"dropout": -0.1}, "dropout=-0.1: expected 0 <= dropout < 1"),
    ({"num_tokens": "many"}, "num_tokens='many'"),
    ({"prompt_length": 5}, "'prompt_length'"),
])
def test_config_validation_names_the_value(options, message):
    with pytest.raises(AdaptbenchError, match=re.escape(message)):
        VPTDeepConfig.from_dict(options, adapter="vpt_deep")


def test_shallow_errors_name_vpt_shallow():
    with pytest.raises(AdaptbenchError, match="vpt_shallow option num_tokens=0"):
        VPTShallowConfig(num_tokens=0)


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep"])
def test_a_grid_layout_is_refused_naming_backbone_and_layout(name):
    backbone = load_backbone("vit_tiny_test")
    backbone.anatomy.token_layout = "BHWC"  # SAM's layout: tokens as a (B, H, W, C) grid
    expected = f"{name} on vit_tiny_test: n/a: needs a token layout in ('BNC',); the backbone's is 'BHWC'"
    with pytest.raises(NotApplicable, match=re.escape(expected)):
        build_adapter(name, backbone)
    # refused before anything was wrapped: the backbone is left as it was
    assert not any(isinstance(block, PromptedBlock) for block in backbone.blocks)
