"""The SAM-specific adapters (SAM-Adapter, Conv-LoRA, SALT): each formula against a hand
computation, the official defaults and initialisations, their loss terms, merging and
checkpoints (beyond the conformance suite, which runs them on every tiny backbone)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import conv_by_taps, images, randomise
from torch import nn

from adaptbench.adapters import build_adapter
from adaptbench.adapters.accounting import parameter_report
from adaptbench.adapters.base import NotApplicable
from adaptbench.adapters.checkpoint import load_adapter, save_adapter
from adaptbench.adapters.conv_lora import (
    ConvLoRA,
    ConvLoRAConfig,
    ConvLoRALinear,
    cv_squared,
)
from adaptbench.adapters.hooks import LossContext
from adaptbench.adapters.salt import SALT, SALTConfig, SALTLinear, canonical_svd
from adaptbench.adapters.sam_adapter import SAMAdapter, SAMAdapterConfig, high_pass
from adaptbench.backbones import load_backbone
from adaptbench.backbones.geometry import GeometryContext, TokenGeometry
from adaptbench.errors import AdaptbenchError

ADAPTERS = ("sam_adapter", "conv_lora", "salt")


def extra_terms(adapter, backbone, inputs: torch.Tensor, output: torch.Tensor) -> dict[str, torch.Tensor]:
    loss = output.square().mean()
    return adapter.extra_loss(LossContext(inputs, output, None, loss, backbone, 0))


# -- SAM-Adapter --------------------------------------------------------------------------------
def dft_high_pass(image: torch.Tensor, fraction: float) -> torch.Tensor:
    """The official high-pass written with explicit DFT matrices (float64): frequency u sits at
    (u + N // 2) mod N of the shifted spectrum; the centred square of half-side
    floor(sqrt(H W f) / 2) is removed."""
    height, width = image.shape[-2:]
    half = int(math.sqrt(height * width * fraction) // 2)

    def dft(n: int, sign: float) -> torch.Tensor:
        index = torch.arange(n, dtype=torch.float64)
        return torch.exp(sign * 2j * math.pi * torch.outer(index, index) / n)

    spectrum = dft(height, -1) @ image.to(torch.complex128) @ dft(width, -1) / (height * width)
    keep = torch.ones(height, width, dtype=torch.float64)
    for u in range(height):
        for v in range(width):
            row, col = (u + height // 2) % height, (v + width // 2) % width
            if height // 2 - half <= row < height // 2 + half and width // 2 - half <= col < width // 2 + half:
                keep[u, v] = 0
    return (dft(height, 1) @ (spectrum * keep) @ dft(width, 1)).real.abs()


def test_high_pass_removes_the_low_frequencies_of_a_known_image():
    x = torch.arange(8, dtype=torch.float32)
    low, high = torch.cos(2 * math.pi * x / 8), torch.cos(2 * math.pi * 3 * x / 8)
    image = (5 + low + high).expand(1, 3, 8, 8)  # constant along the rows
    # 8x8, f = 0.25: the centred 4x4 square goes, i.e. frequencies -2..1 on each axis: the DC term
    # and the frequency-1 cosine are removed, the frequency-3 one is kept (then |.|)
    torch.testing.assert_close(high_pass(image, 0.25), high.abs().expand(1, 3, 8, 8), atol=1e-6, rtol=0)
    assert torch.count_nonzero(high_pass(torch.full((2, 3, 8, 8), 7.0), 0.25).abs() > 1e-6) == 0
    torch.testing.assert_close(high_pass(image, 0.0), image.abs(), atol=1e-5, rtol=0)  # nothing removed


@pytest.mark.parametrize("size", [(6, 10), (7, 5), (16, 16)])
def test_high_pass_equals_the_explicit_dft(size):
    image = torch.randn(*size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = dft_high_pass(image, 0.25)
    torch.testing.assert_close(high_pass(image[None, None], 0.25)[0, 0].double(), expected, atol=1e-5, rtol=0)


def sam_adapter_prompts(adapter, reference, x: torch.Tensor, layout: str = "per_token") -> dict[int, torch.Tensor]:
    """P_i = W_s GELU(W_i (F_hc + F_emb) + b_i) + b_s from the declared tensors and the frozen
    patch embedding of ``reference`` (B, H', W', d) for every prompted block."""
    t = {name: p.detach() for name, p in adapter.trainable_parameters().items()}
    patch = reference.anatomy.patch_size
    handcrafted = F.conv2d(high_pass(x, adapter.config.freq_nums), t["generator.handcrafted.weight"],
                           t["generator.handcrafted.bias"], stride=patch).permute(0, 2, 3, 1)
    batch, height, width, _ = handcrafted.shape
    embedded = reference.site("patch_embed")(x).reshape(batch, height, width, -1)
    if layout == "official":
        embedded = embedded.reshape(batch, -1, height * width).permute(0, 2, 1).reshape(batch, height, width, -1)
    feature = handcrafted + embedded @ t["generator.embedding.weight"].T + t["generator.embedding.bias"]
    prompts = {}
    for block in range(reference.anatomy.num_blocks):
        hidden = F.gelu(feature @ t[f"blocks.{block}.lightweight.weight"].T + t[f"blocks.{block}.lightweight.bias"])
        prompts[block] = hidden @ t["generator.shared.weight"].T + t["generator.shared.bias"]
    return prompts


@pytest.mark.parametrize("backbone_name", ["sam_tiny_test", "vit_tiny_test_reg", "vit_tiny_test"])
@pytest.mark.parametrize("layout", ["per_token", "official"])
def test_sam_adapter_adds_its_prompt_before_every_block(backbone_name, layout):
    torch.manual_seed(0)
    backbone = load_backbone(backbone_name).eval()
    adapter = build_adapter("sam_adapter", backbone, {"scale_factor": 8, "embedding_layout": layout})
    randomise(adapter, seed=3)
    reference = load_backbone(backbone_name).eval()
    x = images(4)
    prompts = sam_adapter_prompts(adapter, reference, x, layout)
    prefix = reference.anatomy.num_prefix_tokens

    def add_prompt(block):
        def hook(module, args):
            (tokens,) = args
            if tokens.dim() == 4:
                return (tokens + prompts[block],)
            return (torch.cat([tokens[:, :prefix], tokens[:, prefix:] + prompts[block].flatten(1, 2)], dim=1),)
        return hook

    for block, module in enumerate(reference.blocks):
        module.register_forward_pre_hook(add_prompt(block))
    torch.testing.assert_close(backbone(x), reference(x), atol=1e-5, rtol=1e-5)


def test_sam_adapter_defaults_init_and_count():
    config = SAMAdapterConfig()
    assert (config.scale_factor, config.freq_nums, config.embedding_layout, config.blocks) == (32, 0.25, "per_token",
                                                                                              None)
    assert not SAMAdapter.identity_at_init and not SAMAdapter.mergeable
    torch.manual_seed(0)
    backbone = load_backbone("sam_tiny_test")
    adapter = build_adapter("sam_adapter", backbone, {"scale_factor": 8})  # d = 32: h = 4
    tensors = adapter.trainable_parameters()
    # conv 3 -> 4 (4x4 patches), embedding 32 -> 4, shared 4 -> 32, one 4 -> 4 per block (4 blocks)
    expected = (3 * 4 * 16 + 4) + (32 * 4 + 4) + (4 * 32 + 32) + 4 * (4 * 4 + 4)
    assert parameter_report(adapter).trainable == expected == sum(t.numel() for t in tensors.values())
    for name, tensor in tensors.items():
        if name.endswith("bias"):
            assert torch.count_nonzero(tensor) == 0, name
        elif "handcrafted" not in name:  # trunc-normal std 0.02, cut at +-2
            assert tensor.abs().max() <= 2 and 0 < tensor.std() < 0.1, name
    # the official init gives non-zero prompts: the output moves at once
    x = images()
    assert not torch.allclose(backbone.eval()(x), load_backbone("sam_tiny_test").eval()(x), atol=1e-4)


def test_sam_adapter_needs_prompt_channels_and_attaches_once():
    anatomy = load_backbone("vit_tiny_test").anatomy  # d = 32
    assert "no prompt channels" in SAMAdapter.unsupported(anatomy, SAMAdapterConfig(scale_factor=64))
    with pytest.raises(NotApplicable, match="n/a"):
        build_adapter("sam_adapter", load_backbone("vit_tiny_test"), {"scale_factor": 64})
    backbone = load_backbone("vit_tiny_test")
    build_adapter("sam_adapter", backbone)
    with pytest.raises(AdaptbenchError, match="attach it once"):
        build_adapter("sam_adapter", backbone)
    with pytest.raises(AdaptbenchError, match="embedding_layout"):
        SAMAdapterConfig.from_dict({"embedding_layout": "nchw"}, "sam_adapter")


def test_sam_adapter_finds_the_grid_behind_vpt_prompts():
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test").eval()
    vpt = build_adapter("vpt_shallow", backbone)
    alone = backbone(images())
    build_adapter("sam_adapter", backbone)  # its block wrappers sit outside VPT's
    both = backbone(images())
    assert torch.isfinite(both).all() and not torch.allclose(both, alone, atol=1e-4)
    assert vpt.trainable_count() > 0


# -- Conv-LoRA ----------------------------------------------------------------------------------
def test_conv_lora_defaults_are_the_official_recipe():
    config = ConvLoRAConfig()
    assert (config.r, config.alpha, config.num_experts, config.balance_coef, config.dropout, config.targets) == (
        3, 32.0, 8, 1e-2, 0.0, ("qkv",))
    assert ConvLoRA.identity_at_init and not ConvLoRA.mergeable


def test_conv_lora_init_and_parameter_count():
    torch.manual_seed(0)
    backbone = load_backbone("sam_tiny_test")
    adapter = build_adapter("conv_lora", backbone)
    layer = backbone.site("qkv", 0)
    assert isinstance(layer, ConvLoRALinear)
    assert torch.count_nonzero(layer.lora_B) == 0
    for zero in (layer.expert_bias, layer.w_gate, layer.w_noise):
        assert torch.count_nonzero(zero) == 0
    bound = 1 / math.sqrt(3 * 9)  # nn.Conv2d's default init: kaiming_uniform(a=sqrt(5)), fan_in = r * 3 * 3
    assert layer.expert_weight.shape == (8, 3, 3, 3, 3)
    assert layer.expert_weight.abs().max() <= bound and layer.expert_weight.abs().max() > 0.8 * bound
    # per qkv (32 -> 96): A 3x32, B 96x3, 8 experts of 3x3x3x3 + 3, gate and noise 3x8
    per_site = 3 * 32 + 96 * 3 + 8 * (81 + 3) + 2 * 3 * 8
    report = parameter_report(adapter)
    assert report.trainable == 4 * per_site
    assert report.extra_inference == 4 * (per_site - 3 * 8)  # the noise matrices act in training only
    with pytest.raises(AdaptbenchError, match="cannot be merged"):
        adapter.merge()


@pytest.mark.parametrize("backbone_name", ["sam_tiny_test", "vit_tiny_test_reg", "clip_tiny_test"])
def test_conv_lora_with_zero_B_is_the_frozen_model_in_both_modes(backbone_name):
    if backbone_name.startswith("clip"):
        pytest.importorskip("open_clip")
    torch.manual_seed(0)
    backbone = load_backbone(backbone_name)
    adapter = build_adapter("conv_lora", backbone)
    with torch.no_grad():  # everything but B non-trivial: the mixture runs, B = 0 cancels it
        for name, param in adapter.trainable_parameters().items():
            if not name.endswith("lora_B"):
                param.add_(0.3 * torch.randn_like(param))
    reference = load_backbone(backbone_name)
    x = images()
    for mode in (True, False):
        torch.testing.assert_close(backbone.train(mode)(x), reference.train(mode)(x), atol=1e-6, rtol=0)


def standalone_layer(num_experts: int = 3, seed: int = 0) -> tuple[ConvLoRALinear, GeometryContext, nn.Linear]:
    torch.manual_seed(seed)
    base = nn.Linear(8, 12)
    geometry = GeometryContext()
    layer = ConvLoRALinear(base, ConvLoRAConfig(r=2, alpha=6.0, num_experts=num_experts), geometry)
    with torch.no_grad():
        for name, tensor in layer.adapter_tensors():
            tensor.copy_(0.5 * torch.randn_like(tensor))
    return layer, geometry, base


def test_conv_lora_forward_by_hand_with_a_class_token_and_a_3x4_grid():
    layer, geometry, base = standalone_layer()
    chosen = torch.tensor([2, 0, 1, 2])
    layer.route = lambda grid: chosen  # routing is checked apart; here the dispatch and the experts
    x = torch.randn(4, 1 + 12, 8, generator=torch.Generator().manual_seed(1))
    with geometry.publish(TokenGeometry(batch=4, grid=(3, 4), prefix=1)):
        out = layer.eval()(x)
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    z = x @ a.T
    expected = []
    for sample, expert in enumerate(chosen.tolist()):
        grid = z[sample, 1:].reshape(3, 4, 2).permute(2, 0, 1)[None]
        factor = expert + 1
        up = F.interpolate(grid, scale_factor=factor, mode="bicubic") if factor > 1 else grid
        conv = F.gelu(conv_by_taps(up, layer.expert_weight[expert].detach(), layer.expert_bias[expert].detach()))
        down = F.interpolate(conv, size=(3, 4), mode="bicubic") if factor > 1 else conv
        mixed = (grid + down)[0].permute(1, 2, 0).reshape(12, 2)
        tokens = torch.cat([z[sample, :1], mixed])  # the class token keeps plain LoRA
        expected.append(base(x[sample]) + 3.0 * tokens @ b.T)
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-5, rtol=1e-5)
    # the class token's output is plain LoRA: base + (alpha / r) B A x
    torch.testing.assert_close(out[:, 0], base(x[:, 0]) + 3.0 * (x[:, 0] @ a.T) @ b.T, atol=1e-5, rtol=1e-5)


def test_conv_lora_routing_and_balance_loss_by_hand():
    layer, _, _ = standalone_layer(num_experts=4)
    grid = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    features = grid.mean(dim=(2, 3))
    clean = features @ layer.w_gate.detach()
    # evaluation: the clean logits route, importance and load are the counts
    layer.eval()
    assert torch.equal(layer.route(grid), clean.argmax(dim=1))
    counts = torch.bincount(clean.argmax(dim=1), minlength=4).float()
    cv2 = counts.var() / counts.mean() ** 2
    torch.testing.assert_close(layer.balance_loss, 1e-2 * 2 * cv2)
    # training: noisy logits (one randn draw), load = sum_b P(m is top-1 under fresh noise)
    layer.train()
    torch.manual_seed(5)
    chosen = layer.route(grid)
    torch.manual_seed(5)
    std = F.softplus(features @ layer.w_noise.detach()) + 1e-2
    noisy = clean + torch.randn_like(clean) * std
    assert torch.equal(chosen, noisy.argmax(dim=1))
    load = torch.zeros(4)
    for sample in range(6):
        for expert in range(4):
            others = torch.cat([noisy[sample, :expert], noisy[sample, expert + 1:]]).max()
            z = (clean[sample, expert] - others) / std[sample, expert]
            load[expert] += 0.5 * (1 + math.erf(z.item() / math.sqrt(2)))
    importance = torch.bincount(chosen, minlength=4).float()
    expected = 1e-2 * (importance.var() / importance.mean() ** 2 + load.var() / load.mean() ** 2)
    torch.testing.assert_close(layer.balance_loss, expected, atol=1e-6, rtol=1e-5)
    assert cv_squared(torch.tensor([3.0])) == 0  # a single expert: no imbalance


def test_conv_lora_routes_each_sam_window():
    torch.manual_seed(0)
    backbone = load_backbone("sam_tiny_test")
    adapter = build_adapter("conv_lora", backbone)
    backbone.eval()(images(batch=2))
    # 8x8 grid, 3x3 windows (padded to 9x9): 9 windows per image in windowed blocks, the whole
    # grid in the global blocks 1 and 3 (the official qkv sees windows too)
    sizes = [adapter.layers[f"blocks.{b}.qkv"].last_routing.numel() for b in range(4)]
    assert sizes == [18, 2, 18, 2]


def test_conv_lora_balance_loss_trains_the_gate():
    torch.manual_seed(0)
    backbone = load_backbone("sam_tiny_test")
    adapter = build_adapter("conv_lora", backbone)
    x = images(batch=4)
    out = backbone.train()(x)
    extras = extra_terms(adapter, backbone, x, out)
    assert set(extras) == {"moe_balance"}
    term = extras["moe_balance"]
    assert term.ndim == 0 and torch.isfinite(term) and term > 0
    layers = adapter.layers.values()
    torch.testing.assert_close(term, sum(layer.balance_loss for layer in layers))
    term.backward()
    for layer in layers:
        assert layer.w_gate.grad.abs().sum() > 0 and layer.w_noise.grad.abs().sum() > 0
    backbone.eval()(x)
    assert extra_terms(adapter, backbone, x, out) == {}  # evaluation adds no term


# -- SALT ---------------------------------------------------------------------------------------
def test_salt_defaults_are_the_official_configuration():
    config = SALTConfig()
    assert (config.rank_ratio, config.rank, config.lora_rank, config.reg_weight) == (0.1, None, 256, 0.0)
    assert config.targets == ("qkv", "attn_out", "mlp_in", "mlp_out") and config.blocks is None
    assert SALT.identity_at_init and SALT.mergeable
    assert (config.rank_of(768), config.rank_of(32), config.rank_of(5)) == (76, 3, 1)
    assert SALTConfig(rank=50).rank_of(768) == 50 and SALTConfig(rank=50).rank_of(32) == 32


def test_salt_svd_reconstructs_the_weight_and_init_is_exactly_the_frozen_layer():
    torch.manual_seed(0)
    backbone = load_backbone("sam_tiny_test")
    frozen = backbone.site("qkv", 0).weight.detach().clone()
    adapter = build_adapter("salt", backbone)
    layer = backbone.site("qkv", 0)
    assert isinstance(layer, SALTLinear)
    torch.testing.assert_close(layer.U @ torch.diag(layer.S) @ layer.Vh, frozen, atol=1e-5, rtol=0)
    assert (layer.S[:-1] >= layer.S[1:]).all() and (layer.S >= 0).all()
    torch.testing.assert_close(layer.U.T @ layer.U, torch.eye(32), atol=1e-5, rtol=0)
    assert torch.count_nonzero(layer.delta()) == 0
    assert torch.equal(layer.adapted_weight(), frozen)
    # the official SAM2 layer's init: a = 1, b = 0, Y = 0, X Kaiming-uniform with gain sqrt(2), fan_in q
    tensors = adapter.trainable_parameters()
    assert torch.equal(tensors["blocks.0.qkv.scale"], torch.ones(3))
    assert torch.count_nonzero(tensors["blocks.0.qkv.shift"]) == 0
    assert torch.count_nonzero(tensors["blocks.0.qkv.lora_Y"]) == 0
    x_factor = tensors["blocks.0.qkv.lora_X"]
    assert x_factor.shape == (29, 256)
    bound = math.sqrt(6 / 256)
    assert x_factor.abs().max() <= bound and x_factor.abs().max() > 0.9 * bound


def test_salt_svd_basis_is_canonical():
    weight = torch.randn(12, 7, generator=torch.Generator().manual_seed(0))
    u, sigma, vh = canonical_svd(weight)
    again = canonical_svd(weight.clone())
    assert all(torch.equal(p, q) for p, q in zip((u, sigma, vh), again))
    assert (u[u.abs().argmax(dim=0), torch.arange(7)] > 0).all()
    torch.testing.assert_close(u @ torch.diag(sigma) @ vh, weight.double())


def salt_weight_by_hand(layer: SALTLinear) -> torch.Tensor:
    """U ReLU(Sigma') V^T with Sigma' the official k x k matrix, in float64."""
    u, sigma, vh = (t.double() for t in (layer.U, layer.S, layer.Vh))
    r, k = layer.rank, sigma.numel()
    prime = torch.zeros(k, k, dtype=torch.float64)
    prime[:r, :r] = torch.diag(layer.scale.detach().double() * sigma[:r] + layer.shift.detach().double())
    prime[r:, r:] = torch.diag(sigma[r:]) + layer.lora_X.detach().double() @ layer.lora_Y.detach().double()
    return u @ F.relu(prime) @ vh


@pytest.mark.parametrize("backbone_name", ["sam_tiny_test", "vit_tiny_test_reg"])
def test_salt_forward_and_merge_are_U_relu_sigma_prime_V(backbone_name):
    torch.manual_seed(0)
    backbone = load_backbone(backbone_name).eval()
    adapter = build_adapter("salt", backbone, {"lora_rank": 4})
    randomise(adapter, seed=1)  # scales around 0: some top values go negative and are cut
    for block in range(backbone.anatomy.num_blocks):
        for site in ("qkv", "attn_out", "mlp_in", "mlp_out"):
            layer = backbone.site(site, block)
            bias = layer.base_layer.bias
            x = torch.randn(3, 5, layer.base_layer.in_features)
            expected = x.double() @ salt_weight_by_hand(layer).T + (0 if bias is None else bias.double())
            torch.testing.assert_close(layer(x).double(), expected, atol=1e-4, rtol=1e-4)
    hand = salt_weight_by_hand(backbone.site("mlp_out", 0))
    out = backbone(images())
    adapter.merge()
    assert not any(isinstance(m, SALTLinear) for m in backbone.modules())
    torch.testing.assert_close(backbone.site("mlp_out", 0).weight.double(), hand, atol=1e-4, rtol=0)
    torch.testing.assert_close(backbone(images()), out, atol=1e-5, rtol=1e-5)
    assert parameter_report(adapter).extra_inference == 0


def test_salt_rank_options_and_parameter_count():
    backbone = load_backbone("vit_tiny_test")  # every adapted linear has k = 32 singular values
    adapter = build_adapter("salt", backbone, {"lora_rank": 8})
    # per site 2 r + 2 q (k - r) with r = max(1, floor(0.1 * 32)) = 3, 4 sites, 2 blocks
    assert parameter_report(adapter).trainable == 2 * 4 * (2 * 3 + 2 * 8 * 29)
    whole = build_adapter("salt", load_backbone("vit_tiny_test"), {"rank": 99, "targets": "qkv"})
    assert sorted(whole.trainable_parameters()) == [f"blocks.{b}.qkv.{n}" for b in (0, 1) for n in ("scale", "shift")]
    with pytest.raises(AdaptbenchError, match="rank_ratio=0"):
        SALTConfig.from_dict({"rank_ratio": "0"}, "salt")
    with pytest.raises(AdaptbenchError, match="target 'q'"):
        SALTConfig.from_dict({"targets": "q"}, "salt")


def test_salt_regulariser_is_the_official_reg_loss():
    torch.manual_seed(0)
    backbone = load_backbone("sam_tiny_test")
    x = images()
    assert extra_terms(build_adapter("salt", load_backbone("sam_tiny_test")), backbone, x, x) == {}  # weight 0
    adapter = build_adapter("salt", backbone, {"reg_weight": 0.5, "lora_rank": 4})
    randomise(adapter, seed=2)
    expected = 0.0
    for layer in adapter.layers.values():
        sigma = layer.S[: layer.rank]
        expected += torch.linalg.vector_norm(layer.scale * sigma + layer.shift - sigma)
        expected += torch.linalg.matrix_norm(layer.lora_X @ layer.lora_Y)
    terms = extra_terms(adapter, backbone, x, backbone(x))
    torch.testing.assert_close(terms["salt_reg"], 0.5 * expected)


# -- all three ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ADAPTERS)
def test_gradients_reach_the_declared_tensors_and_nothing_else(name):
    torch.manual_seed(0)
    backbone = load_backbone("sam_tiny_test")
    adapter = build_adapter(name, backbone, {"reg_weight": 1.0} if name == "salt" else {})
    randomise(adapter, seed=4)  # zero-initialised factors would hide the others' gradients
    x = images()
    out = backbone.train()(x)
    loss = out.square().mean() + sum(extra_terms(adapter, backbone, x, out).values())
    loss.backward()
    declared = {id(p) for p in adapter.trainable_parameters().values()}
    for param_name, param in backbone.named_parameters():
        if id(param) in declared:
            assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, param_name
        else:
            assert param.grad is None, param_name


@pytest.mark.parametrize("name", ADAPTERS)
def test_save_load_round_trip(name, tmp_path):
    torch.manual_seed(0)
    backbone = load_backbone("sam_tiny_test")
    adapter = build_adapter(name, backbone)
    randomise(adapter, seed=5)
    path = save_adapter(adapter, tmp_path / f"{name}.safetensors")
    loaded, _ = load_adapter(load_backbone("sam_tiny_test"), path)
    assert loaded.config == adapter.config
    assert loaded.backbone is not backbone
    torch.testing.assert_close(loaded.backbone.eval()(images(9)), backbone.eval()(images(9)), atol=0, rtol=0)


@pytest.mark.parametrize("name", ADAPTERS)
def test_gradient_checkpointing_gives_the_same_gradients(name):
    """A checkpointed block recomputes its forward in the backward pass: SAM-Adapter's prompts, the
    routed experts (same noise: the RNG state is replayed) and SALT's weights must come out the same."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        backbone = load_backbone("sam_tiny_test")
        adapter = build_adapter(name, backbone)
        randomise(adapter, seed=6)
        backbone.grad_checkpointing = checkpointing
        torch.manual_seed(1)
        x = images()
        out = backbone.train()(x)
        (out.square().mean() + sum(extra_terms(adapter, backbone, x, out).values())).backward()
        grads.append({n: p.grad.clone() for n, p in adapter.trainable_parameters().items()})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-6, rtol=1e-5, msg=key)
