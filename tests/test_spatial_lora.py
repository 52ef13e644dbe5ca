"""Spatial LoRA (ToonComposer's SLRA): per-site ranks on the spatial attention, and a video
block's temporal branch left exactly as it was (the temporal prior is kept).

No video backbone exists yet, so a tiny image backbone gets a ``temporal`` attention branch
(its own norm, qkv and proj) in every block, between the attention and the MLP branches, as
the anatomy describes a video block; it is a real anatomy site (``site("temporal", b)``), so
an adapter that wrapped branches indiscriminately would be caught. (The AIM-style case of a
temporal pass sharing the spatial attention module waits for the video issue.)
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from timm.models.vision_transformer import Attention
from torch import nn

from adaptbench.adapters import SiteWrapper, adapter_class, build_adapter
from adaptbench.adapters.lora import LoRALinear
from adaptbench.adapters.spatial_lora import SpatialLoRAConfig
from adaptbench.backbones import load_backbone
from adaptbench.backbones.anatomy import ResidualBranch, TransformerBlock
from adaptbench.cli import parse_adapter_args
from adaptbench.errors import AdaptbenchError
from adaptbench.adapters.accounting import parameter_report

from test_peft_equivalence import ATOL, DEPTH, RTOL, THIRDS, WIDTH, assert_far, images, randomise

RANKS = ("q=2", "k=4", "v=8", "attn_out=3")
ALPHA = 8.0


def temporal_backbone(name: str = "vit_tiny_test"):
    """A tiny backbone whose every block gets a seeded ``temporal`` attention branch between
    its attention and MLP branches: a block is an ordered set of named branches, so the
    anatomy takes the new branch as a site without any edit (as a video family will)."""
    backbone = load_backbone(name).eval()
    torch.manual_seed(123)
    for index, block in enumerate(backbone.blocks):
        temporal = ResidualBranch(nn.LayerNorm(WIDTH), Attention(WIDTH, num_heads=2, qkv_bias=True))
        backbone.blocks[index] = TransformerBlock(
            {"attn": block.branches["attn"], "temporal": temporal, "mlp": block.branches["mlp"]})
    backbone.anatomy.branches = ("attn", "temporal", "mlp")
    backbone.seal_weights()
    return backbone.eval()


def temporal_modules(backbone) -> list[nn.Module]:
    return [backbone.site("temporal", index) for index in range(backbone.anatomy.num_blocks)]


def adapted_temporal(ranks=RANKS, seed: int = 3):
    backbone = temporal_backbone()
    original = copy.deepcopy(backbone)
    adapter = build_adapter("spatial_lora", backbone, {"ranks": ranks, "alpha": ALPHA})
    return backbone, original, adapter, randomise(adapter, seed)


def by_hand(original, params, ranks: dict[str, int]):
    """The frozen model with W_p += (alpha / r_p) B_p A_p on each listed spatial site."""
    reference = copy.deepcopy(original)
    with torch.no_grad():
        for block in range(DEPTH):
            for part, rank in ranks.items():
                site = "attn_out" if part == "attn_out" else "qkv"
                rows = slice(None) if part == "attn_out" else THIRDS[part]
                a, b = params[f"blocks.{block}.{site}.lora_A.{part}"], params[f"blocks.{block}.{site}.lora_B.{part}"]
                reference.site(site, block).weight[rows] += (ALPHA / rank) * (b @ a)
    return reference


# -- the temporal prior is kept -----------------------------------------------------------

def test_no_temporal_module_is_wrapped_or_declared():
    backbone, original, adapter, params = adapted_temporal()
    before = temporal_modules(original)
    for block, temporal in enumerate(temporal_modules(backbone)):
        assert not any(isinstance(m, SiteWrapper) for m in temporal.modules()), f"block {block}"
        assert type(temporal.core.qkv) is nn.Linear and type(temporal.core.proj) is nn.Linear
        assert [type(m) for m in temporal.modules()] == [type(m) for m in before[block].modules()]
    temporal_ids = {id(p) for t in temporal_modules(backbone) for p in t.parameters()}
    assert not any("temporal" in name for name in params)
    assert not temporal_ids & {id(p) for p in params.values()}
    assert not any(p.requires_grad for t in temporal_modules(backbone) for p in t.parameters())
    # while the spatial sites of the same blocks are adapted
    assert all(isinstance(backbone.site(s, b), LoRALinear) for b in range(DEPTH) for s in ("qkv", "attn_out"))


def test_temporal_tensors_get_no_gradient_and_keep_their_outputs():
    """After training steps on the spatial adapter, temporal weights are bit-for-bit the
    frozen ones, never got a gradient, and map the same input to the same output."""
    backbone, original, adapter, params = adapted_temporal()
    tokens = torch.randn(2, 17, WIDTH, generator=torch.Generator().manual_seed(5))
    optimizer = torch.optim.SGD(list(params.values()), lr=0.1)
    for step in range(2):
        optimizer.zero_grad()
        backbone.forward_features(images(step)).square().mean().backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in params.values())
    with torch.no_grad():
        for adapted, frozen in zip(temporal_modules(backbone), temporal_modules(original)):
            for (name, p), (_, q) in zip(adapted.named_parameters(), frozen.named_parameters()):
                assert p.grad is None, f"temporal {name} received a gradient"
                assert torch.equal(p, q), f"temporal {name} changed"
            torch.testing.assert_close(adapted(tokens), frozen(tokens), atol=0, rtol=0)


def test_temporal_backbone_forward_is_the_spatial_formula():
    """The whole video-style model equals the frozen one with only its spatial q/k/v/out
    weights updated by hand: the temporal branch runs, unchanged."""
    backbone, original, _, params = adapted_temporal()
    reference = by_hand(original, params, SpatialLoRAConfig(ranks=RANKS).rank_map())
    x = images(4)
    with torch.no_grad():
        ours, expected, base = backbone.forward_features(x), reference.forward_features(x), original.forward_features(x)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)
    assert_far(ours, base)


# -- per-site ranks, formula, merge -------------------------------------------------------

def test_per_site_rank_shapes_and_scaling():
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("spatial_lora", backbone, {"ranks": RANKS, "alpha": ALPHA})
    params = adapter.trainable_parameters()
    expected = {}
    for block in range(DEPTH):
        for part, rank in {"q": 2, "k": 4, "v": 8, "attn_out": 3}.items():
            site = "attn_out" if part == "attn_out" else "qkv"
            expected[f"blocks.{block}.{site}.lora_A.{part}"] = (rank, WIDTH)
            expected[f"blocks.{block}.{site}.lora_B.{part}"] = (WIDTH, rank)
            assert backbone.site(site, block).scaling[part] == ALPHA / rank
    assert {name: tuple(p.shape) for name, p in params.items()} == expected
    assert parameter_report(adapter).trainable == DEPTH * sum(2 * r * WIDTH for r in (2, 4, 8, 3))


def test_only_listed_sites_are_adapted():
    """ranks=q=4,v=8 from the command line: q and v thirds only, attn_out left alone."""
    options = parse_adapter_args(["ranks=q=4,v=8", "alpha=4"])
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("spatial_lora", backbone, options)
    assert adapter.config.ranks == ("q=4", "v=8") and adapter.config.targets == ("q", "v")
    for block in range(DEPTH):
        assert set(backbone.site("qkv", block).slices) == {"q", "v"}
        assert type(backbone.site("attn_out", block)) is nn.Linear
        assert backbone.site("qkv", block).lora_A["q"].shape == (4, WIDTH)
        assert backbone.site("qkv", block).lora_A["v"].shape == (8, WIDTH)


@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "vit_tiny_test_reg"])
def test_forward_and_merge_follow_the_formula(backbone_name):
    """W_p' = W_p + (alpha / r_p) B_p A_p per site; the k third is exactly the frozen one when
    k is not listed; merge() folds exactly that into the linears."""
    ranks = ("q=2", "v=8", "attn_out=4")
    backbone = load_backbone(backbone_name).eval()
    original = copy.deepcopy(backbone)
    adapter = build_adapter("spatial_lora", backbone, {"ranks": ranks, "alpha": ALPHA})
    params = randomise(adapter, 11)
    reference = by_hand(original, params, {"q": 2, "v": 8, "attn_out": 4})
    x = images(8)
    tokens = torch.randn(2, 17, WIDTH, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ours, expected = backbone.forward_features(x), reference.forward_features(x)
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)
        assert_far(ours, original.forward_features(x))
        k_rows = backbone.site("qkv", 0)(tokens)[..., THIRDS["k"]]
        torch.testing.assert_close(k_rows, original.site("qkv", 0)(tokens)[..., THIRDS["k"]], atol=0, rtol=0)
        adapter.merge()
        torch.testing.assert_close(backbone.forward_features(x), ours, atol=ATOL, rtol=RTOL)
    for block in range(DEPTH):
        for site in ("qkv", "attn_out"):
            merged = backbone.site(site, block)
            assert type(merged) is nn.Linear
            torch.testing.assert_close(merged.weight, reference.site(site, block).weight, atol=ATOL, rtol=RTOL)


# -- defaults and validation --------------------------------------------------------------

def test_defaults():
    """All four spatial attention projections at rank 8, scale alpha / r = 1 (the official
    SLRA branch is added unscaled); every block; mergeable and the identity at init."""
    config = SpatialLoRAConfig()
    assert dataclasses.asdict(config) == {
        "ranks": ("q=8", "k=8", "v=8", "attn_out=8"), "alpha": 8.0, "dropout": 0.0, "blocks": None}
    assert config.targets == ("q", "k", "v", "attn_out")
    cls = adapter_class("spatial_lora")
    assert cls.mergeable and cls.identity_at_init


@pytest.mark.parametrize("ranks,named", [
    ("q=4,temporal=8", r"entry 'temporal=8': site 'temporal' is not a spatial attention site"),
    ("qkv=4", r"entry 'qkv=4': site 'qkv' is not a spatial attention site"),
    ("mlp_in=4", r"entry 'mlp_in=4': site 'mlp_in'"),
    ("q=0", r"entry 'q=0': expected site=rank with an integer rank >= 1"),
    ("q=four", r"entry 'q=four': expected site=rank"),
    ("v", r"entry 'v': expected site=rank"),
    ("q=4,q=8", r"entry 'q=8': site 'q' is given twice"),
    ("", r"option ranks: expected at least one site=rank"),
])
def test_validation_names_the_bad_site_or_rank(ranks, named):
    with pytest.raises(AdaptbenchError, match=named):
        SpatialLoRAConfig.from_dict({"ranks": ranks}, adapter="spatial_lora")


@pytest.mark.parametrize("option,value,named", [
    ("alpha", "0", "spatial_lora option alpha=0.0"),
    ("dropout", "1", "spatial_lora option dropout=1.0"),
    ("r", "8", "has no option 'r'"),
])
def test_other_options_are_validated(option, value, named):
    with pytest.raises(AdaptbenchError, match=named):
        SpatialLoRAConfig.from_dict({option: value}, adapter="spatial_lora")


def test_per_site_ranks_survive_a_checkpoint(tmp_path):
    """The ranks are part of the saved config: loading rebuilds the same shapes and values."""
    from adaptbench.adapters.checkpoint import load_adapter, save_adapter

    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("spatial_lora", backbone, parse_adapter_args(["ranks=q=2,attn_out=5", "alpha=3"]))
    params = randomise(adapter, 21)
    loaded, _ = load_adapter(load_backbone("vit_tiny_test"), save_adapter(adapter, tmp_path / "slra.safetensors"))
    assert loaded.config == adapter.config and loaded.config.rank_map() == {"q": 2, "attn_out": 5}
    restored = loaded.trainable_parameters()
    assert sorted(restored) == sorted(params)
    for name, param in params.items():
        assert torch.equal(restored[name], param), name
