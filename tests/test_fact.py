"""FacT beyond the conformance suite: the formula by hand, shared U / V, merge, defaults; FacT-TK
(``variant: tk``, which the conformance suite does not build: it runs each adapter's defaults)
by its formula, init, merge, parameter count and a train / save / load round trip."""

from __future__ import annotations

import dataclasses

import copy

import pytest
import torch
from torch import nn

from adaptbench.adapters import build_adapter
from adaptbench.adapters.fact import FACT_TARGETS, FacT, FacTConfig, FacTLinear, _chunks
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.adapters.accounting import parameter_report
from adaptbench.adapters.checkpoint import load_adapter, save_adapter
from helpers import images

D = 32  # vit_tiny_test: d = 32, MLP width 64 (two d-wide chunks), 2 blocks


def randomised(options: dict, backbone_name: str = "vit_tiny_test"):
    """A FacT-adapted tiny backbone whose factors (V included) are seeded random values."""
    torch.manual_seed(0)
    backbone = load_backbone(backbone_name)
    frozen = copy.deepcopy(backbone)
    adapter = build_adapter("fact", backbone, options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in adapter.trainable_parameters().values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return frozen.eval(), backbone.eval(), adapter  # eval after attaching: new wrappers start in train mode


def hand_increment(adapter, block: int, site: str, rank: int) -> torch.Tensor:
    """Delta W of one site written slice by slice: V C_ab U for every d x d chunk (a, b)."""
    params = adapter.trainable_parameters()
    u, v = params["shared.fact_U"], params["shared.fact_V"]
    linear = adapter.backbone.site(site, block).base_layer
    delta = torch.zeros_like(linear.weight)
    for part, chunks in fact_parts_of(site, linear).items():
        core = params[f"blocks.{block}.{site}.fact_core.{part}"]
        for a_local, a in enumerate(chunks):
            for b in range(linear.in_features // D):
                c_ab = core[a_local * rank:(a_local + 1) * rank, b * rank:(b + 1) * rank]
                delta[a * D:(a + 1) * D, b * D:(b + 1) * D] = v @ c_ab @ u
    return delta


def fact_parts_of(site: str, linear: nn.Linear) -> dict[str, range]:
    if site == "qkv":
        return {"q": range(0, 1), "k": range(1, 2), "v": range(2, 3)}
    return {site: range(linear.out_features // D)}


SITES = ("qkv", "attn_out", "mlp_in", "mlp_out")


def test_defaults_are_the_papers():
    config = FacTConfig()
    assert config.variant == "tt"
    assert config.rank is None and config.resolved_rank == 8  # official VTAB-1k configs: r in {8, 16}
    assert config.scale is None and config.resolved_scale == 1.0
    assert config.dropout == 0.1  # nn.Dropout(0.1) in fact_tt.py
    assert config.targets == ("q", "k", "v", "attn_out", "mlp_in", "mlp_out")
    assert config.blocks is None


def test_init_u_and_cores_random_v_zero():
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("fact", backbone)
    params = adapter.trainable_parameters()
    assert torch.count_nonzero(params["shared.fact_V"]) == 0
    assert params["shared.fact_U"].shape == (8, D) and params["shared.fact_U"].std() > 0
    core = params["blocks.0.mlp_in.fact_core.mlp_in"]
    assert core.shape == (2 * 8, 8) and core.abs().max() <= 1 / 8 ** 0.5  # nn.Linear(r, 2r) default bound
    assert params["blocks.0.mlp_out.fact_core.mlp_out"].shape == (8, 2 * 8)


@pytest.mark.parametrize("site", SITES)
def test_site_forward_is_the_formula(site):
    rank, scale = 4, 2.5
    _, backbone, adapter = randomised({"rank": rank, "scale": scale, "dropout": 0.0})
    wrapper = backbone.site(site, 1)
    linear = wrapper.base_layer
    x = torch.randn(2, 5, linear.in_features, generator=torch.Generator().manual_seed(2))
    expected = x @ (linear.weight + scale * hand_increment(adapter, 1, site, rank)).T + linear.bias
    torch.testing.assert_close(wrapper(x), expected, atol=1e-5, rtol=1e-5)


def test_model_forward_equals_backbone_with_hand_updated_weights():
    rank, scale = 4, 3.0
    frozen, backbone, adapter = randomised({"rank": rank, "scale": scale, "dropout": 0.0}, "vit_tiny_test_reg")
    with torch.no_grad():
        for block in range(2):
            for site in SITES:
                frozen.site(site, block).weight += scale * hand_increment(adapter, block, site, rank)
    torch.testing.assert_close(backbone(images()), frozen(images()), atol=1e-5, rtol=1e-5)


def test_u_and_v_are_shared_declared_once_and_counted_once():
    rank = 4
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("fact", backbone, {"rank": rank})
    shared = backbone.adapter_modules["fact"]
    wrappers = [m for m in backbone.modules() if isinstance(m, FacTLinear)]
    assert len(wrappers) == 2 * 4
    assert all(w.factors is shared for w in wrappers)
    names = list(adapter.trainable_parameters())
    assert [n for n in names if n.startswith("shared.")] == ["shared.fact_U", "shared.fact_V"]
    assert adapter.trainable_parameters()["shared.fact_U"] is shared.u
    # the backbone's state lists U and V once (owned by adapter_modules, not by each site)
    state = backbone.state_dict()
    assert [k for k, t in state.items() if t.data_ptr() == shared.u.data_ptr()] == ["adapter_modules.fact.u"]
    assert [k for k, t in state.items() if t.data_ptr() == shared.v.data_ptr()] == ["adapter_modules.fact.v"]
    # per block: q, k, v, o cores r x r; fc1 (d -> 2d) 2r x r; fc2 (2d -> d) r x 2r
    per_block = 4 * rank * rank + 2 * rank * rank + 2 * rank * rank
    assert parameter_report(adapter).trainable == 2 * D * rank + 2 * per_block


def test_shared_u_receives_gradient_from_every_block():
    _, backbone, adapter = randomised({"rank": 4, "dropout": 0.0, "blocks": (1,)})
    u = adapter.trainable_parameters()["shared.fact_U"]
    # Not .sum(): the final LayerNorm's output sums to zero per image, so its gradient is zero.
    backbone(images()).pow(2).sum().backward()
    only_block_1 = u.grad.clone()
    assert only_block_1.abs().max() > 1e-4
    _, backbone, adapter = randomised({"rank": 4, "dropout": 0.0})
    u = adapter.trainable_parameters()["shared.fact_U"]
    backbone(images()).pow(2).sum().backward()
    assert not torch.allclose(u.grad, only_block_1)  # block 0's sites add to the same tensor


def test_merge_is_exact_and_removes_the_shared_factors():
    rank, scale = 4, 2.0
    _, backbone, adapter = randomised({"rank": rank, "scale": scale})
    expected_qkv = backbone.site("qkv", 0).base_layer.weight + scale * hand_increment(adapter, 0, "qkv", rank)
    before = backbone(images(3))
    adapter.merge()
    torch.testing.assert_close(backbone(images(3)), before, atol=1e-5, rtol=1e-5)
    assert type(backbone.site("qkv", 0)) is nn.Linear
    torch.testing.assert_close(backbone.site("qkv", 0).weight, expected_qkv, atol=1e-6, rtol=1e-6)
    assert "fact" not in backbone.adapter_modules
    assert parameter_report(adapter).extra_inference == 0


def test_targets_restrict_the_updated_slices():
    _, backbone, adapter = randomised({"rank": 4, "targets": ("q", "v", "mlp_out"), "dropout": 0.0})
    assert sorted(adapter.trainable_parameters()) == sorted(
        ["shared.fact_U", "shared.fact_V"]
        + [f"blocks.{b}.qkv.fact_core.{p}" for b in range(2) for p in ("q", "v")]
        + [f"blocks.{b}.mlp_out.fact_core.mlp_out" for b in range(2)]
    )
    wrapper = backbone.site("qkv", 0)
    x = torch.randn(2, 3, D)
    delta = wrapper(x) - wrapper.base_layer(x)
    assert torch.count_nonzero(delta[..., D:2 * D]) == 0  # k is untouched
    assert delta[..., :D].abs().sum() > 0 and delta[..., 2 * D:].abs().sum() > 0
    assert type(backbone.site("attn_out", 0)) is nn.Linear


def test_dropout_sits_between_core_and_v():
    _, backbone, _ = randomised({"rank": 4, "dropout": 0.5})
    wrapper = backbone.site("mlp_in", 0)  # U x is r wide, the core's output 2r, V's output 2d
    seen = []
    wrapper.dropout.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[-1]))
    wrapper.train()(torch.randn(2, 3, D))
    assert seen == [2 * 4]  # dropout acts on the core output, before V lifts it to d


def test_widths_not_multiple_of_d_are_refused():
    with pytest.raises(AdaptbenchError, match="50 output features"):
        _chunks(50, D, "output")
    # a backbone whose MLP width is no multiple of d (ViT-bigG-14: 8192 / 1664) is n/a, not a failure
    anatomy = dataclasses.replace(load_backbone("vit_tiny_test").anatomy, mlp_dim=50)
    reason = FacT.unsupported(anatomy, FacTConfig(targets=("q", "mlp_in")))
    assert "multiple of the embedding width d = 32" in reason and "50" in reason
    assert FacT.unsupported(anatomy, FacTConfig(targets=("q", "v"))) is None


@pytest.mark.parametrize("options,bad", [
    ({"rank": 0}, "rank=0"),
    ({"scale": 0.0}, "scale=0.0"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"targets": ("q", "fc1")}, "'fc1'"),
    ({"targets": ("q", "q")}, "repeated"),
    ({"variant": "tucker"}, "fact option variant='tucker': expected one of \\('tt', 'tk'\\)"),
    ({"variant": "TK"}, "variant='TK'"),
    ({"variant": "tk", "rank": 0}, "rank=0"),
])
def test_config_errors_name_the_value(options, bad):
    with pytest.raises(AdaptbenchError, match=bad) as info:
        FacTConfig(**options)
    assert "\n" not in str(info.value)


def test_cli_strings_are_coerced():
    config = FacTConfig.from_dict({"rank": "16", "scale": "10", "targets": "q,v"}, adapter="fact")
    assert (config.rank, config.scale, config.targets) == (16, 10.0, ("q", "v"))
    assert set(config.targets) <= set(FACT_TARGETS)
    tk = FacTConfig.from_dict({"variant": "tk", "rank": "none", "scale": "none"}, adapter="fact")
    assert (tk.variant, tk.rank, tk.scale, tk.resolved_rank, tk.resolved_scale) == ("tk", None, None, 32, 10.0)
    with pytest.raises(AdaptbenchError, match="option scale='ten': expected a number or none"):
        FacTConfig.from_dict({"scale": "ten"}, adapter="fact")


# ================================================================================================
# FacT-TK: Delta W_j = s * V (C x_3 P_j) U, C r x r x r and P r x slices shared by every block
# ================================================================================================
# vit_tiny_test's slices per block, in the official FacTp order: q, k, v, o, fc1's chunks, fc2's
# chunks (fc1: d -> 2d, 2 output chunks; fc2: 2d -> d, 2 input chunks): 8 per block (12 on ViT-B)
TINY_SLICES = 8
TK_SLICES = {  # slice -> (site, output chunk, input chunk, offset of its P column in the block)
    "q": ("qkv", 0, 0, 0), "k": ("qkv", 1, 0, 1), "v": ("qkv", 2, 0, 2), "o": ("attn_out", 0, 0, 3),
    "fc1.0": ("mlp_in", 0, 0, 4), "fc1.1": ("mlp_in", 1, 0, 5),
    "fc2.0": ("mlp_out", 0, 0, 6), "fc2.1": ("mlp_out", 0, 1, 7),
}


def tk_slice_update(adapter, column: int, scale: float) -> torch.Tensor:
    """Delta W_j = s * V (C x_3 P_j) U, from the declared tensors alone (d x d)."""
    params = adapter.trainable_parameters()
    u, v = params["shared.fact_U"], params["shared.fact_V"]
    core, p = params["shared.fact_C"], params["shared.fact_P"]
    slice_core = torch.einsum("xyc,c->xy", core, p[:, column])  # C x_3 P_j
    return scale * v @ slice_core @ u


def tk_site_increment(adapter, block: int, site: str, scale: float) -> torch.Tensor:
    """The dense increment of a whole site, assembled slice by slice from the formula."""
    linear = adapter.backbone.site(site, block)
    linear = getattr(linear, "base_layer", linear)
    delta = torch.zeros_like(linear.weight)
    for name, (slice_site, a, b, offset) in TK_SLICES.items():
        if slice_site == site:
            delta[a * D:(a + 1) * D, b * D:(b + 1) * D] = tk_slice_update(adapter, TINY_SLICES * block + offset, scale)
    return delta


def test_tk_defaults_follow_the_official_tk_configs():
    config = FacTConfig(variant="tk")
    assert (config.resolved_rank, config.resolved_scale) == (32, 10.0)  # configs/tk: r 32 on 13/19 tasks, s 10 on 9
    assert FacTConfig(variant="tk", rank=16, scale=0.1).resolved_rank == 16
    assert FacTConfig(variant="tk", rank=16, scale=0.1).resolved_scale == 0.1
    assert (FacTConfig(rank=16).resolved_rank, FacTConfig(scale=10.0).resolved_scale) == (16, 10.0)  # tt


def test_tk_declares_the_shared_factors_once_and_its_increment_is_zero_at_init():
    rank = 4
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test").eval()
    reference = copy.deepcopy(backbone)
    adapter = build_adapter("fact", backbone, {"variant": "tk", "rank": rank})
    params = adapter.trainable_parameters()
    assert list(params) == ["shared.fact_U", "shared.fact_V", "shared.fact_C", "shared.fact_P"]
    shared = backbone.adapter_modules["fact"]
    assert params["shared.fact_C"] is shared.core and params["shared.fact_P"] is shared.coefficients
    assert params["shared.fact_C"].shape == (rank, rank, rank)
    assert params["shared.fact_P"].shape == (rank, 2 * TINY_SLICES)  # one r-vector per d x d slice
    # official init: V = 0; U nn.Linear's default; C and P Xavier-uniform (non-zero, within the bound)
    assert torch.count_nonzero(params["shared.fact_V"]) == 0
    assert params["shared.fact_U"].abs().max() <= 1 / D ** 0.5 and params["shared.fact_U"].std() > 0
    assert 0 < params["shared.fact_C"].abs().max() <= (6 / (2 * rank * rank)) ** 0.5
    assert 0 < params["shared.fact_P"].abs().max() <= (6 / (rank + 2 * TINY_SLICES)) ** 0.5
    # the sites hold no parameter of their own: their cores are computed from C and P
    wrappers = [m for m in backbone.modules() if isinstance(m, FacTLinear)]
    assert len(wrappers) == 2 * 4 and all(len(w.cores) == 0 for w in wrappers)
    x = torch.randn(2, 3, 2 * D)
    assert torch.count_nonzero(backbone.site("mlp_out", 1).delta(x)) == 0
    assert torch.equal(backbone(images()), reference(images()))


@pytest.mark.parametrize("name", list(TK_SLICES))
def test_tk_slice_increment_is_the_formula(name):
    """Only slice j's P column non-zero: the site's output moves by x Delta W_j^T in its chunk
    (the official column order), by nothing elsewhere."""
    rank, scale, block = 4, 2.5, 1
    site, a, b, offset = TK_SLICES[name]
    _, backbone, adapter = randomised({"variant": "tk", "rank": rank, "scale": scale, "dropout": 0.0})
    column = TINY_SLICES * block + offset
    with torch.no_grad():
        p = adapter.trainable_parameters()["shared.fact_P"]
        keep = p[:, column].clone()
        p.zero_()
        p[:, column] = keep
    wrapper = backbone.site(site, block)
    linear = wrapper.base_layer
    x = torch.randn(2, 5, linear.in_features, generator=torch.Generator().manual_seed(2))
    expected = torch.zeros(2, 5, linear.out_features)
    update = tk_slice_update(adapter, column, scale)
    assert update.abs().max() > 1e-3
    expected[..., a * D:(a + 1) * D] = x[..., b * D:(b + 1) * D] @ update.T
    torch.testing.assert_close(wrapper(x) - linear(x), expected, atol=1e-5, rtol=1e-5)


def test_tk_model_forward_equals_backbone_with_hand_updated_weights():
    rank, scale = 4, 3.0
    frozen, backbone, adapter = randomised({"variant": "tk", "rank": rank, "scale": scale, "dropout": 0.0},
                                           "vit_tiny_test_reg")
    with torch.no_grad():
        for block in range(2):
            for site in SITES:
                frozen.site(site, block).weight += tk_site_increment(adapter, block, site, scale)
    torch.testing.assert_close(backbone(images()), frozen(images()), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(backbone(images()), load_backbone("vit_tiny_test_reg").eval()(images()), atol=1e-3)


def test_tk_merge_is_exact_and_removes_the_shared_factors():
    rank, scale = 4, 2.0
    _, backbone, adapter = randomised({"variant": "tk", "rank": rank, "scale": scale})
    expected = {site: backbone.site(site, 1).base_layer.weight + tk_site_increment(adapter, 1, site, scale)
                for site in SITES}
    before = backbone(images(3))
    adapter.merge()
    torch.testing.assert_close(backbone(images(3)), before, atol=1e-5, rtol=1e-5)
    for site in SITES:
        assert type(backbone.site(site, 1)) is nn.Linear
        torch.testing.assert_close(backbone.site(site, 1).weight, expected[site], atol=1e-6, rtol=1e-6)
    assert "fact" not in backbone.adapter_modules
    assert parameter_report(adapter).extra_inference == 0


@pytest.mark.parametrize("rank,count", [(16, 30_976), (32, 86_528), (None, 86_528)])
def test_tk_parameter_count_on_vit_b(rank, count):
    """2 d r + 144 r + r^3 on ViT-B/16 (d = 768, 12 blocks x 12 slices), built on the meta device."""
    options = {"variant": "tk"} if rank is None else {"variant": "tk", "rank": rank}
    r = rank or 32
    with torch.device("meta"):
        adapter = build_adapter("fact", load_backbone("timm:vit_base_patch16_224", weights="random"), options)
    assert count == 2 * 768 * r + 144 * r + r ** 3
    assert adapter.trainable_parameters()["shared.fact_P"].shape == (r, 144)
    assert adapter.trainable_count() == parameter_report(adapter).trainable == count
    assert parameter_report(adapter).extra_inference_merged == 0


def test_tk_coefficients_count_the_adapted_slices():
    """One P column per adapted d x d slice: 12 per block of a 4x-MLP ViT, fewer when restricted."""
    with torch.device("meta"):
        three = build_adapter("fact", load_backbone("timm:vit_base_patch16_224", weights="random", depth=3),
                              {"variant": "tk", "rank": 8})
        restricted = build_adapter("fact", load_backbone("timm:vit_base_patch16_224", weights="random"),
                                   {"variant": "tk", "rank": 8, "targets": ("q", "v", "mlp_out"), "blocks": (0, 5)})
    assert three.trainable_parameters()["shared.fact_P"].shape == (8, 3 * 12)
    assert three.trainable_count() == 2 * 768 * 8 + 36 * 8 + 8 ** 3
    assert restricted.trainable_parameters()["shared.fact_P"].shape == (8, 2 * (1 + 1 + 4))
    _, backbone, adapter = randomised({"variant": "tk", "rank": 4, "blocks": (1,)})
    assert adapter.trainable_count() == 2 * D * 4 + TINY_SLICES * 4 + 4 ** 3


def test_tk_trains_every_factor_and_survives_a_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("fact", backbone, {"variant": "tk", "rank": 4})
    params = adapter.trainable_parameters()
    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    backbone.train()
    for step in range(3):
        optimizer.zero_grad()
        backbone(images(step)).pow(2).sum().backward()
        optimizer.step()
    for name, param in params.items():  # V moves first; U, C and P from the second step on
        assert not torch.equal(param.detach(), before[name]), name
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert {id(p) for p in backbone.parameters() if p.requires_grad} == {id(p) for p in params.values()}
    backbone.eval()
    path = save_adapter(adapter, tmp_path / "tk.safetensors")
    assert parameter_report(adapter).checkpoint_bytes == path.stat().st_size
    fresh = load_backbone("vit_tiny_test")
    loaded, _ = load_adapter(fresh, path)
    assert loaded.config == adapter.config and loaded.config.variant == "tk"
    torch.testing.assert_close(fresh.eval()(images(5)), backbone(images(5)), atol=0, rtol=0)
