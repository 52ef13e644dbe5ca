"""ST-Adapter and AIM beyond the conformance suite: each equals its formula built by hand from
plain tensor ops on clips, mixes the frames of a clip and nothing else, leaves a video
backbone's own temporal branch alone, shares (never copies or trains) the frozen attention
(AIM), starts as the identity, has the papers' parameter counts on ViT-B/16, and refuses bad
options in one line."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from adaptbench.adapters import SiteWrapper, build_adapter
from adaptbench.adapters.aim import AIMAttention, residual_branch
from adaptbench.adapters.base import NotApplicable
from adaptbench.backbones import load_backbone
from adaptbench.backbones.geometry import TokenGeometry
from adaptbench.errors import AdaptbenchError
from helpers import clips, declared_under, divided_space_time_backbone, randomise, raises_one_line

FRAMES = 4
CLIPS = 2
HAS_CLIP = importlib.util.find_spec("open_clip") is not None
HAS_SAM = importlib.util.find_spec("segment_anything") is not None
BNC_BACKBONES = ["vit_tiny_test", "vit_tiny_test_reg",
                 pytest.param("clip_tiny_test", marks=pytest.mark.skipif(not HAS_CLIP, reason="open_clip"))]
ALL_BACKBONES = BNC_BACKBONES + [
    pytest.param("sam_tiny_test", marks=pytest.mark.skipif(not HAS_SAM, reason="segment_anything"))]


def adapted(adapter_name: str, backbone_name: str, options=None, seed: int = 0):
    """(pristine backbone, adapted backbone with randomised tensors, adapter), both in eval mode."""
    torch.manual_seed(seed)
    pristine = load_backbone(backbone_name).eval()
    backbone = load_backbone(backbone_name).eval()
    adapter = build_adapter(adapter_name, backbone, options or {})
    randomise(adapter, seed)
    return pristine, backbone, adapter


def run_blocks(backbone, images, frames, block_fn):
    """The backbone's forward with each block replaced by ``block_fn(index, block, x)``."""
    x, geometry = backbone.embed(images)
    with backbone.geometry.publish(replace(geometry, frames=frames)):
        for index, block in enumerate(backbone.blocks):
            x = block_fn(index, block, x)
    return x


