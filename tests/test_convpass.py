"""Convpass beyond the conformance suite: the paper's formula by hand, prefix tokens as 1x1
images, the official initialisation and defaults, the paper's parameter count, layouts."""

from __future__ import annotations

import pytest
import torch

from adaptbench.adapters import build_adapter
from adaptbench.adapters.convpass import ConvBypass, ConvpassConfig
from adaptbench.backbones import load_backbone
from adaptbench.backbones.geometry import GeometryContext
from adaptbench.errors import AdaptbenchError
from helpers import convpass_by_hand, declared_under, published, randomise

GRID = (4, 4)  # 32x32 input, patch 8
WIDTH = 32


def params_of(adapter, block, site):
    return declared_under(adapter, f"blocks.{block}.{site}.")


@pytest.mark.parametrize("backbone_name,prefix_count", [("vit_tiny_test", 1), ("vit_tiny_test_reg", 2)])
def test_block_forward_equals_the_paper_formula(backbone_name, prefix_count):
    torch.manual_seed(0)
    backbone = load_backbone(backbone_name)
    assert backbone.anatomy.num_prefix_tokens == prefix_count
    adapter = build_adapter("convpass", backbone, {"scale": 0.5})
    randomise(adapter)
    backbone.eval()
    x = torch.randn(2, prefix_count + 16, WIDTH, generator=torch.Generator().manual_seed(1))
    for index, block in enumerate(backbone.blocks):
        attn, mlp = block.attn.base_layer, block.mlp.base_layer
        with torch.no_grad():
            bypass_attn = convpass_by_hand(attn.norm(x), params_of(adapter, index, "attn"), prefix_count)
            x1 = x + attn(x) + 0.5 * bypass_attn
            bypass_mlp = convpass_by_hand(mlp.norm(x1), params_of(adapter, index, "mlp"), prefix_count)
            expected = x1 + mlp(x1) + 0.5 * bypass_mlp
            with published(backbone, batch=2, grid=GRID, prefix=prefix_count):
                got = block(x)
            frozen = x + attn(x)
            frozen = frozen + mlp(frozen)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert (got - frozen).abs().max() > 1e-2  # the bypasses really act
        x = got


def test_prefix_tokens_do_not_break_the_grid():
    """With 2 register tokens, the patch tokens' update is the conv of the grid alone, and
    each prefix token's update depends on that token only."""
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test_reg")
    adapter = build_adapter("convpass", backbone)
    randomise(adapter)
    bypass = backbone.blocks[0].attn.adapter.eval()
    tokens = torch.randn(2, 2 + 16, WIDTH)
    with torch.no_grad(), published(backbone, batch=2, grid=GRID, prefix=2):
        out = bypass(tokens)
        grid_alone = ConvBypass(WIDTH, 8, GeometryContext()).eval()
        grid_alone.load_state_dict(bypass.state_dict())
        with published(grid_alone.geometry, batch=2, grid=GRID, prefix=0):
            alone = grid_alone(tokens[:, 2:])
        torch.testing.assert_close(out[:, 2:], alone, atol=1e-6, rtol=0)
        moved = tokens.clone()
        moved[:, 0] += 5.0
        changed = bypass(moved)
    torch.testing.assert_close(changed[:, 1:], out[:, 1:], atol=0, rtol=0)
    assert not torch.allclose(changed[:, 0], out[:, 0])


def test_many_prefix_tokens_like_vpt_prompts_keep_the_grid():
    """Every token before the last H*W is a prefix token (class + prompts)."""
    torch.manual_seed(0)
    bypass = ConvBypass(WIDTH, 8, GeometryContext(), dropout=0.0, conv_init="xavier")
    with torch.no_grad():
        bypass.up.weight.normal_()
    tokens = torch.randn(2, 7 + 16, WIDTH)
    with torch.no_grad(), published(bypass.geometry, batch=2, grid=GRID, prefix=7):
        params = dict(bypass.named_parameters())
        torch.testing.assert_close(bypass(tokens), convpass_by_hand(tokens, params, 7), atol=1e-5, rtol=1e-5)


