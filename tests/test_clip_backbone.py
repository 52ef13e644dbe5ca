"""The clip: family: canonical open_clip image towers compute what open_clip computes, share its
weights without copying them, and resolve weights offline or fail fast with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import open_clip
import pytest
import torch
from open_clip.transformer import LayerScale, QuickGELU, VisionTransformer
from torch import nn

from adaptbench.adapters import build_adapter
from adaptbench.backbones import BLOCK_SITES, check_backbone_weights, load_backbone
from adaptbench.backbones.families import clip as clip_family
from adaptbench.backbones.families.clip import TINY_CONFIG, OpenClipViT, tiny_visual
from adaptbench.backbones.families.clip_names import check_clip_member, list_clip_family
from adaptbench.errors import AdaptbenchError
from helpers import images

TINY = {"clip_tiny_test": False, "clip_tiny_test_quickgelu": True}  # name -> QuickGELU + LayerScale
# a tiny full CLIP config, passed to open_clip.create_model through the clip: family's factory
TINY_CLIP = dict(vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16, mlp_ratio=2.0),
                 text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1), embed_dim=16)


def reference(name: str) -> nn.Module:
    return tiny_visual(TINY[name]).eval()


def canonical(quick_gelu: bool = False, **options) -> tuple[OpenClipViT, nn.Module]:
    """(a backbone made from a tiny tower, that very tower's original modules)."""
    visual = tiny_visual(quick_gelu)
    original = {"blocks": list(visual.transformer.resblocks), "conv1": visual.conv1, "proj": visual.proj}
    backbone = OpenClipViT("tiny", visual, "random:0", **options)
    backbone.seal_weights()
    return backbone.eval(), original


# -- the maths ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TINY))
def test_canonical_forward_is_encode_image(name):
    backbone = load_backbone(name).eval()
    x = images()
    with torch.no_grad():
        expected = reference(name)(x)
        got = backbone(x)
    assert got.shape == (2, 16) == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(TINY))
def test_dropped_projection_gives_the_pooled_features(name):
    backbone = load_backbone(name, keep_projection=False).eval()
    tower = reference(name)
    tower.proj = None  # open_clip then returns the pooled, normed class token
    x = images(1)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), tower(x), atol=1e-5, rtol=0)
    assert backbone.anatomy.feature_dim == 32
    assert not any("proj" == key.rsplit(".", 1)[-1] for key in backbone.state_dict())


def test_block_maps_match_open_clip_intermediates():
    backbone = load_backbone("clip_tiny_test_quickgelu").eval()
    x = images(2)
    with torch.no_grad():
        dense = backbone.forward_dense(x, blocks=(0,))
        expected = reference("clip_tiny_test_quickgelu").forward_intermediates(x, indices=[0], intermediates_only=True)
    assert dense.blocks[0].shape == (2, 32, 4, 4) and dense.final.shape == (2, 32, 4, 4)
    torch.testing.assert_close(dense.blocks[0], expected["image_intermediates"][0], atol=1e-5, rtol=0)


def test_quickgelu_and_layerscale_are_kept():
    backbone = load_backbone("clip_tiny_test_quickgelu")
    for _, block in backbone.iter_sites("block"):
        assert isinstance(block.branches.mlp.core.act, QuickGELU)
        assert isinstance(block.branches.attn.post, LayerScale) and isinstance(block.branches.mlp.post, LayerScale)
    assert isinstance(load_backbone("clip_tiny_test").blocks[0].branches.mlp.core.act, nn.GELU)


# -- no copies ------------------------------------------------------------------------------
def test_sites_are_open_clips_own_modules_and_parameters():
    backbone, original = canonical()
    for index, block in enumerate(original["blocks"]):
        qkv = backbone.site("qkv", index)
        assert qkv.weight is block.attn.in_proj_weight and qkv.bias is block.attn.in_proj_bias
        assert backbone.site("attn_out", index) is block.attn.out_proj
        assert backbone.site("mlp_in", index) is block.mlp.c_fc and backbone.site("mlp_out", index) is block.mlp.c_proj
        assert backbone.site("norm1", index) is block.ln_1 and backbone.site("norm2", index) is block.ln_2
    assert backbone.site("patch_embed").proj is original["conv1"]
    assert backbone.visual.proj is original["proj"]


def test_state_dict_holds_every_tensor_once():
    visual = tiny_visual()
    numel = sum(p.numel() for p in visual.parameters())
    backbone = OpenClipViT("tiny", visual, "random:0")
    state = backbone.state_dict()
    pointers = [tensor.data_ptr() for tensor in state.values()]
    assert len(pointers) == len(set(pointers))
    assert sum(tensor.numel() for tensor in state.values()) == numel
    assert not any("in_proj" in key or "attn.attn" in key for key in state)


