"""Backbones: the canonical anatomy keeps timm's maths; weights load from files or fail fast."""

from __future__ import annotations

import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from adaptbench.backbones import BLOCK_SITES, load_backbone
from adaptbench.backbones import timm_weights as weights_module
from adaptbench.errors import AdaptbenchError

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def plain_timm(seed: int = 0, **overrides):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **{**TINY, **overrides}).eval()


def test_canonical_blocks_compute_what_timm_computes():
    backbone = load_backbone("vit_tiny_test").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone.forward_features(x), plain_timm().forward_features(x), atol=0, rtol=0)
    torch.testing.assert_close(backbone(x), plain_timm()(x), atol=0, rtol=0)


def test_mean_pooling_backbone_matches_timm_head_input():
    backbone = load_backbone("vit_tiny_test_reg").eval()
    reference = plain_timm(reg_tokens=2, class_token=False, global_pool="avg", no_embed_class=True,
                           init_values=1e-1, qkv_bias=False)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone(x), reference(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["vit_tiny_test", "vit_tiny_test_reg"])
def test_every_site_resolves(name):
    backbone = load_backbone(name)
    anatomy = backbone.anatomy
    assert anatomy.num_blocks == 2 and anatomy.embed_dim == 32 and anatomy.grid == (4, 4)
    for site in BLOCK_SITES:
        assert len(list(backbone.iter_sites(site))) == 2
    assert backbone.site("qkv", 0).out_features == 96
    assert backbone.site("mlp_in", 1).out_features == 64
    for site in ("patch_embed", "tokens", "final_norm"):
        backbone.site(site)
    with pytest.raises(AdaptbenchError, match="has no block site"):
        backbone.site("qkvv", 0)
    with pytest.raises(AdaptbenchError, match="out of range"):
        backbone.site("qkv", 5)


def test_prefix_tokens_are_counted():
    assert load_backbone("vit_tiny_test").anatomy.num_prefix_tokens == 1
    reg = load_backbone("vit_tiny_test_reg")
    assert reg.anatomy.num_prefix_tokens == 2 and not reg.anatomy.has_class_token
    with pytest.raises(AdaptbenchError, match="no class token"):
        reg(torch.randn(1, 3, 32, 32), pool="cls")


