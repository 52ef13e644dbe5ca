"""DoRA: equal to HF PEFT's ``LoraConfig(use_dora=True)`` given the same A, B and m, and to
the paper's formula ``W' = m (W0 + s B A) / ||W0 + s B A||_c`` computed by hand.

Every B is non-zero and every magnitude is moved away from its initial norm (otherwise the
adapted model is the frozen one and every comparison holds trivially); every comparison also
checks that the adapted output is far from the base model's.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from adaptbench.adapters import adapter_class, build_adapter
from adaptbench.adapters.dora import DoRAConfig, DoRALinear
from adaptbench.adapters.lora import LoRAConfig
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError

# the LoRA/PEFT comparison's helpers: same tiny timm ViT, same seeded weights
from test_peft_equivalence import (
    ALPHA, ATOL, DEPTH, R, RTOL, SCALING, SITE_TO_TIMM, THIRDS, WIDTH,
    assert_far, peft_model, plain_timm, randomise,
)
from helpers import images

peft = pytest.importorskip("peft")


def random_bias(block: int, site: str, width: int) -> torch.Tensor:
    """timm zero-initialises biases; non-zero ones make DoRA's bias handling show."""
    seed = 100 * block + list(SITE_TO_TIMM).index(site)
    return 0.5 * torch.randn(width, generator=torch.Generator().manual_seed(seed))


def ours_fused(seed: int = 1, dropout: float = 0.0):
    backbone = load_backbone("vit_tiny_test").eval()
    with torch.no_grad():
        for block in range(DEPTH):
            for site in SITE_TO_TIMM:
                bias = backbone.site(site, block).bias
                bias.copy_(random_bias(block, site, bias.numel()))
    options = {"targets": list(SITE_TO_TIMM), "r": R, "alpha": ALPHA, "dropout": dropout}
    adapter = build_adapter("dora", backbone, options)
    return backbone, adapter, randomise(adapter, seed)


def peft_dora_with(params, dropout: float = 0.0) -> nn.Module:
    """PEFT DoRA with our A, B, m, on plain timm given the same biases as :func:`ours_fused`."""
    def weights(block, site):
        return tuple(params[f"blocks.{block}.{site}.lora_{what}.{site}"] for what in ("A", "B", "magnitude"))
    model = peft_model(weights, use_dora=True, dropout=dropout)
    with torch.no_grad():
        for block in range(DEPTH):
            for site in SITE_TO_TIMM:
                bias = peft_layer(model, block, site).base_layer.bias
                bias.copy_(random_bias(block, site, bias.numel()))
    return model


def peft_layer(model, block: int, site: str) -> nn.Module:
    return model.base_model.model.blocks[block].get_submodule(SITE_TO_TIMM[site])


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.norm(dim=1)


def test_defaults_are_loras():
    """The paper gives no vision-backbone setting: DoRA keeps LoRA's defaults."""
    assert dataclasses.asdict(DoRAConfig()) == dataclasses.asdict(LoRAConfig())
    assert DoRAConfig().r == 8 and DoRAConfig().alpha == 8.0 and DoRAConfig().targets == ("q", "v")
    assert adapter_class("dora").mergeable and adapter_class("dora").identity_at_init


@pytest.mark.parametrize("options,named", [
    ({"r": 0}, "dora option r=0"),
    ({"dropout": 1.5}, "dora option dropout=1.5"),
    ({"targets": ("q", "temporal")}, "dora target 'temporal'"),
    ({"targets": ("qkv", "q")}, "dora targets: use either 'qkv'"),
])
def test_validation_names_the_bad_value(options, named):
    with pytest.raises(AdaptbenchError, match=named):
        DoRAConfig(**options)


def test_magnitude_starts_at_the_row_norms_of_w0():
    backbone = load_backbone("vit_tiny_test_reg").eval()  # no qkv bias: the bias-free path
    original = copy.deepcopy(backbone)
    adapter = build_adapter("dora", backbone, {"targets": ["q", "v", "mlp_out"]})
    params = adapter.trainable_parameters()
    assert sorted(n for n in params if ".lora_magnitude." in n) == sorted(
        f"blocks.{b}.{site}.lora_magnitude.{part}"
        for b in range(DEPTH) for site, part in (("qkv", "q"), ("qkv", "v"), ("mlp_out", "mlp_out")))
    for block in range(DEPTH):
        qkv = original.site("qkv", block).weight
        for part in ("q", "v"):
            magnitude = params[f"blocks.{block}.qkv.lora_magnitude.{part}"]
            assert magnitude.shape == (WIDTH,)
            torch.testing.assert_close(magnitude, row_norms(qkv[THIRDS[part]]), atol=0, rtol=0)
        torch.testing.assert_close(params[f"blocks.{block}.mlp_out.lora_magnitude.mlp_out"],
                                   row_norms(original.site("mlp_out", block).weight), atol=0, rtol=0)