# -- sites ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TINY))
def test_every_site_resolves(name):
    backbone = load_backbone(name)
    anatomy = backbone.anatomy
    assert (anatomy.family, anatomy.num_blocks, anatomy.embed_dim, anatomy.mlp_dim) == ("clip", 2, 32, 64)
    assert anatomy.grid == (4, 4) and anatomy.patch_size == (8, 8) and anatomy.feature_dim == 16
    assert anatomy.num_prefix_tokens == 1 and anatomy.has_class_token
    for site in BLOCK_SITES:
        assert len(list(backbone.iter_sites(site))) == 2
    qkv = backbone.site("qkv", 0)
    assert isinstance(qkv, nn.Linear) and qkv.out_features == 96
    assert backbone.target_rows("v", 0) == ("qkv", slice(64, 96))
    assert backbone.site("tokens") is backbone.visual.ln_pre and backbone.site("final_norm") is backbone.visual.ln_post
    assert isinstance(backbone.site("patch_embed").proj, nn.Conv2d)
    config = backbone.data_config
    assert config.input_size == (32, 32) and config.mean == clip_family.OPENAI_MEAN
    assert config.interpolation == "bicubic"


def test_frozen_and_random_weights_are_reproducible():
    a, b = load_backbone("clip_tiny_test"), load_backbone("clip_tiny_test")
    c = load_backbone("clip_tiny_test", weights="random:1")
    assert not any(p.requires_grad for p in a.parameters())
    assert a.weights_id == b.weights_id != c.weights_id
    with pytest.raises(AdaptbenchError, match="random weights only"):
        load_backbone("clip_tiny_test", weights="pretrained")


def test_wrong_input_size_is_one_line():
    with pytest.raises(AdaptbenchError, match="takes 32x32 images"):
        load_backbone("clip_tiny_test")(torch.randn(1, 3, 48, 48))


