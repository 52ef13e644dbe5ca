"""RepAdapter beyond the conformance suite: the grouped formula by hand, exact merge, defaults."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import images
from torch import nn

from adaptbench.adapters import build_adapter
from adaptbench.adapters.hooks import LossContext
from adaptbench.adapters.repadapter import RepAdapterConfig, RepAdapterLinear
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError

D = 32  # vit_tiny_test width


def randomised(options: dict, backbone_name: str = "vit_tiny_test"):
    """A RepAdapter-adapted tiny backbone (eval mode) with seeded random adapter tensors."""
    torch.manual_seed(0)
    backbone = load_backbone(backbone_name)
    frozen = copy.deepcopy(backbone)
    adapter = build_adapter("repadapter", backbone, options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in adapter.trainable_parameters().values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return frozen.eval(), backbone.eval(), adapter  # eval after attaching: new wrappers start in train mode


def hand_adapter(params: dict, prefix: str, x: torch.Tensor, groups: int) -> torch.Tensor:
    """B(A x + a) + b with B's group structure written out: output group i reads hidden group i."""
    a_w, a_b = params[f"{prefix}.A.weight"], params[f"{prefix}.A.bias"]
    b_w, b_b = params[f"{prefix}.B.weight"], params[f"{prefix}.B.bias"]
    hidden = x @ a_w.T + a_b
    out_per_group, hidden_per_group = D // groups, a_w.shape[0] // groups
    pieces = []
    for i in range(groups):
        h_i = hidden[..., i * hidden_per_group:(i + 1) * hidden_per_group]
        w_i = b_w[i * out_per_group:(i + 1) * out_per_group]
        pieces.append(h_i @ w_i.T)
    return torch.cat(pieces, dim=-1) + b_b