def test_fused_dora_equals_peft_dora():
    """qkv/attn_out/mlp_in/mlp_out DoRA == PEFT use_dora on qkv/proj/fc1/fc2, same A, B, m."""
    backbone, _, params = ours_fused()
    reference = peft_dora_with(params)
    x = images(2)
    with torch.no_grad():
        ours, theirs = backbone.forward_features(x), reference.forward_features(x)
        base = plain_timm().forward_features(x)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    assert_far(ours, base)


def test_fused_dora_gradients_equal_peft():
    """d(loss)/dA, dB and dm match PEFT's, which treats the norm as a constant (Sec. 4.3)."""
    backbone, _, params = ours_fused()
    reference = peft_dora_with(params)
    x = images(3)
    weights = torch.randn(2, 17, WIDTH, generator=torch.Generator().manual_seed(4))
    (backbone.forward_features(x) * weights).sum().backward()
    (reference.forward_features(x) * weights).sum().backward()
    for block in range(DEPTH):
        for site in SITE_TO_TIMM:
            layer = peft_layer(reference, block, site)
            for kind, theirs in (("A", layer.lora_A["default"].weight), ("B", layer.lora_B["default"].weight),
                                 ("magnitude", layer.lora_magnitude_vector["default"].weight)):
                ours = params[f"blocks.{block}.{site}.lora_{kind}.{site}"]
                assert ours.grad is not None and theirs.grad is not None
                assert ours.grad.abs().max() > 0
                torch.testing.assert_close(ours.grad, theirs.grad, atol=ATOL, rtol=RTOL,
                                           msg=lambda m: f"block {block} {site} grad {kind}: {m}")


def test_dropout_path_equals_peft():
    """With dropout in training, the frozen term uses the dropped input too (PEFT's maths)."""
    backbone, _, params = ours_fused(dropout=0.5)
    reference = peft_dora_with(params, dropout=0.5)
    x = images(10)
    backbone.train(), reference.train()
    with torch.no_grad():
        torch.manual_seed(0)
        ours = backbone.forward_features(x)
        torch.manual_seed(0)
        theirs = reference.forward_features(x)
        evaluated = backbone.eval().forward_features(x)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    assert_far(ours, evaluated)  # dropout really was applied