def test_backbone_is_frozen_and_random_weights_are_reproducible():
    a, b, c = load_backbone("vit_tiny_test"), load_backbone("vit_tiny_test"), load_backbone("vit_tiny_test", weights="random:1")
    assert not any(p.requires_grad for p in a.parameters())
    assert a.weights_id == b.weights_id != c.weights_id


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_from_a_local_file(tmp_path, suffix):
    source = plain_timm(seed=5)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    backbone = load_backbone("timm:vit_tiny_patch16_224", weights=str(path), **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(backbone(x), source(x), atol=0, rtol=0)
    assert backbone.weights_source == f"file:{path}"


def test_missing_weight_file_is_named():
    with pytest.raises(AdaptbenchError, match="does not exist"):
        load_backbone("vit_tiny_test", weights="/nowhere/w.safetensors")
    with pytest.raises(AdaptbenchError, match="expected 'pretrained', 'random'"):
        load_backbone("vit_tiny_test", weights="/nowhere/w.txt")


def test_offline_without_cached_weights_fails_fast_naming_the_place(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    started = time.monotonic()
    with pytest.raises(AdaptbenchError) as err:
        load_backbone("timm:vit_base_patch16_224.augreg_in21k")
    assert time.monotonic() - started < 30
    message = str(err.value)
    assert "\n" not in message
    assert "timm/vit_base_patch16_224.augreg_in21k" in message and "--weights" in message


def test_unreachable_hub_is_detected_in_seconds(monkeypatch):
    """With offline mode not declared, a closed endpoint is seen as unreachable at once."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.delenv("ADAPTBENCH_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "https://127.0.0.1:9")
    monkeypatch.setattr(weights_module, "HUB_PROBE_TIMEOUT_S", 1.0)
    started = time.monotonic()
    assert weights_module.hub_reachable() is False
    assert time.monotonic() - started < 5


def test_cached_hub_weights_are_used_offline(tmp_path, monkeypatch):
    """A file in the HF cache layout is found without any network."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--timm--vit_tiny_patch16_224.augreg_in21k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (cache / "models--timm--vit_tiny_patch16_224.augreg_in21k" / "refs").mkdir()
    (cache / "models--timm--vit_tiny_patch16_224.augreg_in21k" / "refs" / "main").write_text("abc")
    source = plain_timm(seed=3, img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, snapshot / "model.safetensors")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    plan = weights_module.resolve_timm_weights("vit_tiny_patch16_224.augreg_in21k", None)
    assert plan.source.startswith("cache:") and plan.source.endswith("model.safetensors")


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(AdaptbenchError, match="did you mean 'vit_micro'"):
        load_backbone("vit_mikro")


def test_blocks_are_registered_once():
    """The canonical blocks live once, in timm's model: no second copy in state_dict or the hash."""
    backbone = load_backbone("vit_tiny_test")
    keys = list(backbone.state_dict())
    assert not [k for k in keys if k.startswith("_blocks")]
    storages = [t.data_ptr() for t in backbone.state_dict().values()]
    assert len(storages) == len(set(storages))
    assert len(keys) == len(plain_timm().state_dict())


def test_bare_timm_names_go_through_the_family():
    with pytest.raises(AdaptbenchError, match="unknown backbone 'vit_base_patch16_224'"):
        load_backbone("vit_base_patch16_224")
    assert load_backbone("timm:vit_tiny_patch16_224", weights="random", **TINY).anatomy.embed_dim == 32


def test_timm_blocks_are_accepted_by_class_not_by_attribute_names():
    """timm's SAM blocks carry exactly the ViT block's part names but partition windows in
    their forward: they are refused, not silently rebuilt as global attention."""
    with pytest.raises(AdaptbenchError, match="not a VisionTransformer|not supported"):
        load_backbone("timm:samvit_base_patch16", weights="random", img_size=64)


def test_unknown_timm_model_is_one_line():
    with pytest.raises(AdaptbenchError, match="unknown timm model 'vit_nope'") as err:
        load_backbone("timm:vit_nope")
    assert "\n" not in str(err.value)


def test_sites_a_backbone_lacks_are_refused_by_name():
    backbone = load_backbone("vit_tiny_test")
    assert "neck" not in backbone.anatomy.global_sites
    with pytest.raises(AdaptbenchError, match="has no backbone-wide site 'neck'"):
        backbone.site("neck")


def test_qkv_sub_sites_are_thirds_of_the_fused_linear():
    backbone = load_backbone("vit_tiny_test")
    assert [backbone.target_rows(part, 0) for part in ("q", "k", "v")] == [
        ("qkv", slice(0, 32)), ("qkv", slice(32, 64)), ("qkv", slice(64, 96))]
    assert backbone.target_rows("mlp_in", 1) == ("mlp_in", slice(0, 64))


def test_dense_features_at_two_resolutions():
    backbone = load_backbone("vit_tiny_test", dynamic_img_size=True).eval()
    for size in (32, 48):
        dense = backbone.forward_dense(torch.randn(2, 3, size, size), blocks=(0, -1))
        grid = size // 8
        assert dense.final.shape == (2, 32, grid, grid)
        assert set(dense.blocks) == {0, -1} and dense.blocks[0].shape == (2, 32, grid, grid)
        tokens = backbone.forward_features(torch.randn(2, 3, size, size))
        assert tokens.shape == (2, 1 + grid * grid, 32)


def test_geometry_is_published_only_during_a_forward():
    backbone = load_backbone("vit_tiny_test_reg")
    seen = []
    backbone.site("attn", 1).register_forward_hook(lambda *_: seen.append(backbone.geometry.current))
    backbone(torch.randn(3, 3, 32, 32))
    assert seen[0].batch == 3 and seen[0].grid == (4, 4) and seen[0].prefix == 2 and seen[0].layout == "BNC"
    with pytest.raises(AdaptbenchError, match="no backbone forward is in progress"):
        backbone.geometry.current


def test_backbone_anatomy_does_not_load_weights():
    from adaptbench.backbones import backbone_anatomy

    anatomy = backbone_anatomy("timm:vit_large_patch16_224")
    assert (anatomy.embed_dim, anatomy.num_blocks, anatomy.mlp_dim) == (1024, 24, 4096)


def test_a_deep_copy_keeps_its_own_sealed_parameters():
    """Benchmarks copy one loaded backbone per adapter: the copy's own tensors are its sealed ones."""
    import copy

    from adaptbench.adapters import build_adapter

    original = load_backbone("vit_tiny_test")
    clone = copy.deepcopy(original)
    assert all(clone.is_sealed(p) for p in clone.parameters())
    assert not any(clone.is_sealed(p) for p in original.parameters())
    assert len(build_adapter("bitfit", clone).trainable_parameters()) == len(
        build_adapter("bitfit", original).trainable_parameters()) > 0


def test_drop_path_matches_timms_drop_path_rate_on_every_family():
    # timm's drop_path_rate: block i of n drops each branch with rate * i / (n - 1)
    ours = load_backbone("vit_tiny_test", weights="random", options={"drop_path": 0.3}).train()
    reference = plain_timm(drop_path_rate=0.3, depth=len(ours.blocks))
    expected = [[getattr(b.drop_path1, "drop_prob", 0.0), getattr(b.drop_path2, "drop_prob", 0.0)]
                for b in reference.blocks]
    found = [[m.drop_prob for m in block.modules() if type(m).__name__ == "DropPath"] or [0.0, 0.0]
             for block in ours.blocks]
    assert found == [[0.0, 0.0], [0.3, 0.3]] and expected == [[0.0, 0.0], pytest.approx([0.3, 0.3])]
    images = torch.randn(4, 3, 32, 32)
    ours.eval()
    assert torch.equal(ours(images), load_backbone("vit_tiny_test", weights="random")(images))  # eval: no drop
    ours.train()
    torch.manual_seed(0)
    first = ours(images)
    torch.manual_seed(1)
    assert not torch.equal(first, ours(images))  # training: stochastic depth
    for name in ("clip_tiny_test", "sam_tiny_test"):
        backbone = load_backbone(name, weights="random", options={"drop_path": 0.1})
        assert any(type(m).__name__ == "DropPath" for m in backbone.blocks[-1].modules()), name


@pytest.mark.parametrize("normalization,mean,std", [
    ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("inception", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ("none", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
])
def test_normalization_replaces_the_backbones_mean_and_std(normalization, mean, std):
    default = load_backbone("clip_tiny_test", weights="random").data_config
    chosen = load_backbone("clip_tiny_test", weights="random", options={"normalization": normalization}).data_config
    assert (chosen.mean, chosen.std) == (mean, std)
    assert chosen.input_size == default.input_size and chosen.interpolation == default.interpolation
    same = load_backbone("clip_tiny_test", weights="random", options={"normalization": "backbone"}).data_config
    assert same == default


def test_unset_generic_options_leave_run_ids_as_they_were():
    from adaptbench.config import RunConfig
    from adaptbench.runner.train import cell_id, resolved_config

    plain = RunConfig(task="micro/digits", backbone="vit_micro", adapter="linear")
    assert "drop_path" not in resolved_config(plain)["backbone_options"]
    assert "normalization" not in resolved_config(plain)["backbone_options"]
    dropped = RunConfig(task="micro/digits", backbone="vit_micro", adapter="linear",
                        backbone_options={"drop_path": 0.1})
    assert cell_id(dropped) != cell_id(plain)
    assert resolved_config(dropped)["backbone_options"]["drop_path"] == 0.1
