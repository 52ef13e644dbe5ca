"""Bottleneck adapter (Houlsby / Pfeiffer; sequential / parallel): the formula by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adaptbench.adapters import build_adapter
from adaptbench.adapters.bottleneck_adapter import BottleneckAdapterConfig
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.adapters.accounting import parameter_report
from helpers import images


def adapted(backbone_name: str, options=None):
    torch.manual_seed(0)
    backbone = load_backbone(backbone_name)
    return backbone.eval(), build_adapter("adapter", backbone, options)


def randomise(adapter, seed: int = 1) -> dict[str, torch.Tensor]:
    """Non-trivial adapter weights (up and the biases are zero at init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.trainable_parameters().values():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return {name: p.detach().clone() for name, p in adapter.trainable_parameters().items()}


def f(weights: dict[str, torch.Tensor], prefix: str, h: torch.Tensor) -> torch.Tensor:
    """up(GELU(down(h)))."""
    hidden = F.gelu(h @ weights[f"{prefix}.down.weight"].T + weights[f"{prefix}.down.bias"])
    return hidden @ weights[f"{prefix}.up.weight"].T + weights[f"{prefix}.up.bias"]


def by_hand(backbone_name: str, weights, sites, position: str, scale: float, x: torch.Tensor) -> torch.Tensor:
    """x <- x + y + s f(y) (sequential) or x + y + s f(x) (parallel), y = the frozen branch B(x)."""
    reference = load_backbone(backbone_name).eval()
    model = reference.model
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    for index, block in enumerate(reference.blocks):
        for site, branch in (("attn", block.attn), ("mlp", block.mlp)):
            y = branch(tokens)  # post(core(norm(x))): LayerScale included where the backbone has it
            if site in sites:
                source = y if position == "sequential" else tokens
                y = y + scale * f(weights, f"blocks.{index}.{site}", source)
            tokens = tokens + y
    return model.norm(tokens)


@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "vit_tiny_test_reg"])
@pytest.mark.parametrize("position", ["sequential", "parallel"])
@pytest.mark.parametrize("placement,sites", [("houlsby", ("attn", "mlp")), ("pfeiffer", ("mlp",))])
def test_forward_equals_the_formula_by_hand(backbone_name, position, placement, sites):
    scale = 0.7
    backbone, adapter = adapted(backbone_name, {"placement": placement, "position": position, "scale": scale})
    assert {name.split(".")[2] for name in adapter.trainable_parameters()} == set(sites)
    weights = randomise(adapter)
    with torch.no_grad():
        expected = by_hand(backbone_name, weights, sites, position, scale, images())
        torch.testing.assert_close(backbone.forward_features(images()), expected, atol=1e-5, rtol=1e-5)
        frozen = load_backbone(backbone_name).eval().forward_features(images())
        assert not torch.allclose(expected, frozen, atol=1e-3)  # the adapters did something


def test_sequential_and_parallel_differ():
    outputs = []
    for position in ("sequential", "parallel"):
        backbone, adapter = adapted("vit_tiny_test", {"position": position})
        randomise(adapter)
        with torch.no_grad():
            outputs.append(backbone(images()))
    assert not torch.allclose(*outputs, atol=1e-3)


def test_defaults_are_the_vision_benchmark_baseline():
    config = BottleneckAdapterConfig()
    assert config.bottleneck == 8  # NOAH ADAPTER_DIM 8; V-PETL 768 / 96
    assert (config.placement, config.position) == ("pfeiffer", "sequential")  # after the MLP only
    assert (config.act, config.scale, config.dropout, config.init) == ("gelu", 1.0, 0.0, "xavier")
    assert config.blocks is None
    _, adapter = adapted("vit_tiny_test")
    per_adapter = 32 * 8 + 8 + 8 * 32 + 32
    assert parameter_report(adapter).trainable == 2 * per_adapter
    assert sorted(adapter.trainable_parameters()) == sorted(
        f"blocks.{b}.mlp.{layer}.{kind}" for b in (0, 1) for layer in ("down", "up") for kind in ("weight", "bias")
    )
    _, houlsby = adapted("vit_tiny_test", {"placement": "houlsby"})
    assert parameter_report(houlsby).trainable == 4 * per_adapter
    assert adapter.identity_at_init and not adapter.mergeable


@pytest.mark.parametrize("options", [{}, {"placement": "houlsby", "position": "parallel"}])
def test_init_is_exactly_the_identity_with_a_live_down_projection(options):
    backbone, adapter = adapted("vit_tiny_test_reg", options)
    bound = math.sqrt(6.0 / (32 + 8))  # Xavier-uniform for an 8 x 32 down-projection
    for name, param in adapter.trainable_parameters().items():
        if name.endswith("down.weight"):
            assert 0 < param.abs().max() <= bound and param.abs().max() > 0.8 * bound
        else:
            assert torch.count_nonzero(param) == 0, name  # up and both biases start at zero
    with torch.no_grad():
        torch.testing.assert_close(backbone(images()), load_backbone("vit_tiny_test_reg").eval()(images()),
                                   atol=0, rtol=0)


def test_blocks_option_adapts_only_the_chosen_blocks():
    _, adapter = adapted("vit_tiny_test", {"blocks": (-1,), "placement": "houlsby"})
    assert {name.split(".")[1] for name in adapter.trainable_parameters()} == {"1"}


def test_options_from_the_command_line():
    config = BottleneckAdapterConfig.from_dict(
        {"bottleneck": "16", "placement": "houlsby", "position": "parallel", "act": "relu", "blocks": "0,1"},
        adapter="adapter",
    )
    assert (config.bottleneck, config.placement, config.position, config.act, config.blocks) == (
        16, "houlsby", "parallel", "relu", (0, 1))
    assert config.sites == ("attn", "mlp")


@pytest.mark.parametrize("options,message", [
    ({"bottleneck": 0}, "adapter option bottleneck=0: expected an integer >= 1"),
    ({"placement": "after_attn"}, "adapter option placement='after_attn': expected one of"),
    ({"position": "beside"}, "adapter option position='beside': expected one of"),
    ({"act": "tanh"}, "adapter option act='tanh': expected one of"),
    ({"init": "normal"}, "adapter option init='normal': expected one of"),
    ({"dropout": 1.5}, "adapter option dropout=1.5: expected 0 <= dropout < 1"),
    ({"scale": float("nan")}, "adapter option scale=nan: expected a finite number"),
    ({"bottleneck": "wide"}, "bottleneck='wide'"),
    ({"reduction_factor": 8}, "'reduction_factor'"),
])
def test_config_validation_names_the_value(options, message):
    with pytest.raises(AdaptbenchError, match=message):
        BottleneckAdapterConfig.from_dict(options, adapter="adapter")


def test_blocks_out_of_range_are_refused():
    with pytest.raises(AdaptbenchError, match="block 5 out of range"):
        adapted("vit_tiny_test", {"blocks": (5,)})
