"""DD adapter beyond the conformance suite: the official structure by hand, prefix tokens as
1x1 images, SAM's (B, H, W, C) layout equal to the token layout, defaults, block choice."""

from __future__ import annotations

import pytest
import torch

from adaptbench.adapters import build_adapter
from adaptbench.adapters.dd_adapter import DDAdapterConfig, DepthwiseDilatedBottleneck
from adaptbench.backbones import load_backbone
from adaptbench.backbones.geometry import GeometryContext
from adaptbench.errors import AdaptbenchError
from helpers import dd_by_hand, declared_under, published, randomise

GRID = (4, 4)  # 32x32 input, patch 8
WIDTH = 32


def params_of(adapter, block):
    return declared_under(adapter, f"blocks.{block}.block.")


def random_module(dilations=(1, 3)):
    """A standalone module with its own geometry context (publish a geometry to call it)."""
    torch.manual_seed(0)
    module = DepthwiseDilatedBottleneck(WIDTH, WIDTH // 2, dilations, GeometryContext())
    with torch.no_grad():
        module.up.weight.normal_(std=0.3)
        module.up.bias.normal_(std=0.3)
    return module


@pytest.mark.parametrize("backbone_name,prefix_count", [("vit_tiny_test", 1), ("vit_tiny_test_reg", 2)])
def test_block_forward_equals_the_official_structure(backbone_name, prefix_count):
    torch.manual_seed(0)
    backbone = load_backbone(backbone_name)
    adapter = build_adapter("dd_adapter", backbone, {"scale": 0.5})
    randomise(adapter)
    backbone.eval()
    x = torch.randn(2, prefix_count + 16, WIDTH, generator=torch.Generator().manual_seed(1))
    for index, block in enumerate(backbone.blocks):
        with torch.no_grad():
            y = block.base_layer(x)
            expected = y + 0.5 * dd_by_hand(y, params_of(adapter, index), prefix_count)
            with published(backbone, batch=2, grid=GRID, prefix=prefix_count):
                got = block(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert (got - y).abs().max() > 1e-2  # the adapter really acts
        x = got


def test_other_dilation_rates_are_summed_branches():
    module = random_module(dilations=(1, 2, 5)).eval()
    tokens = torch.randn(2, 1 + 16, WIDTH)
    with torch.no_grad(), published(module.geometry, batch=2, grid=GRID, prefix=1):
        expected = dd_by_hand(tokens, dict(module.named_parameters()), 1, dilations=(1, 2, 5))
        torch.testing.assert_close(module(tokens), expected, atol=1e-5, rtol=1e-5)


def test_prefix_tokens_do_not_break_the_grid():
    """With 2 register tokens, the patch tokens' update is the adapter of the grid alone, and
    each prefix token's update depends on that token only."""
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test_reg")
    adapter = build_adapter("dd_adapter", backbone)
    randomise(adapter)
    module = backbone.blocks[0].adapter
    tokens = torch.randn(2, 2 + 16, WIDTH)
    with torch.no_grad(), published(backbone, batch=2, grid=GRID, prefix=2):
        out = module(tokens)
        grid_alone = DepthwiseDilatedBottleneck(WIDTH, WIDTH // 2, (1, 3), GeometryContext())
        grid_alone.load_state_dict(module.state_dict())
        with published(grid_alone.geometry, batch=2, grid=GRID, prefix=0):
            alone = grid_alone(tokens[:, 2:])
        torch.testing.assert_close(out[:, 2:], alone, atol=1e-6, rtol=0)
        moved = tokens.clone()
        moved[:, 1] -= 3.0
        changed = module(moved)
    torch.testing.assert_close(changed[:, 0], out[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(changed[:, 2:], out[:, 2:], atol=0, rtol=0)
    assert not torch.allclose(changed[:, 1], out[:, 1])


def test_bhwc_layout_equals_token_layout():
    """SAM's (B, H, W, C) grid gives what the (B, N, C) path gives on the same grid."""
    tokens_module = random_module()
    grid_module = random_module()
    torch.testing.assert_close(grid_module.state_dict(), tokens_module.state_dict())
    grid = torch.randn(2, *GRID, WIDTH)
    with torch.no_grad():
        with published(grid_module.geometry, batch=2, grid=GRID, layout="BHWC"):
            out = grid_module(grid)
        assert out.shape == grid.shape
        with published(tokens_module.geometry, batch=2, grid=GRID, prefix=0):
            torch.testing.assert_close(out.flatten(1, 2), tokens_module(grid.flatten(1, 2)), atol=1e-6, rtol=0)
        # and the patch part of a sequence with a class token sees the same grid
        with_cls = torch.cat([torch.randn(2, 1, WIDTH), grid.flatten(1, 2)], dim=1)
        with published(tokens_module.geometry, batch=2, grid=GRID, prefix=1):
            torch.testing.assert_close(out.flatten(1, 2), tokens_module(with_cls)[:, 1:], atol=1e-6, rtol=0)
        # a SAM grid other than the anatomy's works when it is this forward's geometry ...
        with published(grid_module.geometry, batch=1, grid=(6, 5), layout="BHWC"):
            assert grid_module(torch.randn(1, 6, 5, WIDTH)).shape == (1, 6, 5, WIDTH)
        # ... and a grid that disagrees with the forward's geometry is refused, not guessed
        with published(grid_module.geometry, batch=1, grid=GRID, layout="BHWC"):
            with pytest.raises(AdaptbenchError, match="do not hold the 4x4 grid"):
                grid_module(torch.randn(1, 6, 5, WIDTH))


def test_defaults_are_the_official_codes():
    config = DDAdapterConfig()
    assert (config.reduction, config.dilations, config.scale, config.act, config.first_blocks) == (
        2, (1, 3), 1.0, "gelu", 6)
    assert config.blocks is None
    backbone = load_backbone("vit_tiny_test")
    build_adapter("dd_adapter", backbone)
    module = backbone.blocks[0].adapter
    assert module.down.out_features == WIDTH // 2 and backbone.blocks[0].scale == 1.0
    for rate, branch in zip((1, 3), module.branches):
        assert branch.groups == WIDTH // 2 and branch.dilation == (rate, rate) and branch.padding == (rate, rate)
        assert branch.kernel_size == (3, 3) and branch.bias is not None
    assert not module.up.weight.any() and not module.up.bias.any()  # identity at init
    assert module.down.bias.abs().sum() > 0  # PyTorch's default init, as the official 1x1 conv


def test_default_adapts_the_first_six_blocks():
    backbone = load_backbone("vit_tiny_test", depth=8)
    adapter = build_adapter("dd_adapter", backbone)
    adapted = [i for i, block in enumerate(backbone.blocks) if hasattr(block, "adapter")]
    assert adapted == [0, 1, 2, 3, 4, 5]
    assert {name.split(".")[1] for name in adapter.trainable_parameters()} == {str(i) for i in range(6)}


def test_explicit_blocks_override_first_blocks():
    backbone = load_backbone("vit_tiny_test")
    build_adapter("dd_adapter", backbone, {"blocks": "-1", "first_blocks": "1"})
    assert [hasattr(block, "adapter") for block in backbone.blocks] == [False, True]


@pytest.mark.parametrize("options,named", [
    ({"reduction": 0}, "reduction=0"),
    ({"dilations": ""}, "at least one dilation"),
    ({"dilations": "1,0"}, "dilation 0"),
    ({"dilations": "3,3"}, r"dilations=\(3, 3\)"),
    ({"scale": 0.0}, "scale=0.0"),
    ({"act": "swish"}, "act='swish'"),
    ({"first_blocks": 0}, "first_blocks=0"),
    ({"dilation": "1"}, "no option 'dilation'"),
])
def test_config_errors_name_the_value(options, named):
    with pytest.raises(AdaptbenchError, match=named):
        DDAdapterConfig.from_dict(options, adapter="dd_adapter")


def test_too_large_reduction_is_refused_at_attach():
    with pytest.raises(AdaptbenchError, match="reduction=64.*embed_dim 32"):
        build_adapter("dd_adapter", load_backbone("vit_tiny_test"), {"reduction": 64})