def test_defaults_are_the_papers():
    config = ConvpassConfig()
    assert (config.hidden_dim, config.scale, config.conv_init, config.dropout, config.act) == (
        8, 1.0, "identity", 0.1, "quick_gelu")
    assert config.sites == ("attn", "mlp") and config.blocks is None
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("convpass", backbone)
    assert len(adapter.trainable_parameters()) == 2 * 2 * 6  # blocks x sites x tensors
    bypass = backbone.blocks[1].mlp.adapter
    assert bypass.dropout.p == 0.1 and backbone.blocks[1].mlp.scale == 1.0
    assert backbone.blocks[1].mlp.input == "normed"  # fed by the branch's own pre-norm output
    centre = torch.zeros(3, 3)
    centre[1, 1] = 1.0
    expected_conv = torch.eye(8)[:, :, None, None] * centre  # zero + identity at the centre tap
    torch.testing.assert_close(bypass.conv.weight.detach(), expected_conv, atol=0, rtol=0)
    for zero in (bypass.up.weight, bypass.up.bias, bypass.down.bias, bypass.conv.bias):
        assert not zero.detach().any()
    bound = (6 / (WIDTH + 8)) ** 0.5  # Xavier-uniform down-projection
    assert bypass.down.weight.abs().max() <= bound and bypass.down.weight.std() > bound / 3


def test_xavier_conv_init_option():
    backbone = load_backbone("vit_tiny_test")
    build_adapter("convpass", backbone, {"conv_init": "xavier"})
    weight = backbone.blocks[0].attn.adapter.conv.weight.detach()
    bound = (6 / (8 * 9 + 8 * 9)) ** 0.5
    assert weight[:, :, 0, 0].abs().sum() > 0 and weight.abs().max() <= bound


def test_parameter_count_matches_the_paper():
    """Table 1 of the paper: Convpass 0.33 M, Convpass-attn 0.16 M on ViT-B/16 (12 blocks)."""
    per_bypass = sum(p.numel() for p in ConvBypass(768, 8, GeometryContext()).parameters())
    assert round(12 * 2 * per_bypass / 1e6, 2) == 0.33
    assert round(12 * per_bypass / 1e6, 2) == 0.16


def test_attn_only_variant_wraps_only_attention():
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("convpass", backbone, {"sites": "attn", "blocks": "1"})
    tensors = ("down.weight", "down.bias", "up.weight", "up.bias", "conv.weight", "conv.bias")
    assert set(adapter.trainable_parameters()) == {f"blocks.1.attn.{name}" for name in tensors}
    assert not hasattr(backbone.blocks[0].attn, "adapter") and not hasattr(backbone.blocks[1].mlp, "adapter")


def test_bhwc_layout_equals_token_layout():
    torch.manual_seed(0)
    tokens_module = ConvBypass(WIDTH, 8, GeometryContext(), dropout=0.0, conv_init="xavier")
    with torch.no_grad():
        tokens_module.up.weight.normal_()
    grid_module = ConvBypass(WIDTH, 8, GeometryContext(), dropout=0.0)
    grid_module.load_state_dict(tokens_module.state_dict())
    grid = torch.randn(2, *GRID, WIDTH)
    with published(grid_module.geometry, batch=2, grid=GRID, layout="BHWC"):
        out = grid_module(grid)
    assert out.shape == grid.shape
    with published(tokens_module.geometry, batch=2, grid=GRID, prefix=0):
        expected = tokens_module(grid.flatten(1, 2))
    torch.testing.assert_close(out.flatten(1, 2), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("options,named", [
    ({"hidden_dim": 0}, "hidden_dim=0"),
    ({"scale": 0.0}, "scale=0.0"),
    ({"scale": "nan"}, "scale=nan"),
    ({"conv_init": "kaiming"}, "conv_init='kaiming'"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"act": "tanh"}, "act='tanh'"),
    ({"sites": "attn,qkv"}, "site 'qkv'"),
    ({"sites": "mlp,mlp"}, "sites=('mlp', 'mlp')"),
    ({"hidden": 8}, "no option 'hidden'"),
])
def test_config_errors_name_the_value(options, named):
    with pytest.raises(AdaptbenchError, match=named.replace("(", r"\(").replace(")", r"\)")):
        ConvpassConfig.from_dict(options, adapter="convpass")


def test_block_out_of_range_is_refused():
    with pytest.raises(AdaptbenchError, match="block 5 out of range"):
        build_adapter("convpass", load_backbone("vit_tiny_test"), {"blocks": "5"})