def test_merge_equals_peft_merge_and_unload():
    """merge() writes PEFT's merge_and_unload() weights (bias untouched) and outputs."""
    backbone, adapter, params = ours_fused()
    merged_peft = peft_dora_with(params).merge_and_unload().eval()
    x = images(5)
    with torch.no_grad():
        unmerged = backbone.forward_features(x)
        adapter.merge()
        ours, theirs = backbone.forward_features(x), merged_peft.forward_features(x)
    for block in range(DEPTH):
        for site, path in SITE_TO_TIMM.items():
            our_layer, their_layer = backbone.site(site, block), merged_peft.blocks[block].get_submodule(path)
            assert type(our_layer) is nn.Linear and type(their_layer) is nn.Linear
            torch.testing.assert_close(our_layer.weight, their_layer.weight, atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(our_layer.bias, their_layer.bias, atol=0, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(ours, unmerged, atol=ATOL, rtol=RTOL)


def ours_q_v(seed: int = 6):
    backbone = load_backbone("vit_tiny_test").eval()
    original = copy.deepcopy(backbone)
    adapter = build_adapter("dora", backbone, {"targets": ["q", "v"], "r": R, "alpha": ALPHA})
    return backbone, original, adapter, randomise(adapter, seed)


def by_hand(original, params):
    """The frozen model with qkv rows of q and v replaced by m (W0 + s B A) / ||W0 + s B A||_c."""
    reference = copy.deepcopy(original)
    with torch.no_grad():
        for block in range(DEPTH):
            weight = reference.site("qkv", block).weight
            for part in ("q", "v"):
                a, b, m = (params[f"blocks.{block}.qkv.lora_{what}.{part}"] for what in ("A", "B", "magnitude"))
                direction = weight[THIRDS[part]] + SCALING * (b @ a)
                weight[THIRDS[part]] = m[:, None] * direction / row_norms(direction)[:, None]
    return reference


def test_separate_q_v_follow_the_paper_formula():
    """targets q, v == the frozen model with W'_p = m_p V_p / ||V_p||_c, V_p = W0_p + s B_p A_p
    on each third; the k third and the bias stay the frozen ones; merge() folds exactly that."""
    backbone, original, adapter, params = ours_q_v()
    assert all(isinstance(backbone.site("qkv", b), DoRALinear) for b in range(DEPTH))
    reference = by_hand(original, params)
    x = images(7)
    with torch.no_grad():
        ours, expected, base = backbone.forward_features(x), reference.forward_features(x), original.forward_features(x)
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)
        assert_far(ours, base)
        adapter.merge()
        torch.testing.assert_close(backbone.forward_features(x), expected, atol=ATOL, rtol=RTOL)
    for block in range(DEPTH):
        merged, before = backbone.site("qkv", block), original.site("qkv", block)
        assert torch.equal(merged.weight[THIRDS["k"]], before.weight[THIRDS["k"]])
        assert torch.equal(merged.bias, before.bias)
        torch.testing.assert_close(merged.weight, reference.site("qkv", block).weight, atol=ATOL, rtol=RTOL)


def test_separate_q_v_with_shared_a_equal_peft_fused_qkv():
    """Our slice placement checked against PEFT: A_q = A_v = A, B = [B_q; 0; B_v] and
    m = [m_q; ||W0_k||_c; m_v] on PEFT's fused qkv leave k alone and equal our q, v DoRA."""
    backbone, original, _, params = ours_q_v()
    with torch.no_grad():
        for block in range(DEPTH):
            params[f"blocks.{block}.qkv.lora_A.v"].copy_(params[f"blocks.{block}.qkv.lora_A.q"])

    def weights(block, site):
        layer = original.site(site, block)
        if site != "qkv":  # PEFT also wraps proj/fc1/fc2: keep those the identity
            return torch.zeros(R, layer.in_features), torch.zeros(layer.out_features, R), row_norms(layer.weight)
        b, m = torch.zeros(3 * WIDTH, R), row_norms(layer.weight)
        for part in ("q", "v"):
            b[THIRDS[part]] = params[f"blocks.{block}.qkv.lora_B.{part}"]
            m[THIRDS[part]] = params[f"blocks.{block}.qkv.lora_magnitude.{part}"]
        return params[f"blocks.{block}.qkv.lora_A.q"], b, m

    reference = peft_model(weights, use_dora=True)
    x = images(9)
    with torch.no_grad():
        ours, theirs, base = backbone.forward_features(x), reference.forward_features(x), original.forward_features(x)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    assert_far(ours, base)


def with_random_bias(backbone, site: str = "mlp_in"):
    """timm zero-initialises biases; give ``site`` a non-zero one so that bias handling shows."""
    with torch.no_grad():
        for block in range(DEPTH):
            bias = backbone.site(site, block).bias
            bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(block)))
    return backbone


def test_one_layer_is_the_formula_with_the_bias_left_alone():
    """h = m (W0 + s B A) x / ||W0 + s B A||_c + b on a linear with a non-zero bias;
    merge() keeps b and writes that weight."""
    backbone = with_random_bias(load_backbone("vit_tiny_test").eval())
    frozen = copy.deepcopy(backbone.site("mlp_in", 0))
    adapter = build_adapter("dora", backbone, {"targets": ["mlp_in"], "r": R, "alpha": ALPHA})
    params = randomise(adapter, 13)
    a, b, m = (params[f"blocks.0.mlp_in.lora_{what}.mlp_in"] for what in ("A", "B", "magnitude"))
    tokens = torch.randn(2, 17, WIDTH, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        direction = frozen.weight + SCALING * (b @ a)
        weight = m[:, None] * direction / row_norms(direction)[:, None]
        expected = nn.functional.linear(tokens, weight, frozen.bias)
        torch.testing.assert_close(backbone.site("mlp_in", 0)(tokens), expected, atol=ATOL, rtol=RTOL)
        assert_far(expected, frozen(tokens))
        adapter.merge()
        merged = backbone.site("mlp_in", 0)
        torch.testing.assert_close(merged.weight, weight, atol=ATOL, rtol=RTOL)
        assert torch.equal(merged.bias, frozen.bias)


def test_only_the_magnitude_moves_the_output_when_b_is_zero():
    """With B = 0 the direction is W0's: scaling m by c scales those output rows (minus
    bias) by c exactly; this pins the magnitude to rows, not columns."""
    backbone = with_random_bias(load_backbone("vit_tiny_test").eval())
    original = copy.deepcopy(backbone)
    adapter = build_adapter("dora", backbone, {"targets": ["mlp_in"]})
    with torch.no_grad():
        adapter.trainable_parameters()["blocks.0.mlp_in.lora_magnitude.mlp_in"].mul_(2.0)
        tokens = torch.randn(2, 17, WIDTH, generator=torch.Generator().manual_seed(12))
        frozen = original.site("mlp_in", 0)
        assert frozen.bias.abs().min() > 0
        expected = 2.0 * (frozen(tokens) - frozen.bias) + frozen.bias
        torch.testing.assert_close(backbone.site("mlp_in", 0)(tokens), expected, atol=ATOL, rtol=RTOL)