# -- adapters -------------------------------------------------------------------------------
def test_lora_on_q_and_v_changes_the_output_and_merges_exactly():
    backbone, original = canonical(quick_gelu=True)
    x = images(3)
    with torch.no_grad():
        before = backbone(x)
    adapter = build_adapter("lora", backbone, {"targets": ["q", "v"], "r": 2})
    with torch.no_grad():
        for name, tensor in adapter.trainable_parameters().items():
            if "lora_B" in name:
                tensor.normal_(0.0, 0.5)
        unmerged = backbone(x)
        assert (unmerged - before).abs().max() > 1e-3
        adapter.merge()
        merged = backbone(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert backbone.site("qkv", 0).weight is original["blocks"][0].attn.in_proj_weight


def test_ssf_folds_into_the_patch_convolution():
    backbone, _ = canonical()
    adapter = build_adapter("ssf", backbone, {"sites": ["patch_embed", "qkv", "final_norm"]})
    x = images(4)
    with torch.no_grad():
        unmerged = backbone(x)
        adapter.merge()
        torch.testing.assert_close(backbone(x), unmerged, atol=1e-5, rtol=1e-5)
    assert isinstance(backbone.site("patch_embed"), clip_family.CLIPPatchEmbed)


# -- refused variants -----------------------------------------------------------------------
@pytest.mark.parametrize("variant, message", [
    (dict(qk_norm=True), "CustomResidualAttentionBlock"),
    (dict(scale_attn=True, scale_fc=True), "CustomResidualAttentionBlock"),
    (dict(final_ln_after_pool=True), "final_ln_after_pool"),
    (dict(pool_type="avg"), "pool_type 'avg'"),
    (dict(attentional_pool=True, attn_pooler_heads=2), "attention pooling"),
])
def test_variants_not_reproduced_are_refused_in_one_line(variant, message):
    with torch.random.fork_rng(devices=[]):
        visual = VisionTransformer(**TINY_CONFIG, **variant)
    with pytest.raises(AdaptbenchError, match=message) as caught:
        OpenClipViT("tiny-variant", visual, "random:0")
    assert "tiny-variant" in str(caught.value) and "\n" not in str(caught.value)


def test_sequence_first_blocks_are_refused():
    visual = tiny_visual()
    visual.transformer.batch_first = False
    with pytest.raises(AdaptbenchError, match="batch_first=False"):
        OpenClipViT("tiny", visual, "random:0")


# -- the clip: family -----------------------------------------------------------------------
@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached weights anywhere, offline, and any download attempt fails the test."""
    import huggingface_hub.constants

    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's ~/.cache/clip
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("ADAPTBENCH_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_download)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", no_download)
    return tmp_path


def test_missing_pretrained_weights_fail_fast_in_one_line(empty_caches):
    start = time.monotonic()
    with pytest.raises(AdaptbenchError) as caught:
        load_backbone("clip:ViT-B-16/openai")
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert "\n" not in message and "not cached" in message
    assert "open_clip_model.safetensors" in message and "timm/vit_base_patch16_clip_224.openai" in message
    assert "--weights" in message


def test_unreachable_hub_is_said(empty_caches, monkeypatch):
    monkeypatch.delenv("ADAPTBENCH_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(clip_family, "hub_reachable", lambda: False)
    with pytest.raises(AdaptbenchError, match="not cached and the hub is unreachable"):
        load_backbone("clip:ViT-B-16/laion2b_s34b_b88k")


def test_weights_check_never_loads(empty_caches, monkeypatch):
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("the check built a model"))
    with pytest.raises(AdaptbenchError, match="are not cached: download open_clip_model.safetensors"):
        check_backbone_weights("clip:ViT-B-16/openai")
    assert check_backbone_weights("clip:ViT-B-16", "random") == "random:0"
    assert check_backbone_weights("clip:ViT-B-16/openai", "random:3") == "random:3"
    with pytest.raises(AdaptbenchError, match="names no weights"):
        check_backbone_weights("clip:ViT-B-16")
    with pytest.raises(AdaptbenchError, match="did you mean 'openai'"):
        check_backbone_weights("clip:ViT-B-16/opena")
    missing = empty_caches / "nowhere.bin"
    with pytest.raises(AdaptbenchError, match="does not exist"):
        check_backbone_weights(f"clip:ViT-B-16/{missing}")
    missing.write_bytes(b"")
    assert check_backbone_weights(f"clip:ViT-B-16/{missing}") == f"file:{missing}"


def test_weights_in_the_hf_cache_are_found(empty_caches, monkeypatch):
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("the check built a model"))
    snapshot = empty_caches / "hf" / "models--timm--vit_base_patch16_clip_224.openai"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("abc123")
    weights = snapshot / "snapshots" / "abc123" / "open_clip_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert check_backbone_weights("clip:ViT-B-16/openai") == f"cache:{weights}"
    plan = clip_family.resolve_clip_weights("ViT-B-16", "openai", None)
    assert plan.pretrained == str(weights) and plan.quick_gelu  # OpenAI's tower is trained with QuickGELU


def test_bad_model_names_get_a_did_you_mean():
    with pytest.raises(AdaptbenchError, match="did you mean 'ViT-B-16'"):
        load_backbone("clip:ViT-B-61/openai")
    with pytest.raises(AdaptbenchError, match="did you mean 'ViT-B-16'.*case-sensitive"):
        check_clip_member("vit-b-16/openai")
    with pytest.raises(AdaptbenchError, match="timm's 'vit_base_patch16_siglip_224'"):
        check_clip_member("ViT-B-16-SigLIP")


def test_the_listing_offers_plain_vits_and_refuses_the_rest():
    offered, refused = list_clip_family()
    assert "ViT-B-16/<tag or file>" in offered and "openai" in offered["ViT-B-16/<tag or file>"]
    assert "ResNet" in refused["RN50"] and "final_ln_after_pool" in refused["ViT-L-14-CLIPA"]
    assert "coca_ViT-B-32" in refused  # attention pooling


def test_the_anatomy_of_a_large_tower_is_read_without_weights(empty_caches):
    from adaptbench import backbones

    if not hasattr(backbones, "backbone_anatomy"):
        pytest.skip("adaptbench.backbones has no backbone_anatomy")
    anatomy = backbones.backbone_anatomy("clip:ViT-L-14/openai")  # built on the meta device, nothing read
    assert (anatomy.embed_dim, anatomy.num_blocks, anatomy.mlp_dim, anatomy.feature_dim) == (1024, 24, 4096, 768)
    assert anatomy.grid == (16, 16) and anatomy.patch_size == (14, 14) and anatomy.family == "clip"


def test_the_factory_builds_with_open_clip_and_loads_a_local_file(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        source = open_clip.create_model("ViT-B-16", quick_gelu=True, **TINY_CLIP).eval()
    path = tmp_path / "tiny_clip.pt"
    torch.save(source.state_dict(), path)
    backbone = load_backbone(f"clip:ViT-B-16-quickgelu/{path}", **TINY_CLIP).eval()
    assert backbone.weights_source == f"file:{path}" and backbone.name == f"clip:ViT-B-16-quickgelu/{path}"
    x = images(5)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), source.encode_image(x), atol=1e-5, rtol=0)
    random = load_backbone("clip:ViT-B-16-quickgelu", weights="random:5", **TINY_CLIP)
    assert random.weights_source == "random:5" and not hasattr(random, "text")
    with torch.no_grad():
        torch.testing.assert_close(random.eval()(x), source.encode_image(x), atol=1e-5, rtol=0)


def test_require_does_not_import_torch():
    script = (
        "import json, sys\n"
        "from adaptbench.registry import BACKBONES\n"
        "entry = BACKBONES.require('clip:ViT-B-16/openai')\n"
        "heavy = sorted(name for name in ('torch', 'open_clip', 'timm') if name in sys.modules)\n"
        "print(json.dumps({'description': entry.description, 'heavy': heavy}))\n"
    )
    env = {**os.environ, "ADAPTBENCH_NO_PLUGINS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "ViT-B-16" in result["description"] and result["heavy"] == []