# -- ST-Adapter by hand ------------------------------------------------------------------------
def temporal_conv_by_hand(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A depthwise convolution along dim 1 (time) of (clips, T, tokens, r), kernel (r, k), zero
    padding k // 2: out[t] = bias + sum_j weight[:, j] * h[t + j - k // 2]."""
    frames, k = h.shape[1], weight.shape[1]
    out = bias.expand_as(h).clone()
    for j in range(k):
        shift = j - k // 2
        for t in range(frames):
            if 0 <= t + shift < frames:
                out[:, t] = out[:, t] + weight[:, j] * h[:, t + shift]
    return out


def st_update_by_hand(x: torch.Tensor, p: dict[str, torch.Tensor], prefix: int, frames: int) -> torch.Tensor:
    """A(x): fc2(conv_t(fc1(patches))), zero on the ``prefix`` leading tokens; x is (BT, N, C)
    or SAM's (BT, H, W, C) (all patches)."""
    shape = x.shape
    x = x.flatten(1, -2)
    hidden = x[:, prefix:] @ p["fc1.weight"].T + p["fc1.bias"]
    hidden = hidden.reshape(x.shape[0] // frames, frames, *hidden.shape[1:])
    hidden = temporal_conv_by_hand(hidden, p["conv.weight"][:, 0, :, 0, 0], p["conv.bias"])
    out = hidden.flatten(0, 1) @ p["fc2.weight"].T + p["fc2.bias"]
    return torch.cat([torch.zeros_like(x[:, :prefix]), out], dim=1).reshape(shape)


@pytest.mark.parametrize("placement", [("attn", "mlp"), ("mlp",), ("attn",)])
@pytest.mark.parametrize("backbone_name", ALL_BACKBONES)
def test_st_adapter_equals_its_formula_by_hand(backbone_name, placement):
    options = {"placement": list(placement), "kernel_size": 3, "keep_unreachable": True}
    pristine, backbone, adapter = adapted("st_adapter", backbone_name, options)
    prefix = pristine.anatomy.num_prefix_tokens
    images = clips(1, CLIPS, FRAMES)

    def block_fn(index, block, x):
        for site in ("attn", "mlp"):
            if site in placement:
                x = x + st_update_by_hand(x, declared_under(adapter, f"blocks.{index}.{site}."), prefix, FRAMES)
            x = x + block.branches[site](x)
        return x

    with torch.no_grad():
        expected = pristine.finish(run_blocks(pristine, images, FRAMES, block_fn))
        got = backbone.forward_features(images, frames=FRAMES)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # and the class / register tokens did get no update of their own: the first block's input
    # prefix tokens pass the pre-attention adapter unchanged
    if prefix and "attn" in placement:
        wrapper = backbone.blocks[0].branches["attn"]
        x = torch.randn(CLIPS * FRAMES, prefix + 16, pristine.anatomy.embed_dim)
        with backbone.geometry.publish(TokenGeometry(batch=CLIPS * FRAMES, grid=(4, 4), prefix=prefix,
                                                     frames=FRAMES)):
            update = wrapper.adapter(x)
        assert torch.equal(update[:, :prefix], torch.zeros_like(update[:, :prefix]))
        assert update[:, prefix:].abs().amax() > 0


def test_st_adapter_last_pre_mlp_adapter_cannot_reach_the_class_token():
    """Why it is left out on class-token backbones by default: its update (patch tokens only,
    then the per-token MLP alone) never reaches the pooled class token; kept on request."""
    torch.manual_seed(0)
    default = build_adapter("st_adapter", load_backbone("vit_tiny_test"))
    assert not declared_under(default, "blocks.1.mlp.") and declared_under(default, "blocks.1.attn.")
    backbone = load_backbone("vit_tiny_test").eval()
    kept = build_adapter("st_adapter", backbone, {"keep_unreachable": True})
    randomise(kept)
    backbone(clips(), frames=FRAMES).square().sum().backward()
    params = kept.trainable_parameters()
    for name, param in params.items():
        reaches = param.grad is not None and bool(param.grad.any())
        assert reaches == (not name.startswith("blocks.1.mlp.")), name
    # a mean-pooling backbone (no class token) keeps it: it reaches the pooled patch tokens
    assert declared_under(build_adapter("st_adapter", load_backbone("vit_tiny_test_reg")), "blocks.1.mlp.")


# -- AIM by hand -------------------------------------------------------------------------------
def adapter_mlp(z: torch.Tensor, p: dict[str, torch.Tensor], skip: bool) -> torch.Tensor:
    out = F.gelu(z @ p["down.weight"].T + p["down.bias"]) @ p["up.weight"].T + p["up.bias"]
    return z + out if skip else out


def attention_by_hand(z: torch.Tensor, core) -> torch.Tensor:
    """Multi-head softmax attention over dim 1 of (batch, length, d), with ``core``'s frozen
    fused qkv and output projection weights."""
    batch, length, width = z.shape
    heads = core.num_heads
    qkv = z @ core.qkv.weight.T
    if core.qkv.bias is not None:
        qkv = qkv + core.qkv.bias
    q, k, v = qkv.reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) * (width // heads) ** -0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, length, width)
    return out @ core.proj.weight.T + core.proj.bias


def aim_by_hand(pristine, adapter, images, frames, scale, t_adapter_in):
    params = adapter.trainable_parameters()
    embedding = params["temporal_embedding"].detach()

    def block_fn(index, block, x):
        images_, tokens, width = x.shape
        if index == 0:  # E[t] on every token of frame t
            x = (x.reshape(-1, frames, tokens, width) + embedding[0, :frames, None]).reshape(x.shape)
        attn, mlp = block.branches["attn"], block.branches["mlp"]
        # temporal: attention over the frames of each token position, the frozen weights
        xt = x.reshape(-1, frames, tokens, width).transpose(1, 2).reshape(-1, frames, width)
        z = attn.norm(xt)
        if t_adapter_in:
            z = adapter_mlp(z, declared_under(adapter, f"blocks.{index}.attn.t_adapter_in."), skip=True)
        z = attention_by_hand(z, attn.core)
        z = z.reshape(-1, tokens, frames, width).transpose(1, 2).reshape(images_, tokens, width)
        x = x + adapter_mlp(attn.post(z), declared_under(adapter, f"blocks.{index}.attn.t_adapter."), skip=False)
        # spatial
        x = x + adapter_mlp(attn(x), declared_under(adapter, f"blocks.{index}.attn.s_adapter."), skip=True)
        # joint
        normed = mlp.norm(x)
        return x + mlp(x) + scale * adapter_mlp(normed, declared_under(adapter, f"blocks.{index}.mlp.mlp_adapter."),
                                                skip=False)

    return run_blocks(pristine, images, frames, block_fn)


@pytest.mark.parametrize("t_adapter_in", [False, True])
@pytest.mark.parametrize("backbone_name", BNC_BACKBONES)
def test_aim_equals_its_formula_by_hand(backbone_name, t_adapter_in):
    options = {"scale": 0.7, "t_adapter_in": t_adapter_in}
    pristine, backbone, adapter = adapted("aim", backbone_name, options)
    images = clips(2, CLIPS, FRAMES)
    with torch.no_grad():
        # the trained final norm is the backbone's own: give the reference its trained values
        for name, param in declared_under(adapter, "final_norm.").items():
            dict(pristine.site("final_norm").named_parameters())[name].copy_(param)
        expected = pristine.finish(aim_by_hand(pristine, adapter, images, FRAMES, 0.7, t_adapter_in))
        got = backbone.forward_features(images, frames=FRAMES)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert declared_under(adapter, "final_norm.")  # trained, as the official code does


# -- temporal mixing: within a clip, never across clips or images ------------------------------
def changed_images(backbone, images, frames, poke: int) -> list[bool]:
    with torch.no_grad():
        before = backbone.forward_features(images, frames=frames)
        poked = images.clone()
        poked[poke] += torch.randn(poked[poke].shape, generator=torch.Generator().manual_seed(9))
        after = backbone.forward_features(poked, frames=frames)
    return [not torch.equal(a, b) for a, b in zip(after, before)]


@pytest.mark.parametrize("adapter_name", ["st_adapter", "aim"])
def test_frames_of_a_clip_mix_and_clips_never_do(adapter_name):
    _, backbone, _ = adapted(adapter_name, "vit_tiny_test")
    images = clips(3, CLIPS, FRAMES)
    # frame 1 of clip 0 changes every frame of clip 0 and nothing of clip 1
    assert changed_images(backbone, images, FRAMES, poke=1) == [True] * FRAMES + [False] * FRAMES
    # the same images as single frames: only the poked image changes
    assert changed_images(backbone, images, 1, poke=1) == [i == 1 for i in range(CLIPS * FRAMES)]
    # without the adapter (same backbone weights) frames never mix: the mixing is the adapter's
    pristine = load_backbone("vit_tiny_test").eval()
    assert changed_images(pristine, images, FRAMES, poke=1) == [i == 1 for i in range(CLIPS * FRAMES)]


# -- a video backbone's own temporal branch is left alone --------------------------------------
def train(backbone, adapter, frames=FRAMES, steps=3):
    head = torch.nn.Linear(backbone.anatomy.feature_dim, 3)
    optimizer = torch.optim.Adam([*adapter.trainable_parameters().values(), *head.parameters()], lr=1e-2)
    labels = torch.tensor([0, 2])
    backbone.train()
    for step in range(steps):
        optimizer.zero_grad()
        features = backbone(clips(step, CLIPS, frames), frames=frames)
        F.cross_entropy(head(features.reshape(CLIPS, frames, -1).mean(1)), labels).backward()
        optimizer.step()
    backbone.eval()


@pytest.mark.parametrize("adapter_name", ["st_adapter", "aim"])
def test_the_backbones_own_temporal_branch_is_untouched(adapter_name):
    backbone = divided_space_time_backbone()
    temporal = {f"{i}.{n}": p for i, block in enumerate(backbone.blocks)
                for n, p in block.branches["temporal"].named_parameters()}
    before = {name: p.detach().clone() for name, p in temporal.items()}
    adapter = build_adapter(adapter_name, backbone)
    assert {site for site, _, _ in adapter._wrapped} <= {"attn", "mlp", "block"}
    declared = {id(p) for p in adapter.trainable_parameters().values()}
    assert not declared & {id(p) for p in temporal.values()}
    train(backbone, adapter)
    for block in backbone.blocks:
        while not hasattr(block, "branches"):  # AIM's temporal embedding wraps block 0
            block = block.base_layer
        assert not [m for m in block.branches["temporal"].modules() if isinstance(m, SiteWrapper)]
    for name, param in temporal.items():
        assert torch.equal(param.detach(), before[name]), name
        assert param.grad is None, name


def test_aim_shares_the_frozen_attention_and_never_trains_it():
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("aim", backbone)
    wrappers = [backbone.site("attn", index) for index in range(backbone.anatomy.num_blocks)]
    assert all(isinstance(w, AIMAttention) for w in wrappers)
    frozen = {f"{i}.{n}": p for i, w in enumerate(wrappers) for n, p in w.base_layer.named_parameters()}
    before = {name: p.detach().clone() for name, p in frozen.items()}
    # the wrapper holds the branch's very Parameters and its own adapters, no copy of anything
    declared = {id(p) for p in adapter.trainable_parameters().values()}
    for wrapper in wrappers:
        own = {id(p) for p in wrapper.parameters()}
        assert own == {id(p) for p in wrapper.base_layer.parameters()} | (own & declared)
        assert residual_branch(wrapper) is wrapper.base_layer
    # the temporal pass runs the branch's own attention module: over the frames, then the images
    calls = []
    hook = wrappers[0].base_layer.core.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    with torch.no_grad():
        backbone(clips(), frames=FRAMES)
    hook.remove()
    tokens, width = backbone.anatomy.num_prefix_tokens + 16, backbone.anatomy.embed_dim
    assert calls == [(CLIPS * tokens, FRAMES, width), (CLIPS * FRAMES, tokens, width)]
    train(backbone, adapter)
    for name, param in frozen.items():
        assert torch.equal(param.detach(), before[name]), name
        assert param.grad is None and not param.requires_grad, name
    # after training, the temporal pass still uses exactly those frozen weights
    pristine = load_backbone("vit_tiny_test").eval()
    with torch.no_grad():
        for name, param in declared_under(adapter, "final_norm.").items():
            dict(pristine.site("final_norm").named_parameters())[name].copy_(param)
        expected = pristine.finish(aim_by_hand(pristine, adapter, clips(4), FRAMES, 0.5, False))
        torch.testing.assert_close(backbone.forward_features(clips(4), frames=FRAMES), expected,
                                   atol=1e-5, rtol=1e-5)


# -- identity at initialisation, on clips --------------------------------------------------------
@pytest.mark.parametrize("adapter_name,options", [
    ("st_adapter", {}), ("st_adapter", {"placement": ["mlp"], "kernel_size": 5, "keep_unreachable": True}),
    ("aim", {}), ("aim", {"t_adapter_in": True, "scale": 1.0})])
@pytest.mark.parametrize("backbone_name", BNC_BACKBONES)
def test_identity_at_init_on_clips(adapter_name, options, backbone_name):
    torch.manual_seed(0)
    reference = load_backbone(backbone_name).eval()(clips(), frames=FRAMES)
    backbone = load_backbone(backbone_name).eval()
    build_adapter(adapter_name, backbone, options)
    assert torch.equal(backbone(clips(), frames=FRAMES), reference)


# -- parameter counts on ViT-B/16 (d = 768, 12 blocks), built on the meta device ----------------
def vit_b(adapter_name: str, options: dict):
    with torch.device("meta"):
        backbone = load_backbone("timm:vit_base_patch16_224", weights="random")
        return build_adapter(adapter_name, backbone, options)


PER_ST_ADAPTER = 2 * 768 * 384 + 5 * 384 + 768  # 592,512
PER_AIM_ADAPTER = 2 * 768 * 192 + 192 + 768  # 295,872


@pytest.mark.parametrize("options,count", [
    ({"placement": ["mlp"], "keep_unreachable": True}, 7_110_144),  # the paper's 12x384 (K400)
    ({"keep_unreachable": True}, 14_220_288),  # the paper's 24x384 (SSv2)
    ({}, 14_220_288 - PER_ST_ADAPTER),  # default on a class-token backbone: 23 adapters
    ({"placement": ["mlp"]}, 7_110_144 - PER_ST_ADAPTER),
])
def test_st_adapter_parameter_counts_on_vit_b(options, count):
    adapter = vit_b("st_adapter", options)
    assert PER_ST_ADAPTER == 592_512
    assert adapter.trainable_count() == count == adapter.inference_params()


def test_aim_parameter_counts_on_vit_b():
    adapter = vit_b("aim", {})
    params = adapter.trainable_parameters()
    adapters = sum(p.numel() for n, p in params.items() if n.startswith("blocks."))
    assert adapters == 3 * 12 * PER_AIM_ADAPTER == 10_651_392
    assert params["temporal_embedding"].numel() == 8 * 768
    assert sum(p.numel() for n, p in params.items() if n.startswith("final_norm.")) == 2 * 768
    assert adapter.trainable_count() == 10_659_072  # + the K400 head (768 * 400 + 400): 10,966,672, "11M"
    assert adapter.inference_params() == 10_657_536  # the final norm is the backbone's own
    assert vit_b("aim", {"t_adapter_in": True}).trainable_count() == 10_659_072 + 12 * PER_AIM_ADAPTER
    assert vit_b("aim", {"num_frames": 32, "final_norm": False}).trainable_count() == 10_651_392 + 32 * 768


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("adapter_name,options,named", [
    ("st_adapter", {"kernel_size": "2"}, "kernel_size=2"),
    ("st_adapter", {"bottleneck": "0"}, "bottleneck=0"),
    ("st_adapter", {"placement": "attn,ffn"}, "placement=('attn', 'ffn')"),
    ("st_adapter", {"placement": "mlp,mlp"}, "placement=('mlp', 'mlp')"),
    ("aim", {"num_frames": "0"}, "num_frames=0"),
    ("aim", {"drop_path": "1"}, "drop_path=1.0"),
    ("aim", {"mlp_ratio": "0"}, "mlp_ratio=0.0"),
    ("aim", {"scale": "nan"}, "scale=nan"),
])
def test_bad_options_are_refused_in_one_line(adapter_name, options, named):
    with raises_one_line("expected", named):
        build_adapter(adapter_name, load_backbone("vit_tiny_test"), options)


def test_aim_refuses_more_frames_than_its_temporal_embedding():
    backbone = load_backbone("vit_tiny_test").eval()
    build_adapter("aim", backbone, {"num_frames": 2})
    backbone(clips(frames=2), frames=2)
    with raises_one_line("expected num_frames >= 4", "num_frames=2"):
        backbone(clips(), frames=FRAMES)


def test_aim_refuses_a_width_that_leaves_no_hidden_unit():
    with raises_one_line("expected mlp_ratio", "mlp_ratio=0.01"):
        build_adapter("aim", load_backbone("vit_tiny_test"), {"mlp_ratio": 0.01})


def test_st_adapter_refuses_options_that_leave_no_adapter():
    with raises_one_line("no adapter left", "placement=('mlp',)"):
        build_adapter("st_adapter", load_backbone("vit_tiny_test"), {"placement": ["mlp"], "blocks": [1]})


@pytest.mark.skipif(not HAS_SAM, reason="segment_anything")
def test_aim_is_na_on_sams_grid_layout_and_st_adapter_runs_there():
    with pytest.raises(NotApplicable, match="BNC"):
        build_adapter("aim", load_backbone("sam_tiny_test"))
    backbone = load_backbone("sam_tiny_test").eval()
    adapter = build_adapter("st_adapter", backbone)
    randomise(adapter)
    assert torch.isfinite(backbone(clips(), frames=FRAMES)).all()


def test_both_are_registered_and_not_mergeable():
    from adaptbench.registry import ADAPTERS

    assert {"st_adapter", "aim"} <= set(ADAPTERS.names())
    with pytest.raises(AdaptbenchError):
        build_adapter("aim", load_backbone("vit_tiny_test")).merge()
