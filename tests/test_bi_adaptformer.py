"""Bi-AdaptFormer: the 1-bit quantiser, its straight-through gradient and the packed checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adaptbench.adapters import build_adapter
from adaptbench.adapters.bi_adaptformer import (
    LEVEL,
    BiAdaptFormer,
    BiAdaptFormerConfig,
    BinaryLinear,
)
from adaptbench.adapters.bits import pack_bits, unpack_bits
from adaptbench.adapters.checkpoint import load_adapter, save_adapter
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.adapters.accounting import parameter_report
from helpers import images


def randomise(adapter, seed: int = 1, offset: float = 0.05) -> None:
    """Non-trivial latent weights with a non-zero mean (the quantiser must subtract it)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.trainable_parameters().values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + offset)


def hand_quantised(latent: torch.Tensor) -> torch.Tensor:
    """The paper's 1-bit quantiser written out: mean + std * c * sign((W - mean) / (std + 1e-5))."""
    mean = latent.sum() / latent.numel()
    std = torch.sqrt(((latent - mean) ** 2).sum() / (latent.numel() - 1))  # unbiased, as torch.std
    code = 0.6744897501960817  # Phi^-1(3/4), the official 1-bit level
    signs = torch.where(latent - mean >= 0, 1.0, -1.0)
    return mean + std * code * signs


def adapted(backbone_name: str = "vit_tiny_test", values: dict | None = None, offset: float = 0.05):
    backbone = load_backbone(backbone_name)
    adapter = build_adapter("bi_adaptformer", backbone, values or {})
    randomise(adapter, offset=offset)
    return backbone, adapter


def test_defaults_are_the_papers_vtab_setting():
    config = BiAdaptFormerConfig()
    assert (config.bottleneck, config.scale, config.dropout, config.blocks) == (32, 1.0, 0.1, None)
    assert LEVEL == pytest.approx(0.6744897501960817, abs=1e-15)
    assert not BiAdaptFormer.identity_at_init and not BiAdaptFormer.mergeable


def test_init_no_biases_kaiming_down_small_truncated_normal_up():
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("bi_adaptformer", backbone)
    tensors = adapter.trainable_parameters()
    assert sorted(tensors) == sorted(f"blocks.{b}.mlp.{layer}.weight" for b in (0, 1) for layer in ("down", "up"))
    down, up = tensors["blocks.0.mlp.down.weight"], tensors["blocks.0.mlp.up.weight"]
    assert down.shape == (32, 32) and up.shape == (32, 32)
    assert 0.8 / math.sqrt(32) < down.abs().max() <= 1 / math.sqrt(32)
    assert up.abs().max() <= 2e-3 and up.std() > 5e-4


def test_weights_are_exactly_the_two_quantised_levels():
    layer = BinaryLinear(24, 10)
    with torch.no_grad():
        layer.weight.normal_(0.3, 0.1, generator=torch.Generator().manual_seed(0))
    expected = hand_quantised(layer.weight.detach())
    quantised = layer.quantised_weight()
    torch.testing.assert_close(quantised, expected, atol=1e-7, rtol=1e-6)
    assert quantised.unique().numel() == 2
    x = torch.randn(3, 24)
    torch.testing.assert_close(layer(x), x @ quantised.T, atol=0, rtol=0)


@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "vit_tiny_test_reg"])
def test_forward_is_adaptformer_with_binarised_weights(backbone_name):
    backbone, adapter = adapted(backbone_name, {"scale": 0.5})
    t = adapter.trainable_parameters()

    def hand_adapter(block: int, x: torch.Tensor) -> torch.Tensor:
        down = hand_quantised(t[f"blocks.{block}.mlp.down.weight"].detach())
        up = hand_quantised(t[f"blocks.{block}.mlp.up.weight"].detach())
        return 0.5 * (torch.relu(x @ down.T) @ up.T)

    reference = load_backbone(backbone_name).eval()
    for block, frozen in enumerate(reference.blocks):
        frozen.mlp.register_forward_hook(lambda mod, args, out, b=block: out + hand_adapter(b, args[0]))
    torch.testing.assert_close(backbone.eval()(images()), reference(images()), atol=1e-5, rtol=1e-5)