def dense_affine(params: dict, prefix: str, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, c) of the adapter, B densified entry by entry (zeros off the group blocks)."""
    a_w, a_b = params[f"{prefix}.A.weight"], params[f"{prefix}.A.bias"]
    b_w, b_b = params[f"{prefix}.B.weight"], params[f"{prefix}.B.bias"]
    hidden = a_w.shape[0]
    dense_b = torch.zeros(D, hidden)
    for out in range(D):
        group = out // (D // groups)
        for j in range(hidden // groups):
            dense_b[out, group * (hidden // groups) + j] = b_w[out, j]
    return dense_b @ a_w, dense_b @ a_b + b_b


def test_defaults_are_the_papers():
    config = RepAdapterConfig()
    assert (config.hidden_dim, config.groups, config.scale, config.dropout) == (8, 2, 1.0, 0.1)
    assert config.sites == ("qkv", "mlp_in")  # "repblock": before attention and before the MLP
    assert config.blocks is None
    assert config.b_norm_weight == 0.0  # the LossRep penalty: off in every official script


def test_init_a_xavier_b_and_biases_zero():
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("repadapter", backbone)
    params = adapter.trainable_parameters()
    bound = (6 / (D + 8)) ** 0.5  # Xavier-uniform bound of an 8 x 32 weight
    a_w = params["blocks.0.qkv.repadapter.A.weight"]
    assert a_w.shape == (8, D) and 0.5 * bound < a_w.abs().max() <= bound
    for name in ("A.bias", "B.weight", "B.bias"):
        assert torch.count_nonzero(params[f"blocks.0.qkv.repadapter.{name}"]) == 0
    assert params["blocks.0.qkv.repadapter.B.weight"].shape == (D, 8 // 2)
    assert adapter.trainable_count() == 2 * 2 * (D * 8 + 8 + D * 4 + D)
    assert isinstance(adapter.backbone.site("qkv", 0).adapter.dropout, nn.Dropout)


@pytest.mark.parametrize("site,groups", [("qkv", 2), ("mlp_in", 4), ("qkv", 1)])
def test_site_forward_is_the_formula(site, groups):
    scale = 0.7
    _, backbone, adapter = randomised({"groups": groups, "scale": scale})
    params = adapter.trainable_parameters()
    wrapper = backbone.site(site, 1)
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(2))
    adapted = x + scale * hand_adapter(params, f"blocks.1.{site}.repadapter", x, groups)
    expected = adapted @ wrapper.base_layer.weight.T + wrapper.base_layer.bias
    torch.testing.assert_close(wrapper(x), expected, atol=1e-5, rtol=1e-5)


def test_branch_equals_the_official_grouped_conv1d():
    _, backbone, adapter = randomised({"groups": 4, "hidden_dim": 8})
    branch = backbone.site("qkv", 0).adapter
    conv_a = nn.Conv1d(D, 8, 1)
    conv_b = nn.Conv1d(8, D, 1, groups=4)
    with torch.no_grad():
        conv_a.weight.copy_(branch.down.weight[..., None])
        conv_a.bias.copy_(branch.down.bias)
        conv_b.weight.copy_(branch.up_weight[..., None])
        conv_b.bias.copy_(branch.up_bias)
    x = torch.randn(2, 5, D)
    official = conv_b(conv_a(x.transpose(1, 2))).transpose(1, 2)
    torch.testing.assert_close(branch(x), official, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "vit_tiny_test_reg"])
def test_merge_is_exact_and_leaves_plain_linears(backbone_name):
    scale, groups = 1.5, 2
    _, backbone, adapter = randomised({"scale": scale, "dropout": 0.3}, backbone_name)
    params = adapter.trainable_parameters()
    qkv = backbone.site("qkv", 0).base_layer
    matrix, offset = dense_affine(params, "blocks.0.qkv.repadapter", groups)
    bias = qkv.bias if qkv.bias is not None else torch.zeros(3 * D)
    expected_weight = qkv.weight @ (torch.eye(D) + scale * matrix)
    expected_bias = bias + scale * qkv.weight @ offset
    before = backbone(images(4))  # eval mode: merge is for inference, dropout off
    adapter.merge()
    torch.testing.assert_close(backbone(images(4)), before, atol=1e-5, rtol=1e-5)
    merged_qkv = backbone.site("qkv", 0)
    assert type(merged_qkv) is nn.Linear and type(backbone.site("mlp_in", 1)) is nn.Linear
    torch.testing.assert_close(merged_qkv.weight, expected_weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged_qkv.bias, expected_bias, atol=1e-5, rtol=1e-5)
    assert not merged_qkv.bias.requires_grad
    assert adapter.extra_inference_params() == 0


def test_train_mode_applies_dropout_between_a_and_b():
    _, backbone, _ = randomised({"dropout": 0.5})
    wrapper = backbone.site("qkv", 0)
    x = torch.randn(2, 5, D)
    seen = []
    wrapper.adapter.dropout.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[-1]))
    torch.manual_seed(3)
    train_out = wrapper.train()(x)
    assert seen == [8]  # on the hidden width, between A and B
    assert not torch.allclose(train_out, wrapper.eval()(x))


def test_attn_only_variant():
    torch.manual_seed(0)
    adapter = build_adapter("repadapter", load_backbone("vit_tiny_test"), {"sites": "qkv"})
    assert isinstance(adapter.backbone.site("qkv", 0), RepAdapterLinear)
    assert type(adapter.backbone.site("mlp_in", 0)) is nn.Linear


@pytest.mark.parametrize("options,bad", [
    ({"hidden_dim": 0}, "hidden_dim=0"),
    ({"groups": 3}, "groups=3"),
    ({"groups": 0}, "groups=0"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"sites": ("mlp_out",)}, "'mlp_out'"),
    ({"b_norm_weight": -1.0}, "b_norm_weight=-1.0"),
])
def test_config_errors_name_the_value(options, bad):
    with pytest.raises(AdaptbenchError, match=bad):
        RepAdapterConfig(**options)


def test_groups_must_divide_the_width():
    with pytest.raises(AdaptbenchError, match="groups=3.*width 32"):
        build_adapter("repadapter", load_backbone("vit_tiny_test"), {"hidden_dim": 6, "groups": 3})


# -- the optional penalty on B (official side branch "Update LossRep") ----------------------------

def loss_context() -> LossContext:
    def no_forward(inputs):
        raise AssertionError("the penalty needs no forward")
    return LossContext(inputs=images(), outputs=torch.zeros(2, 5), targets=torch.tensor([0, 1]),
                       loss=torch.tensor(0.0), forward=no_forward, step=0)


def test_b_norm_penalty_is_lambda_times_the_norms_of_b_weight_and_bias():
    """LossRep: lambda * sum over adapters of torch.norm(conv_B.weight) + torch.norm(conv_B.bias)."""
    _, _, adapter = randomised({"b_norm_weight": 0.25})
    params = adapter.trainable_parameters()
    b_tensors = [p for n, p in params.items() if n.endswith((".B.weight", ".B.bias"))]
    assert len(b_tensors) == 2 * 2 * 2  # 2 blocks x (qkv, mlp_in) x (weight, bias)
    term = adapter.extra_loss(loss_context())
    assert list(term) == ["b_norm"]
    by_hand = 0.25 * sum(math.sqrt(sum(float(v) ** 2 for v in p.detach().flatten())) for p in b_tensors)
    assert term["b_norm"].item() == pytest.approx(by_hand, rel=1e-6)
    term["b_norm"].backward()
    for name, param in params.items():
        if name.endswith((".B.weight", ".B.bias")):
            torch.testing.assert_close(param.grad, 0.25 * param.detach() / param.detach().norm())
        else:
            assert param.grad is None, name  # A is not penalised


def test_b_norm_penalty_is_off_by_default_and_harmless_at_zero_init():
    _, _, off = randomised({})
    assert off.extra_loss(loss_context()) == {}
    torch.manual_seed(0)
    adapter = build_adapter("repadapter", load_backbone("vit_tiny_test"), {"b_norm_weight": 1.0})
    term = adapter.extra_loss(loss_context())["b_norm"]
    term.backward()  # B = 0 at init: the norm's subgradient there is 0, not NaN
    assert term.item() == 0.0
    assert all(torch.count_nonzero(p.grad) == 0 for n, p in adapter.trainable_parameters().items() if ".B." in n)
