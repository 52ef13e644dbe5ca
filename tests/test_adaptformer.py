"""AdaptFormer: the paper's formula, defaults and options (beyond the conformance suite)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adaptbench.adapters import build_adapter
from adaptbench.adapters.adaptformer import AdaptFormer, AdaptFormerConfig
from adaptbench.adapters.layers import ParallelBranch
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.adapters.accounting import parameter_report
from helpers import images


def randomise(adapter, seed: int = 1) -> None:
    """Non-trivial adapter weights (up and biases are zero at init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.trainable_parameters().values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def hand_adapter(adapter, block: int, x: torch.Tensor) -> torch.Tensor:
    """s * up(ReLU(down(x))) from the declared tensors (eval mode: no dropout)."""
    t = adapter.trainable_parameters()
    hidden = torch.relu(x @ t[f"blocks.{block}.mlp.down.weight"].T + t[f"blocks.{block}.mlp.down.bias"])
    return adapter.config.scale * (hidden @ t[f"blocks.{block}.mlp.up.weight"].T + t[f"blocks.{block}.mlp.up.bias"])


@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "vit_tiny_test_reg"])
def test_forward_is_x_plus_mlp_of_ln_x_plus_scaled_bottleneck_of_x(backbone_name):
    backbone = load_backbone(backbone_name)
    adapter = build_adapter("adaptformer", backbone, {"scale": 0.7})
    randomise(adapter)
    # the frozen backbone, with the paper's adapter added by hand beside every MLP branch
    reference = load_backbone(backbone_name).eval()
    for block, frozen in enumerate(reference.blocks):
        frozen.mlp.register_forward_hook(lambda mod, args, out, b=block: out + hand_adapter(adapter, b, args[0]))
    torch.testing.assert_close(backbone.eval()(images()), reference(images()), atol=1e-6, rtol=1e-6)


def test_defaults_are_the_official_image_setting():
    config = AdaptFormerConfig()
    assert (config.bottleneck, config.scale, config.dropout, config.blocks) == (64, 0.1, 0.1, None)


def test_init_down_kaiming_uniform_up_and_biases_zero():
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("adaptformer", backbone)
    tensors = adapter.trainable_parameters()
    assert sorted(tensors) == sorted(f"blocks.{b}.mlp.{layer}.{kind}" for b in (0, 1)
                                     for layer in ("down", "up") for kind in ("weight", "bias"))
    down = tensors["blocks.0.mlp.down.weight"]
    assert down.shape == (64, 32)
    bound = 1 / math.sqrt(32)  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    assert down.abs().max() <= bound and down.abs().max() > 0.8 * bound
    for name in ("down.bias", "up.weight", "up.bias"):
        assert torch.count_nonzero(tensors[f"blocks.0.mlp.{name}"]) == 0


def test_dropout_acts_on_the_hidden_activations_in_training_only():
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("adaptformer", backbone, {"dropout": 0.5})
    randomise(adapter)
    branch = backbone.site("mlp", 0)
    x = torch.randn(2, 5, 32)
    torch.manual_seed(3)
    trained = branch.train()(x)
    torch.manual_seed(3)  # the same dropout mask, applied by hand after the ReLU
    t = adapter.trainable_parameters()
    hidden = F.dropout(torch.relu(x @ t["blocks.0.mlp.down.weight"].T + t["blocks.0.mlp.down.bias"]), 0.5)
    expected = branch.base_layer(x) + 0.1 * (hidden @ t["blocks.0.mlp.up.weight"].T + t["blocks.0.mlp.up.bias"])
    torch.testing.assert_close(trained, expected)
    assert not torch.allclose(trained, branch.eval()(x))


def test_blocks_option_adapts_only_those_blocks():
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("adaptformer", backbone, {"blocks": "-1"})
    assert not isinstance(backbone.site("mlp", 0), ParallelBranch)
    assert isinstance(backbone.site("mlp", 1), ParallelBranch)
    assert {name.split(".")[1] for name in adapter.trainable_parameters()} == {"1"}
    with pytest.raises(AdaptbenchError, match="block 5 out of range"):
        build_adapter("adaptformer", load_backbone("vit_tiny_test"), {"blocks": (5,)})


def test_bottleneck_width_and_parameter_count():
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("adaptformer", backbone, {"bottleneck": 4})
    # per block: down 32x4 + 4, up 4x32 + 32
    assert parameter_report(adapter).trainable == 2 * (32 * 4 + 4 + 4 * 32 + 32)


def test_not_mergeable():
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("adaptformer", backbone)
    assert not AdaptFormer.mergeable and AdaptFormer.identity_at_init
    with pytest.raises(AdaptbenchError, match="cannot be merged"):
        adapter.merge()


@pytest.mark.parametrize("values,message", [
    ({"bottleneck": 0}, "adaptformer option bottleneck=0: expected an integer >= 1"),
    ({"dropout": 1.0}, "adaptformer option dropout=1.0: expected 0 <= dropout < 1"),
    ({"scale": "inf"}, "adaptformer option scale=inf: expected a finite number"),
    ({"scale": "nan"}, "adaptformer option scale=nan"),
    ({"bottlenek": 8}, "has no option 'bottlenek'"),
])
def test_config_errors_name_the_option_and_value(values, message):
    with pytest.raises(AdaptbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AdaptFormerConfig.from_dict(values, "adaptformer")