def test_gradient_passes_straight_through_the_sign():
    layer = BinaryLinear(16, 8)
    with torch.no_grad():
        layer.weight.normal_(0.1, 0.2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    target = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    F.mse_loss(layer(x), target).backward()

    # STE: d sign(N) / d N := 1. Equivalently Q = (K + N(W)) * std(W) + mean(W) with the
    # constant K = c * sign(N) - N, whose value is Q and whose gradient is the STE's.
    latent = layer.weight.detach().clone().requires_grad_(True)
    mean, std = latent.mean(), latent.std()
    normalised = (latent - mean) / (std + 1e-5)
    constant = (LEVEL * torch.where(normalised >= 0, 1.0, -1.0) - normalised).detach()
    F.mse_loss(x @ ((constant + normalised) * std + mean).T, target).backward()
    torch.testing.assert_close(layer.weight.grad, latent.grad)

    # without the STE (sign has zero gradient) only mean and std would carry a gradient
    frozen_signs = latent.detach().clone().requires_grad_(True)
    levels = LEVEL * torch.where(frozen_signs >= frozen_signs.mean(), 1.0, -1.0).detach()
    F.mse_loss(x @ (levels * frozen_signs.std() + frozen_signs.mean()).T, target).backward()
    assert not torch.allclose(layer.weight.grad, frozen_signs.grad, atol=1e-4)


def test_bits_pack_eight_to_a_byte_first_in_the_lowest_bit():
    bits = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.tolist() == [1, 6]
    assert torch.equal(unpack_bits(packed, (11,)), bits)
    many = torch.rand(1003, generator=torch.Generator().manual_seed(0)) > 0.5
    assert torch.equal(unpack_bits(pack_bits(many), (1003,)), many)


def test_state_tensors_are_packed_bits_and_per_tensor_scales():
    _, adapter = adapted()
    state = adapter.state_tensors()
    assert sorted(state) == sorted(f"blocks.{b}.mlp.{layer}.{part}" for b in (0, 1)
                                   for layer in ("down", "up") for part in ("bits", "mean", "std"))
    latent = adapter.trainable_parameters()["blocks.1.mlp.up.weight"].detach()
    assert state["blocks.1.mlp.up.bits"].dtype == torch.uint8
    assert state["blocks.1.mlp.up.bits"].numel() == latent.numel() // 8
    signs = unpack_bits(state["blocks.1.mlp.up.bits"], latent.shape)
    assert torch.equal(signs, latent >= latent.mean())
    assert state["blocks.1.mlp.up.mean"].item() == latent.mean().item()
    assert state["blocks.1.mlp.up.std"].item() == latent.std().item()


def test_round_trip_restores_dequantised_latents_and_the_exact_output(tmp_path):
    # both levels positive (mean 0.3 > std * c): the bits are read against the mean, not 0
    backbone, adapter = adapted("vit_tiny_test_reg", offset=0.3)
    quantised = {name: layer.quantised_weight().detach().clone() for name, layer in adapter.binary_layers().items()}
    path = save_adapter(adapter, tmp_path / "bi.safetensors")
    fresh = load_backbone("vit_tiny_test_reg")
    loaded, _ = load_adapter(fresh, path)
    for name, latent in loaded.trainable_parameters().items():
        assert torch.equal(latent, quantised[name.removesuffix(".weight")])
    torch.testing.assert_close(fresh.eval()(images(4)), backbone.eval()(images(4)), atol=0, rtol=0)
    saved_again = loaded.state_tensors()
    for name, tensor in adapter.state_tensors().items():
        assert torch.equal(saved_again[name], tensor), name


def test_loading_bad_bits_is_refused(tmp_path):
    _, adapter = adapted()
    state = adapter.state_tensors()
    state["blocks.0.mlp.down.bits"] = torch.zeros(5, dtype=torch.uint8)
    fresh = build_adapter("bi_adaptformer", load_backbone("vit_tiny_test"))
    with pytest.raises(AdaptbenchError, match=r"'blocks.0.mlp.down.bits' .* expected torch.uint8 of shape \(128,\)"):
        fresh.load_state_tensors(state, source="x.safetensors")
    del state["blocks.0.mlp.down.bits"]
    with pytest.raises(AdaptbenchError, match="missing"):
        fresh.load_state_tensors(state, source="x.safetensors")


def test_checkpoint_bytes_is_the_real_file_size(tmp_path):
    _, adapter = adapted()
    path = save_adapter(adapter, tmp_path / "bi.safetensors")
    assert parameter_report(adapter).checkpoint_bytes == path.stat().st_size


def test_saved_file_is_at_most_a_25th_of_fp32_at_vit_b_width(tmp_path):
    backbone = load_backbone("timm:vit_base_patch16_224", weights="random", img_size=32, depth=2)
    assert backbone.anatomy.embed_dim == 768 and backbone.anatomy.num_blocks == 2
    adapter = build_adapter("bi_adaptformer", backbone)
    latent = parameter_report(adapter).trainable
    assert latent == 2 * 2 * 768 * 32
    size = save_adapter(adapter, tmp_path / "bi.safetensors").stat().st_size
    assert size / (4 * latent) <= 1 / 25, f"{size} bytes for {latent} weights"


@pytest.mark.parametrize("values,message", [
    ({"bottleneck": 0}, "bi_adaptformer option bottleneck=0: expected an integer >= 1"),
    ({"dropout": -0.1}, "bi_adaptformer option dropout=-0.1: expected 0 <= dropout < 1"),
])
def test_config_errors_name_the_option_and_value(values, message):
    with pytest.raises(AdaptbenchError, match=message):
        BiAdaptFormerConfig.from_dict(values, "bi_adaptformer")
